"""The Table 2 token mixers (docs §10) against float64 re-derivations, on non-square token grids."""

import math

import pytest
import torch
from torch.nn import functional as F

from rwkvlab.models import mixers
from rwkvlab.models.mixers import (
    MIXERS,
    BiMamba,
    FocusedLinearAttention,
    MHSA,
    create_mixer,
    selective_scan,
    selective_scan_reference,
)

GRIDS = [(3, 5), (4, 6)]


def grads(fn, inputs, gy):
    leaves = [x.detach().requires_grad_() for x in inputs]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, gy))


def assert_same_forward_backward(module, naive, hw, n=2):
    """Module output and gradients (input and every parameter) against ``naive(x, hw)`` in float64."""
    module = module.double()
    x = torch.randn(n, hw[0] * hw[1], module_dim(module), dtype=torch.float64, requires_grad=True)
    params = list(module.parameters())
    y = module(x, hw)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, *params], gy)
    y_ref = naive(x, hw)
    expected = torch.autograd.grad(y_ref, [x, *params], gy)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def module_dim(module):
    return next(m for m in module.modules() if isinstance(m, torch.nn.Linear)).in_features


# ----------------------------------------------------------------------------------------------------
# MHSA


@pytest.mark.parametrize("hw", GRIDS)
def test_mhsa_matches_dense_attention(hw):
    heads, c = 4, 16
    m = MHSA(c, num_heads=heads)

    def naive(x, hw):
        n, t, _ = x.shape
        d = c // heads
        q, k, v = (x @ m.qkv.weight.T).reshape(n, t, 3, heads, d).unbind(2)
        out = torch.zeros(n, t, heads, d, dtype=x.dtype)
        for h in range(heads):
            attn = torch.softmax(q[:, :, h] @ k[:, :, h].transpose(1, 2) / math.sqrt(d), dim=-1)
            out[:, :, h] = attn @ v[:, :, h]
        return out.reshape(n, t, c) @ m.proj.weight.T + m.proj.bias

    assert m.qkv.bias is None  # timm's default qkv_bias=False
    assert_same_forward_backward(m, naive, hw)


def test_mhsa_heads_must_divide_dim():
    with pytest.raises(ValueError, match="num_heads"):
        MHSA(20, num_heads=8)
    for width in (288, 560, 384, 768, 576, 960):  # every RWKV-UNet mixing width takes the default
        assert MHSA(width).num_heads == 8


# ----------------------------------------------------------------------------------------------------
# Focused linear attention


