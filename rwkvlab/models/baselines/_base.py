"""The input contract every baseline checks in ``forward``: channel count and size rule."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_input"]


def check_input(x: Tensor, in_chans: int, size_divisor: int, who: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, in_chans, H, W) with H and W multiples of ``size_divisor``.

    Shape:
        x: (N, in_chans, H, W).
    """
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{who}: built for in_chans={in_chans}, got an input of shape {tuple(x.shape)}; "
                         f"expected (N, {in_chans}, H, W)")
    h, w = x.shape[-2:]
    if h % size_divisor or w % size_divisor:
        raise ValueError(f"{who}: input height and width must be multiples of {size_divisor} (size_divisor), "
                         f"got {h}x{w}")
