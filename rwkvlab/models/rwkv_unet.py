"""RWKV-UNet (Jiang et al., 2025): encoder of GLSP blocks, CCM skips and a UNet decoder.

Everything here follows ``SPEC.md`` §1-4. One implementation; the sizes T/S/B are rows of a
config table and registered as ``rwkv_unet_t|s|b`` (segmentation) and ``rwkv_enc_t|s|b``
(the encoder with its ImageNet head, for pretraining).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Sequence

import torch
from timm.layers import DropPath, LayerNorm2d, SEModule, trunc_normal_
from torch import Tensor, nn
from torch.nn import functional as F

from rwkvlab.models._registry import register_model
from rwkvlab.models.layers import ConvBNAct, q_shift
from rwkvlab.ops import bi_wkv

__all__ = ["RWKVUNetCfg", "RWKVEncoder", "RWKVUNet", "SpatialMix", "ChannelMix", "GLSPBlock", "CCM"]


@dataclass(frozen=True)
class RWKVUNetCfg:
    """Architecture of one RWKV-UNet size (SPEC §1, table).

    Args:
        depths: blocks per stage 1-4.
        dims: output channels e0..e3 of stages 1-4.
        expansions: expansion ratio per stage.
        stem_dim: stem output channels (also the last decoder width).
        mix_stages: 0-based indices of the stages whose blocks 1.. use Spatial Mix.
        dw_kernel: depthwise kernel of the GLSP blocks.
        decoder_kernel: depthwise kernel of the decoder up-blocks.
        drop_path_rate: the last stage block's drop-path rate (linear from 0).
        ccm_rate: hidden expansion of the CCM Channel Mix (paper Table 12).
        ccm_drop_path: drop-path rate of the CCM residual.
    """

    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    expansions: tuple[float, float, float, float]
    stem_dim: int = 24
    mix_stages: tuple[int, ...] = (2, 3)
    dw_kernel: int = 5
    decoder_kernel: int = 9
    drop_path_rate: float = 0.05
    ccm_rate: int = 2
    ccm_drop_path: float = 0.05


SIZES: dict[str, RWKVUNetCfg] = {
    "t": RWKVUNetCfg(depths=(2, 2, 4, 2), dims=(32, 48, 96, 160), expansions=(2.0, 2.5, 3.0, 3.5)),
    "s": RWKVUNetCfg(depths=(3, 3, 6, 3), dims=(32, 64, 128, 192), expansions=(2.0, 2.5, 3.0, 4.0)),
    "b": RWKVUNetCfg(depths=(3, 3, 6, 3), dims=(48, 72, 144, 240), expansions=(2.0, 2.5, 4.0, 4.0)),
}


class SpatialMix(nn.Module):
    """Vision-RWKV spatial mix: Q-shift, token mixing by Bi-WKV, receptance gate (SPEC §2).

    Args:
        dim: channels C.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mu_k = nn.Parameter(torch.full((dim,), 0.5))
        self.mu_v = nn.Parameter(torch.full((dim,), 0.5))
        self.mu_r = nn.Parameter(torch.full((dim,), 0.5))
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)
        self.key_norm = nn.LayerNorm(dim)
        self.decay = nn.Parameter(torch.zeros(dim))
        self.first = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x: (N, T, C), T = H*W -> (N, T, C)."""
        t = x.shape[1]
        xx = q_shift(x, hw)
        k = self.key(torch.lerp(xx, x, self.mu_k))
        v = self.value(torch.lerp(xx, x, self.mu_v))
        r = self.receptance(torch.lerp(xx, x, self.mu_r))
        # The authors scale both by T (SPEC §2 Decision); the op itself runs in float32 or wider.
        dtype = torch.promote_types(k.dtype, torch.float32)
        y = bi_wkv(k.to(dtype), v.to(dtype), (self.decay / t).to(dtype), (self.first / t).to(dtype))
        return self.output(torch.sigmoid(r) * self.key_norm(y.to(r.dtype)))


class ChannelMix(nn.Module):
    """Vision-RWKV channel mix with squared-ReLU hidden layer (SPEC §2), used by CCM.

    Args:
        dim: channels C.
        rate: hidden width multiple.
    """

    def __init__(self, dim: int, rate: int = 2) -> None:
        super().__init__()
        hidden = rate * dim
        self.mu_k = nn.Parameter(torch.full((dim,), 0.5))
        self.mu_r = nn.Parameter(torch.full((dim,), 0.5))
        self.key = nn.Linear(dim, hidden, bias=False)
        self.key_norm = nn.LayerNorm(hidden)
        self.value = nn.Linear(hidden, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """x: (N, T, C), T = H*W -> (N, T, C)."""
        xx = q_shift(x, hw)
        h = torch.square(torch.relu(self.key(torch.lerp(xx, x, self.mu_k))))
        kv = self.value(self.key_norm(h))
        return torch.sigmoid(self.receptance(torch.lerp(xx, x, self.mu_r))) * kv


class GLSPBlock(nn.Module):
    """Global-local spatial perception block (SPEC §1); with ``spatial_mix=False`` an LP block.

    Args:
        in_chs: input channels din.
        out_chs: output channels dout.
        mid_chs: expanded width dm.
        stride: stride of the depthwise convolution (2 downsamples).
        norm: input normalisation: BatchNorm (stages 1-2), channel LayerNorm (stages 3-4) or none (stem).
        spatial_mix: insert the Spatial Mix between expansion and depthwise conv.
        se: squeeze-excite after the depthwise conv (stem only).
        skip_allowed: use residuals when the shape allows (din == dout and stride 1).
        dw_kernel: depthwise kernel size.
        drop_path: stochastic-depth rate of the residuals.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        stride: int = 1,
        norm: Literal["bn", "ln", "none"] = "bn",
        spatial_mix: bool = False,
        se: bool = False,
        skip_allowed: bool = True,
        dw_kernel: int = 5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if norm not in ("bn", "ln", "none"):
            raise ValueError(f"norm must be 'bn', 'ln' or 'none', got {norm!r}")
        self.skip = skip_allowed and in_chs == out_chs and stride == 1
        self.norm = {"bn": lambda: nn.BatchNorm2d(in_chs, eps=1e-6), "ln": lambda: LayerNorm2d(in_chs, eps=1e-6),
                     "none": nn.Identity}[norm]()
        self.expand = ConvBNAct(in_chs, mid_chs, 1, act_layer=nn.ReLU)
        self.mix = SpatialMix(mid_chs) if spatial_mix else None
        self.mix_norm = nn.LayerNorm(mid_chs) if spatial_mix else None
        self.dw = ConvBNAct(mid_chs, mid_chs, dw_kernel, stride, groups=mid_chs, act_layer=nn.SiLU)
        self.se = SEModule(mid_chs, rd_channels=mid_chs, act_layer=nn.SiLU) if se else nn.Identity()
        self.proj = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, din, H, W) -> (N, dout, H / stride, W / stride)."""
        shortcut = x
        x = self.expand(self.norm(x))
        if self.mix is not None:
            n, c, h, w = x.shape
            tokens = x.flatten(2).transpose(1, 2)
            tokens = tokens + self.drop_path(self.mix_norm(self.mix(tokens, (h, w))))
            x = tokens.transpose(1, 2).reshape(n, c, h, w)
        y = self.se(self.dw(x))
        x = self.proj(x + y if self.skip else y)
        return shortcut + self.drop_path(x) if self.skip else x


class RWKVEncoder(nn.Module):
    """RWKV-UNet encoder: stem and four stages of GLSP/LP blocks (SPEC §1).

    Args:
        cfg: architecture.
        in_chans: input channels; a 1-channel image is repeated to 3 channels.
        num_classes: classes of the ImageNet head (LN2d -> pool -> Linear); 0 builds no head.

    Shape:
        forward: (N, in_chans, H, W) -> (N, num_classes) logits, or (N, e3, H/16, W/16) without head.
    """

    def __init__(self, cfg: RWKVUNetCfg, in_chans: int = 3, num_classes: int = 0) -> None:
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.cfg = cfg
        self.repeat_gray = in_chans == 1
        stem_in = 3 if self.repeat_gray else in_chans
        self.stem = GLSPBlock(stem_in, cfg.stem_dim, stem_in, norm="none", se=True, skip_allowed=False,
                              dw_kernel=cfg.dw_kernel)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.stages = nn.ModuleList()
        self.feature_info: list[dict] = []
        in_chs = cfg.stem_dim
        for i, (depth, dim, exp) in enumerate(zip(cfg.depths, cfg.dims, cfg.expansions)):
            norm = "bn" if i < 2 else "ln"
            blocks = [GLSPBlock(in_chs, dim, int(in_chs * exp * 2), stride=2, norm=norm, skip_allowed=False,
                                dw_kernel=cfg.dw_kernel, drop_path=rates.pop(0))]
            blocks += [GLSPBlock(dim, dim, int(dim * exp), norm=norm, spatial_mix=i in cfg.mix_stages,
                                 dw_kernel=cfg.dw_kernel, drop_path=rates.pop(0)) for _ in range(depth - 1)]
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append({"num_chs": dim, "reduction": 2 ** (i + 1), "module": f"stages.{i}"})
            in_chs = dim
        self.num_classes = num_classes
        if num_classes > 0:
            self.head_norm = LayerNorm2d(in_chs, eps=1e-6)
            self.head = nn.Linear(in_chs, num_classes)
        self.apply(_init_weights)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """x: (N, in_chans, H, W) -> stage 1-4 features, (N, e_i, H / 2^(i+1), W / 2^(i+1))."""
        if self.repeat_gray:
            x = x.expand(-1, 3, -1, -1)
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_intermediates(x)[-1]
        if self.num_classes == 0:
            return x
        return self.head(self.head_norm(x).mean((2, 3)))


class CCM(nn.Module):
    """Cross-Channel Mix over the stage 1-3 skips (SPEC §3).

    Args:
        dims: channels (e0, e1, e2) of the stage 1-3 features.
        rate: hidden rate of the Channel Mix.
        drop_path: stochastic-depth rate of its residual.
    """

    def __init__(self, dims: Sequence[int], rate: int = 2, drop_path: float = 0.05) -> None:
        super().__init__()
        e0 = dims[0]
        self.dims = tuple(dims)
        # Ordered as the concatenation: stage 3, stage 2, stage 1.
        self.inp = nn.ModuleList(nn.Conv2d(d, e0, 1) for d in reversed(self.dims))
        self.mix = ChannelMix(3 * e0, rate)
        self.norm = nn.LayerNorm(3 * e0)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.out = nn.ModuleList(nn.Conv2d(e0, d, 1) for d in reversed(self.dims))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """feats: stage 1-3 maps at H/2, H/4, H/8 -> mixed maps of the same shapes."""
        size = feats[0].shape[-2:]
        ordered = list(reversed(feats))
        x = torch.cat([conv(F.interpolate(f, size=size, mode="bilinear", align_corners=False))
                       for conv, f in zip(self.inp, ordered)], dim=1)
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(self.norm(self.mix(tokens, (h, w))))
        parts = tokens.transpose(1, 2).reshape(n, c, h, w).chunk(3, dim=1)
        mixed = [F.interpolate(conv(p), size=f.shape[-2:], mode="bilinear", align_corners=False)
                 for conv, p, f in zip(self.out, parts, ordered)]
        return list(reversed(mixed))


class UpBlock(nn.Sequential):
    """Decoder block (SPEC §4): 1x1 -> depthwise kxk -> 1x1, each with BN and activation, then x2."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 9) -> None:
        super().__init__(
            ConvBNAct(in_chs, in_chs, 1, act_layer=nn.ReLU),
            ConvBNAct(in_chs, in_chs, kernel, groups=in_chs, act_layer=nn.SiLU),
            ConvBNAct(in_chs, out_chs, 1, act_layer=nn.ReLU),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        )


