"""Swin-based U-Net baseline (docs §14): MONAI ``SwinUNETR`` in 2D, feature size 48 (25.14M parameters).

The paper's Synapse and ACDC tables cite Swin-Unet (Cao et al., 2022; 27.17M), a Swin-T encoder with a mirrored
decoder of Swin blocks and patch-expanding layers; the binary table has no Swin row. No maintained library ships
Swin-Unet, so this is MONAI's SwinUNETR (Hatamizadeh et al., 2022): the same Swin encoder layout (patch 2, depths
(2, 2, 2, 2), heads (3, 6, 12, 24), window 7) with a residual-conv decoder, 7.5% fewer parameters than Swin-Unet.
It needs ``einops`` (a MONAI optional dependency).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from rwkvlab.models._registry import register_model
from rwkvlab.models.baselines._base import check_channels, check_input

logger = logging.getLogger(__name__)

__all__ = ["SwinUNet"]


class SwinUNet(nn.Module):
    """MONAI SwinUNETR (2D) behind the rwkvlab model contract (no weights loaded).

    Args:
        in_chans: input channels, passed to the patch embedding.
        num_classes: output classes, background included.
        feature_size: SwinUNETR's embedding width (48: 25.1M parameters; 24: 6.3M).

    Shape:
        x: (N, in_chans, H, W), H and W multiples of 32 (five halvings: patch 2 and four merges)
        -> (N, num_classes, H, W) logits. Windows of 7 are padded inside, so any multiple of 32 works.
    """

    size_divisor = 32

    def __init__(self, in_chans: int = 3, num_classes: int = 2, feature_size: int = 48) -> None:
        super().__init__()
        from monai.networks.nets import SwinUNETR

        check_channels(in_chans, num_classes)
        if feature_size < 12 or feature_size % 12:
            raise ValueError(f"feature_size must be a positive multiple of 12 (heads 3..24), got {feature_size}")
        self.in_chans, self.num_classes = in_chans, num_classes
        device = torch.get_default_device()
        # SwinUNETR.__init__ calls .item() on its drop-path schedule, which a meta default device refuses: build on
        # the CPU, then move (the complexity counter builds on meta).
        with torch.device("cpu" if device.type == "meta" else device):
            self.net = SwinUNETR(in_channels=in_chans, out_channels=num_classes, feature_size=feature_size,
                                 spatial_dims=2)
        if device.type == "meta":
            self.net.to(device)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.size_divisor, type(self).__name__)
        return self.net(x)


@register_model
def swin_unet(in_chans: int = 3, num_classes: int = 2, feature_size: int = 48) -> SwinUNet:
    """Swin-based U-Net: MONAI SwinUNETR 2D, feature size 48, 25.14M parameters (Swin-Unet: 27.17M)."""
    return SwinUNet(in_chans, num_classes, feature_size)
