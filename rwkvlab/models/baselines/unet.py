"""U-Net, Attention U-Net and UNet++ baselines (docs §14), built from MONAI networks and blocks.

* ``unet``: MONAI ``BasicUNet`` with features (32, 64, 128, 256, 512, 32), 7.78M parameters (paper 7.77M).
* ``unet_pp``: MONAI ``BasicUNetPlusPlus``, same features, without its unused deep-supervision heads, 9.12M (paper
  9.16M, the 4uiiurz1/UNeXt ``NestedUNet``).
* ``unet3d``: the same ``BasicUNet`` with ``spatial_dims=3`` (3x3x3 convolutions, 2x2x2 pooling and transposed
  convolutions), BatchNorm + ReLU as the 2D one, 22.63M parameters (1 channel in, 4 classes). No table of the
  paper has it; it is the 3D yardstick of ``python -m rwkvlab.bench scaling3d``.
* ``att_unet``: the Attention U-Net of Oktay et al. (2018) in the layout of its common PyTorch port
  (LeeJunHyun/Image_Segmentation ``AttU_Net``) at half its widths, 8.73M (paper 8.73M), assembled from MONAI's
  attention-gate and conv blocks. MONAI's own ``AttentionUnet(channels=(32..512))`` has 7.94M because its decoder
  merges with one convolution per level where the original has two, and it downsamples with strided convolutions
  instead of max pooling.

BatchNorm and ReLU replace MONAI's default instance norm and LeakyReLU: the implementations the paper's tables come
from (Oktay's, UNet++'s ``VGGBlock``) use them, and the complexity counter counts BatchNorm as thop does. MONAI's
transposed-convolution upsampling (``upsample="deconv"``) is kept because it gives the paper's parameter counts; the
bilinear alternative loses 0.5M (U-Net 7.25M) and 0.7M (UNet++ 8.39M).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from rwkvlab.models._registry import ModelCard, PaperCount, register_model
from rwkvlab.models.baselines._base import check_channels, check_input

logger = logging.getLogger(__name__)

__all__ = ["MonaiUNet", "AttentionUNet"]

FEATURES = (32, 64, 128, 256, 512, 32)


class MonaiUNet(nn.Module):
    """MONAI's ``BasicUNet`` or ``BasicUNetPlusPlus`` (2D or 3D) behind the rwkvlab model contract.

    Args:
        nested: ``False`` for U-Net, ``True`` for UNet++ (without deep supervision).
        in_chans: input channels, passed to the first convolution (no weights to reuse, so no RGB repeat).
        num_classes: output classes, background included.
        features: the five encoder widths and the last decoder width (MONAI's ``features``).
        spatial_dims: 2 for images, 3 for volumes (every convolution, pooling and norm becomes 3D).

    Shape:
        2D: x: (N, in_chans, H, W), H and W multiples of 16 (four poolings) -> (N, num_classes, H, W) logits.
        3D: x: (N, in_chans, D, H, W), D, H and W multiples of 16 -> (N, num_classes, D, H, W) logits.

    Attributes:
        size_divisor: 16 in 2D, (16, 16, 16) in 3D (one divisor per spatial axis).

    Example:
        >>> net = create_model("unet", in_chans=1, num_classes=4)
        >>> net(torch.zeros(2, 1, 64, 96)).shape
        torch.Size([2, 4, 64, 96])
        >>> create_model("unet3d", in_chans=1, num_classes=4)(torch.zeros(1, 1, 16, 32, 48)).shape
        torch.Size([1, 4, 16, 32, 48])
    """

    def __init__(self, nested: bool = False, in_chans: int = 3, num_classes: int = 2,
                 features: Sequence[int] = FEATURES, spatial_dims: Literal[2, 3] = 2) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet, BasicUNetPlusPlus

        check_channels(in_chans, num_classes)
        if len(features) != 6:
            raise ValueError(f"features must hold 6 widths (5 encoder levels, last decoder), got {tuple(features)}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.in_chans, self.num_classes, self.nested = in_chans, num_classes, nested
        self.spatial_dims = spatial_dims
        self.size_divisor: int | tuple[int, ...] = 16 if spatial_dims == 2 else (16,) * spatial_dims
        cls = BasicUNetPlusPlus if nested else BasicUNet
        # BasicUNet.__init__ prints its features; the library logs instead.
        with contextlib.redirect_stdout(io.StringIO()) as said:
            self.net = cls(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=num_classes,
                           features=tuple(features), act="relu", norm="batch", upsample="deconv")
        logger.debug("%s: %s", cls.__name__, said.getvalue().strip())
        if nested:
            # MONAI builds and runs the three deep-supervision heads even without deep supervision, then drops their
            # maps: Identity keeps its forward working without parameters that never get a gradient.
            for i in (1, 2, 3):
                setattr(self.net, f"final_conv_0_{i}", nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.size_divisor, type(self).__name__)
        out = self.net(x)
        return out[0] if self.nested else out  # BasicUNetPlusPlus returns a list (one map without deep supervision)


class _UpConv(nn.Sequential):
    """Nearest x2 upsampling then conv 3x3 + BN + ReLU: ``up_conv`` of the Attention U-Net port."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        from monai.networks.blocks import Convolution

        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"),
                         Convolution(2, in_chs, out_chs, kernel_size=3, act="relu", norm="batch", adn_ordering="NDA"))