class RWKVUNet(nn.Module):
    """RWKV-UNet for segmentation (SPEC §1-4).

    Args:
        cfg: architecture.
        in_chans: input channels (1 is repeated to 3).
        num_classes: output classes, background included.

    Shape:
        x: (N, in_chans, H, W), H and W multiples of 16 -> (N, num_classes, H, W) logits.

    Example:
        >>> from rwkvlab import create_model
        >>> net = create_model("rwkv_unet_t", in_chans=1, num_classes=9)
        >>> net(torch.zeros(2, 1, 224, 320)).shape
        torch.Size([2, 9, 224, 320])
    """

    def __init__(self, cfg: RWKVUNetCfg, in_chans: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.encoder = RWKVEncoder(cfg, in_chans=in_chans, num_classes=0)
        e0, e1, e2, e3 = cfg.dims
        self.ccm = CCM((e0, e1, e2), rate=cfg.ccm_rate, drop_path=cfg.ccm_drop_path)
        k = cfg.decoder_kernel
        self.decoder = nn.ModuleList([UpBlock(e3, e2, k), UpBlock(2 * e2, e1, k), UpBlock(2 * e1, e0, k),
                                      UpBlock(2 * e0, cfg.stem_dim, k)])
        self.head = nn.Conv2d(cfg.stem_dim, num_classes, 1)
        self.ccm.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % 16 or w % 16:
            raise ValueError(f"RWKVUNet: input height and width must be multiples of 16, got {h}x{w}")
        s1, s2, s3, s4 = self.encoder.forward_intermediates(x)
        skips = self.ccm([s1, s2, s3])
        d = self.decoder[0](s4)
        for up, skip in zip(self.decoder[1:], reversed(skips)):
            d = up(torch.cat([d, skip], dim=1))
        return self.head(d)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _create(size: str, in_chans: int = 3, num_classes: int = 2, **overrides) -> RWKVUNet:
    return RWKVUNet(replace(SIZES[size], **overrides), in_chans=in_chans, num_classes=num_classes)


@register_model
def rwkv_unet_t(in_chans: int = 3, num_classes: int = 2, **overrides) -> RWKVUNet:
    """RWKV-UNet-T: 3.15M parameters."""
    return _create("t", in_chans, num_classes, **overrides)


@register_model
def rwkv_unet_s(in_chans: int = 3, num_classes: int = 2, **overrides) -> RWKVUNet:
    """RWKV-UNet-S: 9.70M parameters."""
    return _create("s", in_chans, num_classes, **overrides)


@register_model
def rwkv_unet_b(in_chans: int = 3, num_classes: int = 2, **overrides) -> RWKVUNet:
    """RWKV-UNet-B: 17.13M parameters."""
    return _create("b", in_chans, num_classes, **overrides)


@register_model
def rwkv_enc_t(in_chans: int = 3, num_classes: int = 1000, **overrides) -> RWKVEncoder:
    """RWKV-UNet-T encoder with ImageNet head (pretraining): 2.94M parameters without the head."""
    return RWKVEncoder(replace(SIZES["t"], **overrides), in_chans=in_chans, num_classes=num_classes)


@register_model
def rwkv_enc_s(in_chans: int = 3, num_classes: int = 1000, **overrides) -> RWKVEncoder:
    """RWKV-UNet-S encoder with ImageNet head (pretraining): 9.42M parameters without the head."""
    return RWKVEncoder(replace(SIZES["s"], **overrides), in_chans=in_chans, num_classes=num_classes)


@register_model
def rwkv_enc_b(in_chans: int = 3, num_classes: int = 1000, **overrides) -> RWKVEncoder:
    """RWKV-UNet-B encoder with ImageNet head (pretraining): 16.69M parameters without the head."""
    return RWKVEncoder(replace(SIZES["b"], **overrides), in_chans=in_chans, num_classes=num_classes)
