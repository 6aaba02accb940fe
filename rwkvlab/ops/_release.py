"""The authors' CUDA Bi-WKV forward (``cuda/wkv_cuda.cu`` of their release), reproduced in PyTorch (docs §21).

Their kernel is not the formula of docs §2: it splits the T tokens into 32 chunks of ``ceil(T / 32)`` and, with
non-zero decay, weights tokens of earlier chunks by ``|t-i|`` instead of ``|t-i| - 1``, carries terms that do not
cancel through its later-token sums, and adds 1e-6 to the (max-scaled) denominator. Its trained checkpoints were
trained and tested through it, so ``wkv="release"`` runs this instead of :func:`rwkvlab.ops.bi_wkv`. The steps
are the kernel's, in its order and with its running maxima, vectorised over batch, channels and chunks; the
sequential loops are over the positions inside a chunk (at most 32 for T <= 1024) and over the chunks. Gradients
come from autograd: they are the gradients of this forward, not those of the authors' backward kernel (which
assumes the formula). Pure PyTorch: any device, any T (the kernel itself stops at T = 1024).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bi_wkv_release", "RELEASE_CHUNKS"]

RELEASE_CHUNKS = 32  # TOKEN_SPLIT of their kernel: 512 threads / 16 channels per block
_MIN = -1e38  # MIN_VALUE, the empty running maximum
_EPS = 1e-6


def _accumulate(state: tuple[Tensor, Tensor, Tensor], logit: Tensor, value: Tensor, weight: Tensor | float,
                keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the kernel's max-scaled sums where ``keep``: ``acc = e1 acc + e3 value``, ``den = e1 den + e3
    weight``, with e1, e3 the old scale and ``logit`` over the new running maximum ``top``."""
    acc, den, top = state
    new_top = torch.maximum(top, logit)
    e1, e3 = torch.exp(top - new_top), torch.exp(logit - new_top)
    return (torch.where(keep, e1 * acc + e3 * value, acc), torch.where(keep, e1 * den + e3 * weight, den),
            torch.where(keep, new_top, top))


def bi_wkv_release(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> Tensor:
    """Bi-WKV as the authors' CUDA forward kernel computes it.

    Args:
        k: keys, (N, T, C).
        v: values, (N, T, C).
        w: per-channel decay, (C,), already divided by T.
        u: per-channel bonus of the token itself, (C,), already divided by T.

    Shape:
        (N, T, C) -> (N, T, C), dtype of ``k``; computed in float32 (as the kernel) or float64 for float64 input.
    """
    n_batch, t, c = k.shape
    dtype = torch.promote_types(k.dtype, torch.float32)
    out_dtype = k.dtype
    k, v, w, u = (x.to(dtype) for x in (k, v, w, u))
    length = -(-t // RELEASE_CHUNKS)
    # the kernel's chunks past T (T < 32 * length) hold nothing and add exact zeros: left out
    chunks = -(-t // length)
    pad = chunks * length - t
    # (N, chunks, length, C); padding is finite so that masked steps stay finite under autograd
    kc = torch.nn.functional.pad(k, (0, 0, 0, pad)).reshape(n_batch, chunks, length, c)
    vc = torch.nn.functional.pad(v, (0, 0, 0, pad)).reshape(n_batch, chunks, length, c)
    device = k.device
    starts = torch.arange(chunks, device=device) * length
    sizes = (t - starts).clamp(max=length)  # tokens per chunk: the last may be short
    per_chunk = sizes.view(1, chunks, 1)
    zeros = k.new_zeros(n_batch, chunks, c)
    empty = torch.full_like(zeros, _MIN)

    # Phase 1, per chunk: c, d from the chunk's first token onwards (weights -w (i - s)); a, b from its last token
    # backwards (weights -w (s + n - i)).
    fwd = (zeros, zeros, empty)
    bwd = (zeros, zeros, empty)
    for i in range(length):
        keep = (i < per_chunk)
        fwd = _accumulate(fwd, kc[:, :, i] - w * i, vc[:, :, i], 1.0, keep)
        back = (sizes - 1 - i).clamp(min=0).view(1, chunks, 1, 1).expand(n_batch, chunks, 1, c)
        kb, vb = kc.gather(2, back)[:, :, 0], vc.gather(2, back)[:, :, 0]
        bwd = _accumulate(bwd, kb - w * (i + 1), vb, 1.0, keep)

    # Phase 2: each chunk's a, b gather the earlier chunks' (weights -w (j - i - 1) L), earliest first.
    target = torch.arange(chunks, device=device).view(1, chunks, 1)
    left = (zeros, zeros, empty)
    for i in range(chunks):
        gap = (target - i - 1) * length
        left = _accumulate(left, bwd[2][:, i : i + 1] - w * gap, *_sums(bwd, i), target > i)
    a, b, o2 = left
    # Phase 3: c, d gather the chunk's own and the later chunks' (weights -w (i - j) L), nearest first; then the
    # chunk's first token is taken out.
    right = (zeros, zeros, empty)
    for i in range(chunks):
        gap = (i - target) * length
        right = _accumulate(right, fwd[2][:, i : i + 1] - w * gap, *_sums(fwd, i), target <= i)
    c_acc, d_acc, o1 = right
    first_k, first_v = kc[:, :, 0], vc[:, :, 0]
    c_acc = c_acc - torch.exp(first_k - o1) * first_v
    d_acc = d_acc - torch.exp(first_k - o1)

    # Phase 4: outputs along the chunk, a, b taking the token in, c, d letting the next one go.
    ys = []
    for i in range(length):
        keep = i < per_chunk
        ki, vi = kc[:, :, i], vc[:, :, i]
        top = torch.maximum(torch.maximum(o1, u + ki), o2)
        e1, e2, e3 = torch.exp(o1 - top), torch.exp(o2 - top), torch.exp(u + ki - top)
        ys.append((c_acc * e1 + a * e2 + e3 * vi) / (d_acc * e1 + b * e2 + e3 + _EPS))
        top = torch.maximum(o2 - w, ki)
        e2, e3 = torch.exp(o2 - w - top), torch.exp(ki - top)
        a, b, o2 = (torch.where(keep, x, old) for x, old in ((e2 * a + e3 * vi, a), (e2 * b + e3, b), (top, o2)))
        # the token after i: the next in the chunk; past the chunk's end the state is not read again
        nxt = min(i + 1, length - 1)
        kn, vn = kc[:, :, nxt] + w, vc[:, :, nxt]
        top = torch.maximum(o1 + w, kn)
        e1, e3 = torch.exp(o1 + w - top), torch.exp(kn - top)
        c_acc, d_acc, o1 = (torch.where(keep, x, old)
                            for x, old in ((e1 * c_acc - e3 * vn, c_acc), (e1 * d_acc - e3, d_acc), (top, o1)))
    y = torch.stack(ys, dim=2).reshape(n_batch, chunks * length, c)[:, :t]
    return y.to(out_dtype)


def _sums(state: tuple[Tensor, Tensor, Tensor], i: int) -> tuple[Tensor, Tensor]:
    """Chunk ``i``'s scaled sums, broadcast over the target chunks."""
    return state[0][:, i : i + 1], state[1][:, i : i + 1]
