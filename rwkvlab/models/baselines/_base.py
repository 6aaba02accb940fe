"""What the baselines share: the input contract checked in ``forward`` and the conv decoder block."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rwkvlab.models.layers import ConvBNAct

__all__ = ["check_channels", "check_input", "UpConvBlock"]


class UpConvBlock(nn.Module):
    """Bilinear x2, concatenate the skip if any (decoder feature first), two conv 3x3 + BN + ReLU.

    Args:
        in_chs: channels of the decoder feature.
        skip_chs: channels of the skip (0 when none is passed).
        out_chs: output channels.
        align_corners: of the upsampling (TransUNet's cascaded upsampler aligns them, the R50 U-Net does not).
    """

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int, align_corners: bool = False) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners)
        self.conv = nn.Sequential(ConvBNAct(in_chs + skip_chs, out_chs, 3, bn_eps=1e-5),
                                  ConvBNAct(out_chs, out_chs, 3, bn_eps=1e-5))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """x: (N, in_chs, H, W), skip: (N, skip_chs, 2H, 2W) or None -> (N, out_chs, 2H, 2W)."""
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))


def check_channels(in_chans: int, num_classes: int) -> None:
    """Raise ``ValueError`` unless a baseline is asked for at least one input channel and one class."""
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


def check_input(x: Tensor, in_chans: int, size_divisor: int | tuple[int, ...], who: str) -> None:
    """Raise ``ValueError`` unless ``x`` has ``in_chans`` channels and a spatial size that ``size_divisor`` divides.

    An ``int`` divisor is the 2D rule (H and W multiples of it); a tuple holds one divisor per spatial axis, so
    ``(16, 16, 16)`` asks for a volume (N, C, D, H, W) with D, H and W multiples of 16.

    Shape:
        x: (N, in_chans, H, W) for an ``int`` divisor, (N, in_chans, D, H, W) for a 3-tuple.
    """
    divisors = (size_divisor, size_divisor) if isinstance(size_divisor, int) else tuple(size_divisor)
    axes = {2: ("H", "W"), 3: ("D", "H", "W")}[len(divisors)]
    if x.dim() != 2 + len(divisors) or x.shape[1] != in_chans:
        raise ValueError(f"{who}: built for in_chans={in_chans}, got an input of shape {tuple(x.shape)}; "
                         f"expected (N, {in_chans}, {', '.join(axes)})")
    sizes = tuple(x.shape[2:])
    if any(s % d for s, d in zip(sizes, divisors)):
        names = "height and width" if len(divisors) == 2 else "depth, height and width"
        shown = size_divisor if isinstance(size_divisor, int) else divisors
        raise ValueError(f"{who}: input {names} must be multiples of {shown} (size_divisor), "
                         f"got {'x'.join(map(str, sizes))}")
