"""The alternative token mixers of the paper's Table 2 ablation (docs §10), and the selective scan of Mamba.

Every mixer maps tokens ``(N, T, C)``, ``T = H*W`` (or ``D*H*W`` for volumes, docs §18) in row-major order, to
``(N, T, C)`` and takes the grid ``hw`` ((H, W) or (D, H, W)) in ``forward``, so any input size works.
``extra_macs`` returns the multiply-accumulates a mixer does outside its ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` submodules (those are counted by module hooks), which the complexity counter reports apart
(docs §11).

* :class:`MHSA`: softmax multi-head self-attention (timm's ``Attention``).
* :class:`FocusedLinearAttention`: FLatten Transformer (Han et al., ICCV 2023).
* :class:`BiMamba`: Vision Mamba's bidirectional "v2" block (Zhu et al., 2024) over :func:`selective_scan`.

Build them by name with :func:`create_mixer`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from timm.layers import Attention
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.nn import functional as F

from rwkvlab.models.layers import check_tokens, conv_nd

logger = logging.getLogger(__name__)

__all__ = [
    "MIXERS",
    "register_mixer",
    "BiMamba",
    "FocusedLinearAttention",
    "MHSA",
    "SelectiveSSM",
    "create_mixer",
    "selective_scan",
    "selective_scan_reference",
]


class MHSA(Attention):
    """Multi-head softmax self-attention over all tokens (docs §10, Table 2 "MHSA").

    timm's ``Attention``: ``qkv`` Linear C -> 3C without bias (timm's default ``qkv_bias=False``), softmax(q k^T /
    sqrt(d)) v per head through ``F.scaled_dot_product_attention`` (timm's ``use_fused_attn``), output Linear
    with bias. Parameters: 4 C^2 + C, the same linears as the Spatial Mix.

    Args:
        dim: channels C.
        num_heads: heads; must divide ``dim``. The default 8 divides every RWKV-UNet mixing width
            (288, 560, 384, 768, 576, 960).
        qkv_bias: bias of the qkv projection.

    Shape:
        x: (N, T, C), T = H*W -> (N, T, C).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False) -> None:
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads must be a positive divisor of dim={dim}; got {num_heads}")
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias)

    def forward(self, x: Tensor, hw: tuple[int, ...]) -> Tensor:  # type: ignore[override]
        """x: (N, T, C), T = H*W -> (N, T, C)."""
        check_tokens(x, hw, type(self).__name__)
        return super().forward(x)

    def extra_macs(self, n: int, hw: tuple[int, ...]) -> dict[str, int]:
        """The two attention products, q k^T and attn v: ``2 n T^2 C`` MACs (softmax not counted).

        The paper's Table 2 row (+7.44G over the Spatial Mix) counts these as 2 FLOPs per MAC (docs §10).
        """
        t = math.prod(hw)
        return {"attention": 2 * n * t * t * self.num_heads * self.head_dim}  # the attention width (timm >= 1.0.23: attn_dim)


