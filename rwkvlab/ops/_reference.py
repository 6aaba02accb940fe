"""Reference Bi-WKV (docs §2): the specification of the operator, in plain PyTorch.

The logits of token ``t`` over tokens ``i`` are ``L_ti = k_i - (|t-i| - 1) w`` for ``i != t`` and
``L_tt = u + k_t``; the output is ``softmax_i(L_t) . v``. Building the (T, T) logit matrix and
using :func:`torch.softmax` is O(T^2) but obviously right, and softmax subtracts the running
maximum, so there is no overflow for any finite ``w``, ``u``, ``k``. Gradients come from autograd.
This path is the oracle the fast backends are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["bi_wkv_reference"]


def bi_wkv_reference(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> Tensor:
    """Bi-WKV by the dense softmax formula.

    Args:
        k: keys, (N, T, C).
        v: values, (N, T, C).
        w: per-channel decay, (C,), already divided by T.
        u: per-channel bonus of the token itself, (C,), already divided by T.

    Shape:
        (N, T, C) -> (N, T, C); memory is O(N C T^2).
    """
    n, t, c = k.shape
    pos = torch.arange(t, device=k.device)
    dist = (pos[:, None] - pos[None, :]).abs().to(k.dtype)  # (T, T), |t - i|
    eye = torch.eye(t, dtype=torch.bool, device=k.device)
    kc = k.transpose(1, 2)  # (N, C, T)
    # (N, C, T_out, T_in)
    logits = kc[:, :, None, :] - (dist - 1)[None, None] * w[None, :, None, None]
    diag = (u[None, :, None] + kc)[:, :, :, None].expand(n, c, t, t)
    logits = torch.where(eye, diag, logits)
    attn = torch.softmax(logits, dim=-1)
    out = attn @ v.transpose(1, 2)[..., None]  # (N, C, T, 1)
    return out[..., 0].transpose(1, 2)
