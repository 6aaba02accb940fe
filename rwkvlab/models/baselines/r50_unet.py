"""R50-UNet baseline (docs §14): a U-Net decoder on timm's ``resnet50`` ``features_only`` encoder.

The encoder gives five maps (64 @ H/2, 256 @ H/4, 512 @ H/8, 1024 @ H/16, 2048 @ H/32; 23.51M parameters). A 1x1
conv first narrows the 2048-channel bottleneck to the first decoder width: concatenating it at full width with the
1024-channel skip would cost 7.1M parameters in one block, and no build near the paper's 28.78M does that. Then four
up-blocks (bilinear x2, concatenate the skip, two conv 3x3 + BN + ReLU) of widths (256, 128, 64, 32), one bilinear
x2 back to the input size and a 1x1 head: 28.91M in all (paper 28.78M, +0.5%).
"""

from __future__ import annotations

import logging
from typing import Sequence

from torch import Tensor, nn

from rwkvlab.models._registry import ModelCard, PaperCount, register_model
from rwkvlab.models.baselines._base import UpConvBlock, check_channels, check_input
from rwkvlab.models.layers import ConvBNAct

logger = logging.getLogger(__name__)

__all__ = ["R50UNet"]


class R50UNet(nn.Module):
    """U-Net decoder on a timm ResNet-50 encoder (no weights loaded).

    Args:
        in_chans: input channels; a 1-channel image is repeated to RGB (the ResNet stem is built for 3, so ImageNet
            weights would load).
        num_classes: output classes, background included.
        decoder_widths: the four up-block widths, deepest first.
        encoder: the timm model whose five ``features_only`` levels feed the decoder.

    Shape:
        x: (N, in_chans, H, W), H and W multiples of 32 -> (N, num_classes, H, W) logits.

    Example:
        >>> net = create_model("r50_unet", in_chans=1, num_classes=2)
        >>> net(torch.zeros(1, 1, 64, 96)).shape
        torch.Size([1, 2, 64, 96])
    """

    spatial_dims = 2

    def __init__(self, in_chans: int = 3, num_classes: int = 2, decoder_widths: Sequence[int] = (256, 128, 64, 32),
                 encoder: str = "resnet50") -> None:
        super().__init__()
        import timm

        check_channels(in_chans, num_classes)
        if len(decoder_widths) != 4:
            raise ValueError(f"decoder_widths must hold 4 widths, got {tuple(decoder_widths)}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.encoder = timm.create_model(encoder, pretrained=False, features_only=True,
                                         in_chans=3 if in_chans == 1 else in_chans)
        chs = self.encoder.feature_info.channels()
        reductions = self.encoder.feature_info.reduction()
        if len(chs) != 5 or reductions != [2, 4, 8, 16, 32]:
            raise ValueError(f"encoder {encoder!r} must give 5 levels at reductions 2..32, got {reductions}")
        self.size_divisor = reductions[-1]
        self.bottleneck = ConvBNAct(chs[-1], decoder_widths[0], 1, bn_eps=1e-5)
        ins = [decoder_widths[0], *decoder_widths[:-1]]
        self.decoder = nn.ModuleList(UpConvBlock(i, s, o, align_corners=False) for i, s, o in zip(ins, reversed(chs[:-1]), decoder_widths))
        self.final_up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head = nn.Conv2d(decoder_widths[-1], num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.size_divisor, type(self).__name__)
        if self.in_chans == 1:
            x = x.expand(-1, 3, -1, -1)
        feats = self.encoder(x)
        d = self.bottleneck(feats[-1])
        for block, skip in zip(self.decoder, reversed(feats[:-1])):
            d = block(d, skip)
        return self.head(self.final_up(d))


@register_model(ModelCard(
    "R50-UNet", "timm resnet50 + U-Net decoder", size_divisor=32,
    paper_rows={"binary": "R50-UNet", "table3": "R50 U-Net [1], [45]", "table4": "R50 U-Net [1], [45]"},
    paper_counts=(PaperCount(256, 1, 9.72),)))
def r50_unet(in_chans: int = 3, num_classes: int = 2,
             decoder_widths: Sequence[int] = (256, 128, 64, 32)) -> R50UNet:
    """R50-UNet: timm ``resnet50`` encoder + U-Net decoder, 28.91M parameters (paper 28.78M)."""
    return R50UNet(in_chans, num_classes, decoder_widths)