class FocusedLinearAttention(nn.Module):
    """Focused linear attention of the FLatten Transformer (Han et al., ICCV 2023; docs §10).

    ``q = Linear(x)``, ``k, v = Linear(x)`` (no bias); ``q, k <- (ReLU(.) + 1e-6) / softplus(scale)`` with a learned
    ``scale`` of shape (1, 1, C) (init 0); focusing: ``q <- q^f * |q| / |q^f|`` (norms over all C channels, f = 3),
    the same for k; per head ``out = q (k^T v / T) / (q . mean_t(k) + 1e-6)`` (the reference's Swin form; the 1/T
    and the mean cancel up to the 1e-6), always in this linear order; plus a depthwise kxk conv (with bias) of v on
    the H x W map (D x H x W: a Conv3d) whose weights are shared by the heads (a Conv2d over head_dim channels, as the
    reference); then an
    output Linear with bias. The reference's positional encoding has a fixed number of tokens and is left out, so
    any grid works.

    Args:
        dim: channels C.
        num_heads: heads; must divide ``dim``.
        focusing_factor: the focusing power f (> 0).
        kernel_size: odd kernel of the depthwise conv on v.
        qkv_bias: bias of the q and kv projections.
        spatial_dims: 2 for token grids (H, W), 3 for (D, H, W) (the conv on v is then a Conv3d).

    Shape:
        x: (N, T, C), T = H*W (or D*H*W) row-major -> (N, T, C).
    """

    def __init__(self, dim: int, num_heads: int = 8, focusing_factor: float = 3, kernel_size: int = 5,
                 qkv_bias: bool = False, spatial_dims: int = 2) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads must be a positive divisor of dim={dim}; got {num_heads}")
        if not focusing_factor > 0:
            raise ValueError(f"focusing_factor must be > 0; got {focusing_factor}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive integer (same padding); got {kernel_size}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.focusing_factor = focusing_factor
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.dwc = conv_nd(spatial_dims)(self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2,
                                              groups=self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def _focus(self, x: Tensor, scale: Tensor) -> Tensor:
        x = (F.relu(x) + 1e-6) / scale
        norm = x.norm(dim=-1, keepdim=True)
        x = x**self.focusing_factor
        return x / x.norm(dim=-1, keepdim=True) * norm

    def forward(self, x: Tensor, hw: tuple[int, ...]) -> Tensor:
        """x: (N, T, C), T = H*W -> (N, T, C)."""
        check_tokens(x, hw, type(self).__name__)
        n, t, c = x.shape
        heads, d = self.num_heads, self.head_dim
        scale = F.softplus(self.scale)
        k, v = self.kv(x).chunk(2, dim=-1)
        q, k = self._focus(self.q(x), scale), self._focus(k, scale)
        q, k, v = (a.reshape(n, t, heads, d).transpose(1, 2) for a in (q, k, v))  # (N, heads, T, d)
        kv = k.transpose(-2, -1) @ v / t
        z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)  # (N, heads, T, 1)
        out = (q @ kv) * z
        v_map = v.transpose(-2, -1).reshape(n * heads, d, *hw)
        out = out + self.dwc(v_map).reshape(n, heads, d, t).transpose(-2, -1)
        return self.proj(out.transpose(1, 2).reshape(n, t, c))

    def extra_macs(self, n: int, hw: tuple[int, ...]) -> dict[str, int]:
        """The linear-attention products per head: k^T v and q (k^T v) (``n T C d`` each, d = head_dim), and the
        normaliser: mean_t(k) (``n T C`` accumulations) and q . mean(k) (``n T C``): ``n T C (2d + 2)`` in all.
        The kernel function, focusing and division are not counted (a few ops per element)."""
        t = math.prod(hw)
        c = self.num_heads * self.head_dim
        return {"linear_attention": n * t * c * (2 * self.head_dim + 2)}


# ----------------------------------------------------------------------------------------------------
# Selective scan (Mamba, Gu & Dao 2023): h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, y_t = C_t . h_t + D u_t


def _check_scan_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> None:
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (N, L, E); got {tuple(u.shape)}")
    n, length, e = u.shape
    if length < 1:
        raise ValueError(f"selective_scan: u must have at least one token; got {tuple(u.shape)}")
    expected = {"delta": (n, length, e), "A": (e, A.shape[-1]), "B": (n, length, A.shape[-1]),
                "C": (n, length, A.shape[-1]), "D": (e,)}
    for name, x in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D)):
        if tuple(x.shape) != expected[name]:
            raise ValueError(f"selective_scan: {name} must have shape {expected[name]} (u is (N, L, E) = "
                             f"{tuple(u.shape)}, A is (E, S)); got {tuple(x.shape)}")


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The selective scan by a plain sequential loop over the tokens: the specification of :func:`selective_scan`.

    ``h_t = exp(delta_t * A) * h_{t-1} + (delta_t * u_t) B_t`` (state (N, E, S), h_{-1} = 0),
    ``y_t = sum_s C_t,s h_t,s + D * u_t``. Gradients come from autograd.

    Args:
        u: inputs, (N, L, E).
        delta: step sizes, (N, L, E) (after softplus).
        A: state matrix (diagonal per channel), (E, S); negative in Mamba.
        B: input projections, (N, L, S).
        C: output projections, (N, L, S).
        D: skip, (E,).

    Shape:
        (N, L, E) -> (N, L, E).
    """
    _check_scan_inputs(u, delta, A, B, C, D)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + u * D


def _linear_scan(log_a: Tensor, b: Tensor, chunk: int) -> Tensor:
    """``h_t = exp(log_a_t) h_{t-1} + b_t`` along dim 1 (h_{-1} = 0), chunked; no autograd.

    The sequence is cut into chunks of ``chunk`` tokens: (1) every chunk is scanned from a zero state, all chunks
    at once; (2) chunk by chunk, the finished state at the end of the previous chunk is carried in, decayed by
    ``exp(cumsum(log_a))`` from the chunk start. Only products of the factors and exp() of cumulative log-factors
    appear, never their inverses, so no term can overflow when the factors underflow (large |delta A|). Python
    loops: ``chunk - 1 + ceil(L / chunk) - 1`` steps, each over all (N, E, S) states.

    Shape:
        log_a, b: (N, L, E, S) -> (N, L, E, S).
    """
    n, length = b.shape[:2]
    pad = -length % chunk
    if pad:
        # Trailing zero tokens do not change the states before them.
        log_a, b = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (log_a, b))
    shape = (n, (length + pad) // chunk, chunk, *b.shape[2:])
    log_a = log_a.reshape(shape)
    h = b.reshape(shape).clone()
    a = log_a.exp()
    for k in range(1, chunk):
        h[:, :, k].addcmul_(a[:, :, k], h[:, :, k - 1])
    decay = log_a.cumsum(dim=2).exp_()
    for c in range(1, shape[1]):
        h[:, c].addcmul_(decay[:, c], h[:, c - 1, -1:])
    return h.reshape(n, -1, *b.shape[2:])[:, :length]


class _ChunkedScan(torch.autograd.Function):
    """The selective scan as whole-tensor chunked scans: one forward and one reverse-time :func:`_linear_scan`.

    With ``a_t = exp(delta_t A)``, ``b_t = delta_t u_t B_t`` and the adjoint ``lam_t = dLoss/dh_t``, which obeys
    ``lam_t = gy_t C_t + a_{t+1} lam_{t+1}``: ``dLoss/d(delta_t A) = lam_t a_t h_{t-1} = lam_t (h_t - b_t)`` and
    ``dLoss/db_t = lam_t``; the rest is the chain rule through the products. Few, large kernels (for GPUs);
    memory: h (N, L, E, S) is saved.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                chunk: int) -> Tensor:
        h = _linear_scan(delta[..., None] * A, (delta * u)[..., None] * B[:, :, None, :], chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, h)
        ctx.chunk = chunk
        return torch.einsum("nles,nls->nle", h, C) + u * D

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, h = ctx.saved_tensors
        log_a = delta[..., None] * A
        du = delta * u
        # Reverse time: lam_t = g_t + a_{t+1} lam_{t+1}, a forward scan of the flipped sequence.
        next_log_a = F.pad(log_a[:, 1:], (0, 0, 0, 0, 0, 1))
        g = gy[..., None] * C[:, :, None, :]
        lam = _linear_scan(next_log_a.flip(1), g.flip(1), ctx.chunk).flip(1)
        g_log_a = lam * (h - du[..., None] * B[:, :, None, :])
        lam_b = torch.einsum("nles,nls->nle", lam, B)
        g_delta = (g_log_a * A).sum(-1) + lam_b * u
        g_a = (g_log_a * delta[..., None]).sum((0, 1))
        g_b = torch.einsum("nles,nle->nls", lam, du)
        g_c = torch.einsum("nle,nles->nls", gy, h)
        g_u = lam_b * delta + gy * D
        return g_u, g_delta, g_a, g_b, g_c, (gy * u).sum((0, 1)), None