class AttentionUNet(nn.Module):
    """Attention U-Net (Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", 2018), 2D.

    The layout of the widely used port (LeeJunHyun/Image_Segmentation ``AttU_Net``): double-conv encoder with max
    pooling; per decoder level an upsampling conv, an additive attention gate on the skip (inner width half the
    skip's) and a double conv on ``cat[gated skip, upsampled]``; a 1x1 head. Built from MONAI's ``ConvBlock`` and
    ``AttentionBlock``; MONAI's ``AttentionUnet`` differs in the two ways the module docstring names.

    Args:
        in_chans: input channels.
        num_classes: output classes, background included.
        channels: encoder widths, shallowest first; (32, ..., 512) is the original's half width (8.73M parameters).

    Shape:
        x: (N, in_chans, H, W), H and W multiples of 2^(len(channels) - 1) -> (N, num_classes, H, W) logits.
    """

    spatial_dims = 2

    def __init__(self, in_chans: int = 3, num_classes: int = 2,
                 channels: Sequence[int] = (32, 64, 128, 256, 512)) -> None:
        super().__init__()
        from monai.networks.nets.attentionunet import AttentionBlock, ConvBlock

        check_channels(in_chans, num_classes)
        if len(channels) < 2:
            raise ValueError(f"channels must hold at least 2 widths, got {tuple(channels)}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.size_divisor = 2 ** (len(channels) - 1)
        ins = [in_chans, *channels[:-1]]
        self.encoder = nn.ModuleList(ConvBlock(2, i, o) for i, o in zip(ins, channels))
        self.pool = nn.MaxPool2d(2)
        # Decoder levels deepest first: channels[k + 1] -> channels[k].
        deep = list(reversed(channels))
        self.up = nn.ModuleList(_UpConv(d, s) for d, s in zip(deep, deep[1:]))
        self.gate = nn.ModuleList(AttentionBlock(2, f_int=s // 2, f_g=s, f_l=s) for s in deep[1:])
        self.merge = nn.ModuleList(ConvBlock(2, 2 * s, s) for s in deep[1:])
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.size_divisor, type(self).__name__)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        d = skips.pop()
        for up, gate, merge in zip(self.up, self.gate, self.merge):
            d = up(d)
            s = skips.pop()
            d = merge(torch.cat([gate(g=d, x=s), d], dim=1))  # the original's order: gated skip first
        return self.head(d)


@register_model(ModelCard(
    "U-Net", "MONAI BasicUNet (32..512), deconv up", paper_rows={"binary": "U-Net", "table3": "U-Net [1]",
                                                                 "table5": "U-Net [1]"},
    paper_counts=(PaperCount(256, 1, 12.16),),
    notes="Parameters match; MACs do not: MONAI's transposed-conv decoder costs 14.82G of convs. The 4uiiurz1 (UNeXt) "
          "UNet of VGG blocks with bilinear upsampling, rebuilt and counted the same way, has 7.85M / 14.10G: not the "
          "paper's build either, which is unpublished."))
def unet(in_chans: int = 3, num_classes: int = 2, features: Sequence[int] = FEATURES) -> MonaiUNet:
    """U-Net (Ronneberger et al., 2015) as MONAI ``BasicUNet``, 7.78M parameters (paper 7.77M)."""
    return MonaiUNet(False, in_chans, num_classes, features)


@register_model(ModelCard("3D U-Net", "MONAI BasicUNet 3D (32..512), BatchNorm + ReLU", spatial_dims=3,
                          size_divisor=(16, 16, 16)))
def unet3d(in_chans: int = 1, num_classes: int = 2, features: Sequence[int] = FEATURES) -> MonaiUNet:
    """3D U-Net: MONAI ``BasicUNet`` with ``spatial_dims=3``, BatchNorm + ReLU, 22.63M parameters (1 in, 4 classes).

    Shape: x: (N, in_chans, D, H, W), D, H and W multiples of 16 -> (N, num_classes, D, H, W).
    """
    return MonaiUNet(False, in_chans, num_classes, features, spatial_dims=3)


@register_model(ModelCard(
    "UNet++", "MONAI BasicUNetPlusPlus (32..512), deconv up", paper_rows={"binary": "UNet++"},
    paper_counts=(PaperCount(256, 1, 34.71),),
    notes="Parameters match; MACs do not: the paper's 9.16M / 34.71G is the 4uiiurz1 (UNeXt) NestedUNet with bilinear "
          "upsampling (rebuilt and counted the same way: 9.16M / 34.90G); MONAI upsamples by transposed convs, which "
          "costs 38.51G."))
def unet_pp(in_chans: int = 3, num_classes: int = 2, features: Sequence[int] = FEATURES) -> MonaiUNet:
    """UNet++ (Zhou et al., 2018) as MONAI ``BasicUNetPlusPlus``, 9.12M parameters (paper 9.16M)."""
    return MonaiUNet(True, in_chans, num_classes, features)


@register_model(ModelCard("Att-UNet", "Attention U-Net at half widths, MONAI blocks", paper_rows={"binary": "Att-UNet"},
                           paper_counts=(PaperCount(256, 1, 16.78),)))
def att_unet(in_chans: int = 3, num_classes: int = 2,
             channels: Sequence[int] = (32, 64, 128, 256, 512)) -> AttentionUNet:
    """Attention U-Net (Oktay et al., 2018) at half the original widths, 8.73M parameters (paper 8.73M)."""
    return AttentionUNet(in_chans, num_classes, channels)
