"""Swin-based U-Net baselines (docs §14): MONAI ``SwinUNETR`` in 2D (``swin_unet``, 25.14M parameters) and 3D
(``swin_unetr3d``, 62.19M), feature size 48.

The paper's Synapse and ACDC tables cite Swin-Unet (Cao et al., 2022; 27.17M), a Swin-T encoder with a mirrored
decoder of Swin blocks and patch-expanding layers; the binary table has no Swin row. No maintained library ships
Swin-Unet, so this is MONAI's SwinUNETR (Hatamizadeh et al., 2022): the same Swin encoder layout (patch 2, depths
(2, 2, 2, 2), heads (3, 6, 12, 24), window 7) with a residual-conv decoder, 7.5% fewer parameters than Swin-Unet.
It needs ``einops`` (a MONAI optional dependency).

``swin_unetr3d`` is the network as its paper built it (3D windows of 7x7x7, patch 2x2x2); no table of the RWKV-UNet
paper has it, it is the 3D transformer of ``python -m rwkvlab.bench scaling3d``.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor, nn

from rwkvlab.models._registry import ModelCard, PaperCount, register_model
from rwkvlab.models.baselines._base import check_channels, check_input

logger = logging.getLogger(__name__)

__all__ = ["SwinUNet"]


class SwinUNet(nn.Module):
    """MONAI SwinUNETR (2D or 3D) behind the rwkvlab model contract (no weights loaded).

    Args:
        in_chans: input channels, passed to the patch embedding.
        num_classes: output classes, background included.
        feature_size: SwinUNETR's embedding width (2D: 48 gives 25.1M parameters, 24 gives 6.3M; 3D: 48 gives 62.2M).
        spatial_dims: 2 for images, 3 for volumes (windows 7x7x7, patch 2x2x2).

    Shape:
        2D: x: (N, in_chans, H, W), H and W multiples of 32 (five halvings: patch 2 and four merges)
        -> (N, num_classes, H, W) logits. Windows of 7 are padded inside, so any multiple of 32 works.
        3D: x: (N, in_chans, D, H, W), D, H and W multiples of 32 -> (N, num_classes, D, H, W) logits.

    Attributes:
        size_divisor: 32 in 2D, (32, 32, 32) in 3D (one divisor per spatial axis).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 2, feature_size: int = 48,
                 spatial_dims: Literal[2, 3] = 2) -> None:
        super().__init__()
        from monai.networks.nets import SwinUNETR

        check_channels(in_chans, num_classes)
        if feature_size < 12 or feature_size % 12:
            raise ValueError(f"feature_size must be a positive multiple of 12 (heads 3..24), got {feature_size}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.in_chans, self.num_classes, self.spatial_dims = in_chans, num_classes, spatial_dims
        self.size_divisor: int | tuple[int, ...] = 32 if spatial_dims == 2 else (32,) * spatial_dims
        device = torch.get_default_device()
        # SwinUNETR.__init__ calls .item() on its drop-path schedule, which a meta default device refuses: build on
        # the CPU, then move (the complexity counter builds on meta).
        with torch.device("cpu" if device.type == "meta" else device):
            self.net = SwinUNETR(in_channels=in_chans, out_channels=num_classes, feature_size=feature_size,
                                 spatial_dims=spatial_dims)
        if device.type == "meta":
            self.net.to(device)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.size_divisor, type(self).__name__)
        return self.net(x)


@register_model(ModelCard(
    "Swin-UNet", "MONAI SwinUNETR 2D, feature size 48", size_divisor=32,
    paper_rows={"table3": "SwinUNet [46]", "table4": "SwinUNet [46]"}, paper_counts=(PaperCount(256, 1, None),),
    notes="No row in the binary table. No maintained library ships Swin-Unet (Cao et al., 27.17M, cited in Tables 3-4); "
          "MONAI SwinUNETR 2D has the same Swin-T encoder layout with a residual-conv decoder: 25.14M, -7.5%."))
def swin_unet(in_chans: int = 3, num_classes: int = 2, feature_size: int = 48) -> SwinUNet:
    """Swin-based U-Net: MONAI SwinUNETR 2D, feature size 48, 25.14M parameters (Swin-Unet: 27.17M)."""
    return SwinUNet(in_chans, num_classes, feature_size)


@register_model(ModelCard("SwinUNETR-3D", "MONAI SwinUNETR 3D, feature size 48", spatial_dims=3,
                          size_divisor=(32, 32, 32)))
def swin_unetr3d(in_chans: int = 1, num_classes: int = 2, feature_size: int = 48) -> SwinUNet:
    """Swin UNETR (Hatamizadeh et al., 2022) in 3D: MONAI SwinUNETR, feature size 48, 62.19M parameters.

    Shape: x: (N, in_chans, D, H, W), D, H and W multiples of 32 -> (N, num_classes, D, H, W).
    """
    return SwinUNet(in_chans, num_classes, feature_size, spatial_dims=3)