class _SequentialScan(torch.autograd.Function):
    """The selective scan token by token, with the backward of :class:`_ChunkedScan` written as a reverse loop.

    Each step works on one (N, E, S) state, which stays in cache; whole-tensor passes over (N, L, E, S) are
    memory-bound on a CPU, so on 2 cores this is ~2.5x faster than autograd through
    :func:`selective_scan_reference` and ~6x faster than :class:`_ChunkedScan`. The states h_t are saved
    time-major, (L, N, E, S), so each step reads and writes contiguous memory.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
        n, length, e = u.shape
        dt, du, b_, c_ = (x.transpose(0, 1).contiguous() for x in (delta, delta * u, B, C))
        hs = u.new_empty(length, n, e, A.shape[1])
        y = u.new_empty(length, n, e, 1)
        hs[0] = du[0, :, :, None] * b_[0, :, None, :]
        torch.bmm(hs[0], c_[0, :, :, None], out=y[0])
        for t in range(1, length):
            torch.addcmul(du[t, :, :, None] * b_[t, :, None, :], torch.exp(dt[t, :, :, None] * A), hs[t - 1],
                          out=hs[t])
            torch.bmm(hs[t], c_[t, :, :, None], out=y[t])
        ctx.save_for_backward(u, delta, A, B, C, D, hs)
        return y[..., 0].transpose(0, 1) + u * D

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, hs = ctx.saved_tensors
        length = u.shape[1]
        dt, du, b_, c_, g_ = (x.transpose(0, 1).contiguous() for x in (delta, delta * u, B, C, gy))
        lam_b = u.new_empty(length, *u.shape[::2], 1)
        g_da = u.new_zeros(length, *u.shape[::2])
        g_b, g_c = (u.new_empty(length, u.shape[0], 1, B.shape[-1]) for _ in range(2))
        g_a = torch.zeros_like(hs[0])
        lam = a_next = None
        for t in range(length - 1, -1, -1):
            g = g_[t, :, :, None] * c_[t, :, None, :]
            lam = g if lam is None else torch.addcmul(g, lam, a_next)
            torch.bmm(lam, b_[t, :, :, None], out=lam_b[t])
            torch.bmm(du[t, :, None, :], lam, out=g_b[t])
            torch.bmm(g_[t, :, None, :], hs[t], out=g_c[t])
            a_next = torch.exp(dt[t, :, :, None] * A)
            if t > 0:
                g_log_a = lam * a_next * hs[t - 1]
                torch.sum(g_log_a * A, -1, out=g_da[t])
                g_a.addcmul_(g_log_a, dt[t, :, :, None])
        lam_b = lam_b[..., 0].transpose(0, 1)
        g_delta = g_da.transpose(0, 1) + lam_b * u
        return (lam_b * delta + gy * D, g_delta, g_a.sum(0), g_b[:, :, 0].transpose(0, 1),
                g_c[:, :, 0].transpose(0, 1), (gy * u).sum((0, 1)))


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor,
                   method: Literal["auto", "sequential", "chunked"] = "auto", chunk_size: int | None = None) -> Tensor:
    """Mamba's selective scan, fast pure-PyTorch paths; the same function as :func:`selective_scan_reference`.

    ``h_t = exp(delta_t * A) * h_{t-1} + (delta_t * u_t) B_t``, ``y_t = C_t . h_t + D * u_t``. Token-major layout
    (as the project's (N, T, C) tokens), where Mamba's CUDA op is channel-major. Both paths have hand-written
    backwards (reverse-time scans of the adjoint state) and need all tensors in one dtype and device:

    * ``sequential`` (:class:`_SequentialScan`): a loop over tokens on a cache-resident state; the fastest on CPUs.
    * ``chunked`` (:class:`_ChunkedScan`, :func:`_linear_scan`): chunked scans over whole tensors in log space,
      ``chunk_size - 1 + ceil(L / chunk_size)`` steps; for GPUs, where per-token kernel launches dominate.
    * ``auto``: ``sequential`` for CPU tensors, else ``chunked``.

    Args:
        u: inputs, (N, L, E).
        delta: step sizes, (N, L, E) (after softplus).
        A: state matrix (diagonal per channel), (E, S); negative in Mamba.
        B: input projections, (N, L, S).
        C: output projections, (N, L, S).
        D: skip, (E,).
        method: which path.
        chunk_size: tokens per chunk of the chunked path; default ``ceil(sqrt(L))``, the fewest steps.

    Shape:
        (N, L, E) -> (N, L, E); saves an (N, L, E, S) state tensor for the backward.
    """
    _check_scan_inputs(u, delta, A, B, C, D)
    if method not in ("auto", "sequential", "chunked"):
        raise ValueError(f"method must be 'auto', 'sequential' or 'chunked'; got {method!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size}")
    if method == "sequential" or (method == "auto" and u.device.type == "cpu"):
        return _SequentialScan.apply(u, delta, A, B, C, D)
    chunk = chunk_size or math.isqrt(u.shape[1] - 1) + 1
    return _ChunkedScan.apply(u, delta, A, B, C, D, chunk)


class SelectiveSSM(nn.Module):
    """One direction of the Vision Mamba block: causal depthwise conv1d, SiLU, x_proj, dt_proj and the scan.

    Initialised as Mamba: ``dt_proj`` weight uniform(+-dt_rank^-0.5), its bias the inverse softplus of dt drawn
    log-uniformly in [1e-3, 0.1] (floored at 1e-4), both marked ``_no_reinit`` (Mamba's flag: a model-wide init
    must leave them); ``A_log = log(1..d_state)`` per channel (S4D-real); ``D = 1``.

    Args:
        inner: channels E*C.
        d_state: state size S.
        d_conv: causal conv kernel.
        dt_rank: rank of the step-size projection.

    Shape:
        x: (N, L, E*C) -> (N, L, E*C), before the SiLU(z) gate.
    """

    def __init__(self, inner: int, d_state: int, d_conv: int, dt_rank: int) -> None:
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(inner, inner, d_conv, groups=inner)
        self.x_proj = nn.Linear(inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner)
        nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
        dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        for p in self.dt_proj.parameters():
            p._no_reinit = True  # type: ignore[attr-defined]
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, L, E*C) -> (N, L, E*C)."""
        k = self.conv1d.kernel_size[0]
        x = F.silu(self.conv1d(F.pad(x.transpose(1, 2), (k - 1, 0))).transpose(1, 2))
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        # The scan runs in float32 or wider (as the Bi-WKV op): long products lose too much in bf16.
        dtype = torch.promote_types(x.dtype, torch.float32)
        args = (x, delta, -torch.exp(self.A_log), b, c, self.D)
        return selective_scan(*(a.to(dtype) for a in args)).to(x.dtype)


class BiMamba(nn.Module):
    """Vision Mamba's bidirectional block ("v2", Zhu et al. 2024; docs §10).

    ``x, z = in_proj(tokens)`` (C -> 2 E C, no bias); a forward :class:`SelectiveSSM` on x and a backward one,
    with its own parameters, on the flipped sequence; ``out_proj(SiLU(z) * (y_fwd + flip(y_bwd)) / 2)`` (E C -> C,
    no bias), which equals gating each direction by SiLU(z) before averaging. The tokens are scanned in row-major
    order.

    Args:
        dim: channels C.
        d_state: SSM state size S.
        expand: inner width multiple E.
        d_conv: kernel of the causal depthwise conv1d.
        dt_rank: rank of the step-size projection; default ``ceil(C / 16)``.

    Shape:
        x: (N, T, C), T = H*W -> (N, T, C).
    """

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_rank: int | None = None) -> None:
        super().__init__()
        for name, value in (("d_state", d_state), ("expand", expand), ("d_conv", d_conv)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value}")
        dt_rank = math.ceil(dim / 16) if dt_rank is None else dt_rank
        if dt_rank < 1:
            raise ValueError(f"dt_rank must be a positive integer; got {dt_rank}")
        self.inner = expand * dim
        self.d_state = d_state
        self.in_proj = nn.Linear(dim, 2 * self.inner, bias=False)
        self.fwd = SelectiveSSM(self.inner, d_state, d_conv, dt_rank)
        self.bwd = SelectiveSSM(self.inner, d_state, d_conv, dt_rank)
        self.out_proj = nn.Linear(self.inner, dim, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, ...]) -> Tensor:
        """x: (N, T, C), T = H*W -> (N, T, C)."""
        check_tokens(x, hw, type(self).__name__)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        y = self.fwd(xs) + self.bwd(xs.flip(1)).flip(1)
        return self.out_proj(F.silu(z) * y / 2)

    def extra_macs(self, n: int, hw: tuple[int, ...]) -> dict[str, int]:
        """MACs of the two selective scans and the elementwise products, with L = T, E C inner channels, S states.

        ``scan``: per direction, token, inner channel and state one multiply-add of the recurrence
        (``a_t h_{t-1} + b_t``) and one of the C-projection (``C_t . h_t``), plus the D skip per token and channel:
        ``2 n T E C (2 S + 1)``. ``elementwise``: per direction the discretisation ``delta A`` (S), ``delta u`` (1)
        and ``(delta u) B`` (S) per token and channel, and the SiLU(z) gate once: ``n T E C (2 (2 S + 1) + 1)``.
        Not counted: exp, SiLU, softplus, the average.
        """
        t = math.prod(hw)
        per_channel = n * t * self.inner
        return {"scan": 2 * per_channel * (2 * self.d_state + 1),
                "elementwise": per_channel * (2 * (2 * self.d_state + 1) + 1)}


# The one registry of token mixers: name -> class taking (dim, **kwargs) and called as (x, hw). RWKV-UNet's own
# spatial mix registers itself from rwkvlab.models.rwkv_unet; a model's ``mixer: none`` is no mixer, not an entry.
MIXERS: dict[str, type[nn.Module]] = {
    "mhsa": MHSA,
    "focused_linear": FocusedLinearAttention,
    "bi_mamba": BiMamba,
}


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register the decorated token-mixer class under ``name`` in :data:`MIXERS`."""
    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if name in MIXERS:
            raise ValueError(f"mixer {name!r} is registered twice")
        MIXERS[name] = cls
        return cls

    return register


def create_mixer(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """Build the token mixer ``name`` of :data:`MIXERS` over ``dim`` channels, e.g. ``create_mixer("mhsa", 576)``."""
    if name not in MIXERS:
        raise ValueError(f"mixer must be one of {', '.join(MIXERS)}; got {name!r}")
    return MIXERS[name](dim, **kwargs)
