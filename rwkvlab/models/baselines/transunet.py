"""TransUNet baseline (Chen et al., 2021; docs §14): R50-ViT-B/16 hybrid encoder + CUP decoder.

The encoder is timm's ``vit_base_r50_s16_224``, the port of the Google R50+ViT-B/16 checkpoint that TransUNet
starts from: a ResNet-50 (v2, weight-standardised convs with GroupNorm) of 3 stages (3, 4, 9 blocks) whose H/16
map becomes the tokens through a 1x1 patch embedding, then 12 ViT-B blocks and a LayerNorm. As in TransUNet there is
no class token and the position embedding covers the patch grid only. The cascaded upsampler (CUP) is written here
because no library has it: conv 3x3 768 -> 512, then four blocks of (bilinear x2 with aligned corners, concatenate
the skip, two conv 3x3 + BN + ReLU) of widths (256, 128, 64, 16) on the skips at H/8 (512), H/4 (256) and H/2 (64),
and a 3x3 head. With the grid of a 224 input: 105.28M parameters (paper 105.3M).

timm's port pads its convolutions TF-"same" (the checkpoint's convention), where TransUNet's own copy pads
symmetrically and crops; the parameter count is the same.
"""

from __future__ import annotations

import logging
from typing import Sequence

from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from rwkvlab.models._registry import ModelCard, PaperCount, register_model
from rwkvlab.models.baselines._base import UpConvBlock, check_channels, check_input
from rwkvlab.models.layers import ConvBNAct

logger = logging.getLogger(__name__)

__all__ = ["TransUNet"]


class TransUNet(nn.Module):
    """TransUNet: R50-ViT-B/16 hybrid encoder and cascaded upsampler (no weights loaded).

    Args:
        in_chans: input channels; a 1-channel image is repeated to RGB, as TransUNet does.
        num_classes: output classes, background included.
        img_size: the input size the position embedding is laid out for ((img_size / 16)^2 positions); inputs of
            any other multiple of 16 get it resampled bicubically (timm's ``resample_abs_pos_embed``), as
            TransUNet does when loading the 224 checkpoint at another size.
        decoder_widths: the four CUP block widths, deepest first.

    Shape:
        x: (N, in_chans, H, W), H and W multiples of 16 -> (N, num_classes, H, W) logits.

    Example:
        >>> net = create_model("transunet", in_chans=1, num_classes=9)
        >>> net(torch.zeros(1, 1, 64, 96)).shape
        torch.Size([1, 9, 64, 96])
    """

    size_divisor = 16
    spatial_dims = 2

    def __init__(self, in_chans: int = 3, num_classes: int = 2, img_size: int = 224,
                 decoder_widths: Sequence[int] = (256, 128, 64, 16)) -> None:
        super().__init__()
        import timm

        check_channels(in_chans, num_classes)
        if img_size < 16 or img_size % 16:
            raise ValueError(f"img_size must be a positive multiple of 16, got {img_size}")
        if len(decoder_widths) != 4:
            raise ValueError(f"decoder_widths must hold 4 widths, got {tuple(decoder_widths)}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.vit = timm.create_model("vit_base_r50_s16_224", pretrained=False, num_classes=0, class_token=False,
                                     global_pool="", img_size=img_size, in_chans=3 if in_chans == 1 else in_chans)
        skip_chs = [f["num_chs"] for f in self.vit.patch_embed.backbone.feature_info[:3]]  # H/2, H/4, H/8
        self.conv_more = ConvBNAct(self.vit.embed_dim, 512, 3, bn_eps=1e-5)
        ins = [512, *decoder_widths[:-1]]
        skips = [*reversed(skip_chs), 0]
        self.decoder = nn.ModuleList(UpConvBlock(i, s, o, align_corners=True) for i, s, o in zip(ins, skips, decoder_widths))
        self.head = nn.Conv2d(decoder_widths[-1], num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.size_divisor, type(self).__name__)
        if self.in_chans == 1:
            x = x.expand(-1, 3, -1, -1)
        *skips, x = self.vit.patch_embed.backbone.forward_intermediates(x, indices=[0, 1, 2, 3],
                                                                        intermediates_only=True)
        x = self.vit.patch_embed.proj(x)
        n, c, h, w = x.shape
        pos = self.vit.pos_embed
        if (h, w) != tuple(self.vit.patch_embed.grid_size):
            pos = resample_abs_pos_embed(pos, new_size=(h, w), old_size=self.vit.patch_embed.grid_size,
                                         num_prefix_tokens=0)
        tokens = self.vit.pos_drop(x.flatten(2).transpose(1, 2) + pos)
        tokens = self.vit.norm(self.vit.blocks(tokens))
        d = self.conv_more(tokens.transpose(1, 2).reshape(n, c, h, w))
        for block, skip in zip(self.decoder, [*reversed(skips), None]):
            d = block(d, skip)
        return self.head(d)


@register_model(ModelCard(
    "TransUNet", "timm R50-ViT-B/16 hybrid + CUP",
    paper_rows={"binary": "TransUNet", **{table: "TransUNet [28]" for table in ("table3", "table4", "table5")}},
    paper_counts=(PaperCount(256, 1, 33.42),),
    notes="Parameters match; MACs +19%, not explained: at 256 the ViT-B linears are 21.74G (256 tokens), the R50 "
          "hybrid convs 5.14G, the CUP decoder convs 10.33G and the attention products 1.21G (counted x2, docs §10)."))
def transunet(in_chans: int = 3, num_classes: int = 2, img_size: int = 224) -> TransUNet:
    """TransUNet (R50-ViT-B/16 + CUP), 105.28M parameters with the 224 grid (paper 105.3M)."""
    return TransUNet(in_chans, num_classes, img_size)
