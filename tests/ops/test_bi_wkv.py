"""The reference Bi-WKV against an independent brute-force double loop (docs §2)."""

import math

import pytest
import torch

from rwkvlab.ops import bi_wkv


def brute_force(k, v, w, u):
    """The docs §2 formula term by term in float64, with the maximum subtracted per output."""
    n, t, c = k.shape
    y = torch.zeros(n, t, c, dtype=torch.float64)
    for b in range(n):
        for ch in range(c):
            for q in range(t):
                logits = []
                for i in range(t):
                    if i == q:
                        logits.append(float(u[ch]) + float(k[b, i, ch]))
                    else:
                        logits.append(-(abs(q - i) - 1) * float(w[ch]) + float(k[b, i, ch]))
                m = max(logits)
                num = sum(math.exp(l - m) * float(v[b, i, ch]) for i, l in enumerate(logits))
                den = sum(math.exp(l - m) for l in logits)
                y[b, q, ch] = num / den
    return y


def inputs(n, t, c, wt=5.0, kmax=1.0, dtype=torch.float64):
    k = (torch.rand(n, t, c, dtype=torch.float64) * 2 - 1) * kmax
    v = torch.randn(n, t, c, dtype=torch.float64)
    w = torch.linspace(-wt, wt, c, dtype=torch.float64) / t  # negative decays included
    u = torch.randn(c, dtype=torch.float64) / t
    return [x.to(dtype) for x in (k, v, w, u)]


@pytest.mark.parametrize("n,t,c", [(1, 1, 3), (2, 2, 4), (2, 7, 5), (1, 19, 3)])
def test_reference_matches_brute_force(n, t, c):
    k, v, w, u = inputs(n, t, c)
    torch.testing.assert_close(bi_wkv(k, v, w, u, backend="reference"), brute_force(k, v, w, u),
                               rtol=1e-12, atol=1e-12)


def test_reference_float32_matches_float64_brute_force():
    k, v, w, u = inputs(2, 16, 6)
    y = bi_wkv(*(x.float() for x in (k, v, w, u)), backend="reference")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), brute_force(k, v, w, u), rtol=1e-5, atol=1e-5)


def test_reference_gradcheck():
    k, v, w, u = (x.requires_grad_() for x in inputs(2, 9, 4))
    assert torch.autograd.gradcheck(lambda *a: bi_wkv(*a, backend="reference"), (k, v, w, u))


@pytest.mark.parametrize("wt,kmax", [(50.0, 30.0), (-50.0, 30.0), (50.0, 60.0), (-50.0, 60.0)])
def test_reference_is_safe_at_extremes(wt, kmax):
    t, c = 64, 4
    w = torch.full((c,), wt / t)
    u = torch.zeros(c)
    k = torch.where(torch.arange(t)[:, None] % 3 == 0, kmax, -kmax).expand(1, t, c).clone()
    v = torch.randn(1, t, c)
    if kmax == 60.0:  # exp(|k| + |w| T) is beyond float32: any formula without a running maximum overflows
        assert torch.isinf(torch.exp(torch.tensor(kmax + abs(wt))))
    k, v, w, u = (x.requires_grad_() for x in (k, v, w, u))
    y = bi_wkv(k, v, w, u, backend="reference")
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(x.grad).all() for x in (k, v, w, u))
    ref = brute_force(k.detach().double(), v.detach().double(), w.detach().double(), u.detach().double())
    torch.testing.assert_close(y.detach().double(), ref, rtol=1e-4, atol=1e-4)


def test_bad_shapes_raise():
    k, v, w, u = inputs(1, 4, 3)
    with pytest.raises(ValueError, match="w and u must be"):
        bi_wkv(k, v, w[:2], u)
    with pytest.raises(ValueError, match="k and v must both be"):
        bi_wkv(k, v[:, :2], w, u)
    with pytest.raises(ValueError, match="unknown backend"):
        bi_wkv(k, v, w, u, backend="nope")