@pytest.mark.parametrize("hw", GRIDS)
def test_focused_linear_attention_matches_description(hw):
    heads, c, ksz = 2, 8, 5
    m = FocusedLinearAttention(c, num_heads=heads, kernel_size=ksz)
    with torch.no_grad():  # non-trivial scale and conv bias, so both are exercised
        m.scale.uniform_(-1, 1)
        m.dwc.bias.uniform_(-1, 1)

    def naive(x, hw):
        n, t, _ = x.shape
        hh, ww = hw
        d = c // heads
        scale = torch.log1p(torch.exp(m.scale))
        q = x @ m.q.weight.T
        k, v = (x @ m.kv.weight.T).split(c, dim=-1)

        def focus(a):
            a = (torch.clamp(a, min=0) + 1e-6) / scale
            a3 = a**3
            return a3 / a3.pow(2).sum(-1, keepdim=True).sqrt() * a.pow(2).sum(-1, keepdim=True).sqrt()

        q, k = focus(q), focus(k)
        out = torch.zeros(n, t, c, dtype=x.dtype)
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            qh, kh, vh = q[..., sl], k[..., sl], v[..., sl]
            num = torch.einsum("nic,njc,njd->nid", qh, kh, vh) / t
            den = torch.einsum("nic,nc->ni", qh, kh.mean(1)) + 1e-6
            # Depthwise kxk "same" conv of this head's v map, weights shared by the heads.
            vmap = F.pad(vh.transpose(1, 2).reshape(n, d, hh, ww), (ksz // 2,) * 4)
            conv = m.dwc.bias[None, :, None, None].expand(n, d, hh, ww)
            for i in range(ksz):
                for j in range(ksz):
                    conv = conv + m.dwc.weight[None, :, 0, i, j, None, None] * vmap[:, :, i:i + hh, j:j + ww]
            out[..., sl] = num / den[..., None] + conv.reshape(n, d, t).transpose(1, 2)
        return out @ m.proj.weight.T + m.proj.bias

    assert_same_forward_backward(m, naive, hw)


def test_focused_linear_attention_takes_any_grid():
    m = FocusedLinearAttention(16, num_heads=4)
    for hw in [(2, 7), (5, 3), (6, 6)]:
        assert m(torch.randn(1, hw[0] * hw[1], 16), hw).shape == (1, hw[0] * hw[1], 16)
    with pytest.raises(ValueError, match="T = H\\*W"):
        m(torch.randn(1, 10, 16), (3, 4))


# ----------------------------------------------------------------------------------------------------
# Selective scan


def scan_inputs(n, length, e, s, delta_scale=1.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, length, e, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(n, length, e, generator=g, dtype=dtype)) * delta_scale
    A = -torch.exp(torch.log(torch.arange(1, s + 1, dtype=dtype)).repeat(e, 1) + 0.1 * torch.randn(e, s, generator=g,
                                                                                                     dtype=dtype))
    B = torch.randn(n, length, s, generator=g, dtype=dtype)
    C = torch.randn(n, length, s, generator=g, dtype=dtype)
    D = torch.randn(e, generator=g, dtype=dtype)
    return [u, delta, A, B, C, D]


SCAN_CASES = [
    # (N, L, E, S, delta_scale, chunk_size): L = 13 is not a multiple of 4 or of the default chunk (4);
    # delta_scale 60 drives |delta A| to ~1000, where exp underflows to 0 and any exp(-cumsum) would overflow.
    (2, 13, 3, 4, 1.0, 4),
    (2, 13, 3, 4, 1.0, None),
    (1, 1, 2, 3, 1.0, None),
    (2, 37, 5, 4, 60.0, 8),
    (2, 37, 5, 4, 60.0, None),
]


@pytest.mark.parametrize("method", ["sequential", "chunked"])
@pytest.mark.parametrize("n,length,e,s,delta_scale,chunk", SCAN_CASES)
def test_selective_scan_matches_sequential_loop(method, n, length, e, s, delta_scale, chunk):
    inputs = scan_inputs(n, length, e, s, delta_scale)
    gy = torch.randn(n, length, e, dtype=torch.float64)
    got = grads(lambda *a: selective_scan(*a, method=method, chunk_size=chunk), inputs, gy)
    expected = grads(selective_scan_reference, inputs, gy)
    for name, g, ref in zip(["y", "u", "delta", "A", "B", "C", "D"], got, expected):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("method", ["sequential", "chunked"])
def test_selective_scan_gradcheck(method):
    inputs = [x.requires_grad_() for x in scan_inputs(1, 6, 2, 3)]
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, method=method, chunk_size=4), inputs)


@pytest.mark.parametrize("method", ["sequential", "chunked"])
def test_selective_scan_float32_is_stable_for_large_steps(method):
    inputs = scan_inputs(2, 40, 6, 16, delta_scale=60.0)
    y = selective_scan(*(x.float() for x in inputs), method=method)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), selective_scan_reference(*inputs), rtol=1e-4, atol=1e-4)


def test_selective_scan_bad_shape_names_argument():
    u, delta, A, B, C, D = scan_inputs(2, 5, 3, 4)
    with pytest.raises(ValueError, match="B must have shape \\(2, 5, 4\\)"):
        selective_scan(u, delta, A, B[:, :4], C, D)
    with pytest.raises(ValueError, match="method"):
        selective_scan(u, delta, A, B, C, D, method="parallel")


# ----------------------------------------------------------------------------------------------------
# Bi-Mamba


@pytest.mark.parametrize("hw", GRIDS)
def test_bi_mamba_matches_reference_scan(hw, monkeypatch):
    m = BiMamba(8, d_state=4).double()
    x = torch.randn(2, hw[0] * hw[1], 8, dtype=torch.float64)
    params = list(m.parameters())
    gy = torch.randn_like(x)

    def run():
        leaf = x.clone().requires_grad_()
        y = m(leaf, hw)
        return (y, *torch.autograd.grad(y, [leaf, *params], gy))

    fast = run()
    monkeypatch.setattr(mixers, "selective_scan", selective_scan_reference)
    slow = run()
    for g, ref in zip(fast, slow):
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)


def test_bi_mamba_is_bidirectional():
    torch.manual_seed(1)
    m = BiMamba(8, d_state=4).double()
    hw = (3, 5)
    x = torch.randn(1, 15, 8, dtype=torch.float64)
    early, late = 2, 11  # 9 tokens apart: beyond the conv window (4), so only the scans connect them
    x2 = x.clone()
    x2[:, late] += 1.0
    x3 = x.clone()
    x3[:, early] += 1.0
    xs, xs2, xs3 = (m.in_proj(a).chunk(2, dim=-1)[0] for a in (x, x2, x3))

    def changed(a, b, t):
        return (a[:, t] - b[:, t]).abs().max().item() > 1e-8

    with torch.no_grad():
        # Each direction alone is causal along its own order ...
        assert not changed(m.fwd(xs), m.fwd(xs2), early)
        assert changed(m.fwd(xs), m.fwd(xs3), late)
        bwd = lambda a: m.bwd(a.flip(1)).flip(1)  # noqa: E731
        assert not changed(bwd(xs), bwd(xs3), late)
        assert changed(bwd(xs), bwd(xs2), early)
        # ... and the block sees both ways.
        assert changed(m(x, hw), m(x2, hw), early)
        assert changed(m(x, hw), m(x3, hw), late)


def test_bi_mamba_init_follows_mamba():
    m = BiMamba(64)
    assert m.fwd.dt_proj.in_features == 4  # ceil(64 / 16)
    assert m.in_proj.out_features == 2 * 128 and m.out_proj.in_features == 128
    for branch in (m.fwd, m.bwd):
        dt = F.softplus(branch.dt_proj.bias)
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
        torch.testing.assert_close(torch.exp(branch.A_log), torch.arange(1.0, 17.0).repeat(128, 1))
        assert torch.equal(branch.D, torch.ones(128))
    assert m.fwd.dt_proj.bias.data_ptr() != m.bwd.dt_proj.bias.data_ptr()


# ----------------------------------------------------------------------------------------------------
# All mixers


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_every_parameter_gets_a_gradient(name):
    m = create_mixer(name, 16)
    hw = (4, 6)
    m(torch.randn(2, 24, 16), hw).square().mean().backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_extra_macs_by_hand():
    n, hw = 2, (3, 5)
    # MHSA, C = 16: q k^T and attn v, 2 * (2 * 15 * 15 * 16).
    assert create_mixer("mhsa", 16, num_heads=4).extra_macs(n, hw) == {"attention": 14400}
    # FLA, C = 16, 4 heads of d = 4: k^T v and q (k^T v) 2 * 15 * 16 * 4 each; mean(k) and q . mean(k)
    # 2 * 15 * 16 each.
    assert create_mixer("focused_linear", 16, num_heads=4).extra_macs(n, hw) == {"linear_attention": 1920 + 1920 + 480 + 480}
    # Bi-Mamba, C = 16, E C = 32, S = 4: per direction 2 * 15 * 32 * (4 recurrence + 4 output + 1 skip);
    # elementwise per direction 2 * 15 * 32 * (4 delta A + 1 delta u + 4 (delta u) B), plus the gate 2 * 15 * 32.
    assert create_mixer("bi_mamba", 16, d_state=4).extra_macs(n, hw) == {"scan": 17280, "elementwise": 17280 + 960}


def test_create_mixer_unknown_name():
    with pytest.raises(ValueError, match="mixer must be one of mhsa, focused_linear, bi_mamba, spatial_mix; got 'swin'"):
        create_mixer("swin", 16)
