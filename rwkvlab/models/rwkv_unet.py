"""RWKV-UNet (Jiang et al., 2025): encoder of GLSP blocks, CCM skips and a UNet decoder.

Everything here follows docs §1-4. One implementation; the sizes T/S/B are rows of a
config table and registered as ``rwkv_unet_t|s|b`` (segmentation) and ``rwkv_enc_t|s|b``
(the encoder with its ImageNet head, for pretraining). The same blocks take a spatial rank:
``spatial_dims=3`` builds the volumetric model of docs §18, registered as ``rwkv_unet3d_t|s|b``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Sequence

import torch
from timm.layers import DropPath, trunc_normal_
from torch import Tensor, nn
from torch.nn import functional as F

from rwkvlab.models._registry import ModelCard, PaperCount, register_model
from rwkvlab.models.mixers import MIXERS, create_mixer, register_mixer
from rwkvlab.models.layers import (ChannelLayerNorm, ConvBNAct, SqueezeExcite, batch_norm_nd, conv_nd, relu_sq,
                                   sigmoid_gate, token_mix)
from rwkvlab.ops import bi_wkv, bi_wkv_release

__all__ = ["RWKVUNetCfg", "RWKVEncoder", "TimmEncoder", "RWKVUNet", "SpatialMix", "ChannelMix", "GLSPBlock",
           "CCM", "token_mixer"]


SCANS = ("raster", "axes")
WKV_MODES = ("exact", "release")


@dataclass(frozen=True)
class RWKVUNetCfg:
    """Architecture of one RWKV-UNet size (docs §1, table) and the switches of the paper's ablations (docs §10).

    Args:
        depths: blocks per stage 1-4.
        dims: output channels e0..e3 of stages 1-4.
        expansions: expansion ratio per stage.
        stem_dim: stem output channels (also the last decoder width).
        mixer: token mixer of the GLSP blocks (Table 2): ``spatial_mix`` (the paper's), ``none`` (LP blocks only),
            ``mhsa``, ``focused_linear`` or ``bi_mamba``.
        channel_mix: a Channel Mix (hidden rate 2) after the token mixer inside each GLSP block (Table 10).
        mix_stages: 0-based indices of the stages whose blocks 1.. mix tokens; (0, 1, 2, 3) is Table 9's
            "shallow attention".
        dw_kernel: depthwise kernel of the GLSP blocks.
        decoder_kernel: depthwise kernel of the decoder up-blocks (Table 8).
        skips: skip connections kept, 0-3; the deepest are dropped first (Table 11).
        ccm: mix the kept skips with CCM (Table 11); without it the raw encoder features are the skips.
        ccm_over: which encoder stages CCM mixes when fewer than three skips are kept: ``"all"`` three (the
            paper's Table 11 FLOPs imply it: 10.96G and 11.04G for one and two skips), each kept skip then
            carrying the cross-scale context of the dropped ones; ``"kept"`` only the kept skips (one skip
            then has no cross-scale fusion at all).
        ccm_rate: hidden expansion of the CCM Channel Mix (Table 12).
        ccm_width: the width CCM projects each stage to before mixing: ``"shallowest"`` (e0 for every stage, the
            paper's RWKV-UNet) or ``"own"`` (each stage keeps its channels; a candidate rule for Table 6's other
            encoders, docs §11).
        drop_path_rate: the last stage block's drop-path rate (linear from 0).
        ccm_drop_path: drop-path rate of the CCM residual.
        encoder: ``"rwkv"`` (the paper's encoder), or a timm model name whose ``features_only`` stages replace it
            (Table 6); the decoder and CCM widths follow the encoder's ``feature_info``. No weights are loaded.
        img_size: input size for timm encoders that fix it at construction (MaxViT's windows); ``None`` otherwise.
        wkv_init: initialisation of the spatial mixes' decay, first and token-shift ratios: ``"release"``
            (decay = first = 0, mu = 0.5, as the authors' release: every spatial mix is then a position-blind
            global pooling at init) or ``"vrwkv"`` (Vision-RWKV's graded scheme, local to global across channels
            and shallow to deep across blocks; docs §17).
        norm: where each mixer's LayerNorm sits: ``"post"`` (``x + LN(mix(x))``, the release) or ``"pre"``
            (``x + mix(LN(x))``, the paper's equations).
        spatial_dims: 2 for images (N, C, H, W); 3 for volumes (N, C, D, H, W), where every convolution, norm,
            squeeze-excite, Q-shift and upsampling takes that rank (docs §18).
        strides: the downsampling stride of stages 1-4, each one int for all axes or one per axis, e.g.
            ``(1, 2, 2)`` to keep the depth of thick-slice CT in stage 1 as nnU-Net plans; the decoder upsamples by
            the same factors. Images need equal strides along H and W.
        scan: token order of the Bi-WKV of the spatial mixes: ``"raster"`` (one row-major flatten, the paper's) or
            ``"axes"`` (one flatten per axis with that axis fastest, outputs averaged; docs §18).
        wkv: the Bi-WKV arithmetic: ``"exact"`` (the formula of docs §2, :func:`rwkvlab.ops.bi_wkv`) or
            ``"release"`` (the authors' CUDA kernel, :func:`rwkvlab.ops.bi_wkv_release`, through which their
            checkpoints were trained; docs §21).
    """

    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    expansions: tuple[float, float, float, float]
    stem_dim: int = 24
    mixer: str = "spatial_mix"
    channel_mix: bool = False
    mix_stages: tuple[int, ...] = (2, 3)
    dw_kernel: int = 5
    decoder_kernel: int = 9
    skips: int = 3
    ccm: bool = True
    ccm_over: str = "all"
    ccm_rate: int = 2
    ccm_width: str = "shallowest"
    drop_path_rate: float = 0.05
    ccm_drop_path: float = 0.05
    encoder: str = "rwkv"
    img_size: int | None = None
    wkv_init: str = "release"
    norm: str = "post"
    spatial_dims: int = 2
    strides: tuple[int | tuple[int, ...], ...] = (2, 2, 2, 2)
    scan: str = "raster"
    wkv: str = "exact"

    def __post_init__(self) -> None:
        if self.mixer != "none" and self.mixer not in MIXERS:
            raise ValueError(f"mixer must be none or one of {', '.join(MIXERS)}; got {self.mixer!r}")
        if not set(self.mix_stages) <= {0, 1, 2, 3}:
            raise ValueError(f"mix_stages must be stage indices 0-3; got {self.mix_stages}")
        if not 0 <= self.skips <= 3:
            raise ValueError(f"skips must be 0, 1, 2 or 3; got {self.skips}")
        if self.wkv_init not in ("release", "vrwkv"):
            raise ValueError(f"wkv_init must be 'release' or 'vrwkv'; got {self.wkv_init!r}")
        if self.norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre'; got {self.norm!r}")
        if self.ccm_width not in ("shallowest", "own"):
            raise ValueError(f"ccm_width must be 'shallowest' or 'own'; got {self.ccm_width!r}")
        if self.ccm_over not in ("all", "kept"):
            raise ValueError(f"ccm_over must be 'all' or 'kept'; got {self.ccm_over!r}")
        if not 1 <= self.ccm_rate <= 8:
            raise ValueError(f"ccm_rate must be an integer 1-8; got {self.ccm_rate}")
        for name in ("dw_kernel", "decoder_kernel"):
            k = getattr(self, name)
            if k < 1 or k % 2 == 0:
                raise ValueError(f"{name} must be an odd positive integer (same padding); got {k}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes); got {self.spatial_dims!r}")
        if self.spatial_dims == 3 and self.encoder != "rwkv":
            raise ValueError(f"spatial_dims=3 needs encoder='rwkv' (timm encoders are 2D); got {self.encoder!r}")
        if self.scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(SCANS)}; got {self.scan!r}")
        if self.wkv not in WKV_MODES:
            raise ValueError(f"wkv must be one of {', '.join(WKV_MODES)}; got {self.wkv!r}")
        if self.scan != "raster" and self.mixer != "spatial_mix":
            raise ValueError(f"scan={self.scan!r} orders the Bi-WKV of mixer='spatial_mix'; got mixer={self.mixer!r}")
        self._check_strides()
        if self.encoder != "rwkv" and self.strides != (2, 2, 2, 2):
            raise ValueError(f"strides set the RWKV encoder's stages; encoder={self.encoder!r} has its own")

    def _check_strides(self) -> None:
        axes = "(H, W)" if self.spatial_dims == 2 else "(D, H, W)"
        if len(self.strides) != 4:
            raise ValueError(f"strides must give one stride per stage, 4 in all; got {self.strides!r}")
        for s in self.strides:
            per_axis = (s,) if isinstance(s, int) else tuple(s) if isinstance(s, (tuple, list)) else ()
            if not isinstance(s, int) and len(per_axis) != self.spatial_dims:
                raise ValueError(f"strides: each stage's stride is an int or one per axis {axes}; got {s!r} in "
                                 f"{self.strides!r}")
            if not all(isinstance(v, int) and v >= 1 for v in per_axis):
                raise ValueError(f"strides must be positive integers; got {s!r} in {self.strides!r}")
            if self.spatial_dims == 2 and len(set(per_axis)) > 1:
                raise ValueError(f"strides: images take one stride for H and W (anisotropic strides are for "
                                 f"volumes, spatial_dims=3); got {s!r} in {self.strides!r}")

    def stage_strides(self) -> list[tuple[int, ...]]:
        """The stride of stages 1-4, one per spatial axis ((H, W) or (D, H, W))."""
        return [(s,) * self.spatial_dims if isinstance(s, int) else tuple(s) for s in self.strides]


def vrwkv_init(dim: int, layer: int, n_layers: int) -> dict[str, Tensor]:
    """Vision-RWKV's graded initialisation of a spatial mix (its ``init_mode="fancy"``; docs §17).

    With r01 = layer / (n_layers - 1) and r1a0 = 1 - layer / n_layers over the mixing blocks of the encoder, and
    x_i = i / C: decay_h = -5 + 8 (h / (C - 1))^(0.7 + 1.3 r01) (local to global across channels, more global with
    depth), first_i = ln 0.3 + 0.5 ((i + 1) mod 3 - 1), mu_k = x^r1a0, mu_v = x^r1a0 + 0.3 r01, mu_r = x^(r1a0 / 2).

    Returns:
        ``{"decay", "first", "mu_k", "mu_v", "mu_r"}``, each (dim,) float32.
    """
    r01 = layer / (n_layers - 1) if n_layers > 1 else 0.0
    r1a0 = 1.0 - layer / n_layers
    h = torch.arange(dim, dtype=torch.float64)
    x = h / dim
    decay = -5 + 8 * (h / max(dim - 1, 1)) ** (0.7 + 1.3 * r01)
    first = math.log(0.3) + ((h + 1) % 3 - 1) * 0.5
    values = {"decay": decay, "first": first, "mu_k": x ** r1a0, "mu_v": x ** r1a0 + 0.3 * r01,
              "mu_r": x ** (0.5 * r1a0)}
    return {k: v.float() for k, v in values.items()}


def axis_fastest(x: Tensor, grid: Sequence[int], axis: int, inverse: bool = False) -> Tensor:
    """Reorder row-major tokens so that grid axis ``axis`` varies fastest, the other axes keeping their order; with
    ``inverse``, undo that. The last axis is the row-major order itself (docs §18, ``scan="axes"``).

    Args:
        x: tokens (N, T, C), T = prod(grid); row-major over ``grid`` (or in ``axis``-fastest order if ``inverse``).
        grid: (H, W) or (D, H, W).
        axis: 0-based index into ``grid``.
        inverse: map ``axis``-fastest tokens back to row-major order.

    Shape:
        (N, T, C) -> (N, T, C).
    """
    n, _, c = x.shape
    order = [a for a in range(len(grid)) if a != axis] + [axis]
    if inverse:
        x = x.reshape(n, *(grid[a] for a in order), c)
        perm = [order.index(a) for a in range(len(grid))]
    else:
        x = x.reshape(n, *grid, c)
        perm = order
    return x.permute(0, *(a + 1 for a in perm), len(grid) + 1).reshape(n, -1, c)


@register_mixer("spatial_mix")
class SpatialMix(nn.Module):
    """Vision-RWKV spatial mix: Q-shift, token mixing by Bi-WKV, receptance gate (docs §2; volumes §18).

    Args:
        dim: channels C.
        init: ``"release"`` (decay = first = 0, mu = 0.5) or ``"vrwkv"`` (:func:`vrwkv_init`).
        layer, n_layers: this block's index among the encoder's mixing blocks and their number (``"vrwkv"``).
        scan: ``"raster"``: one Bi-WKV over the row-major tokens; ``"axes"``: one per grid axis, with that axis
            fastest (:func:`axis_fastest`), the outputs averaged before the key norm.
        wkv: ``"exact"`` (:func:`rwkvlab.ops.bi_wkv`) or ``"release"`` (:func:`rwkvlab.ops.bi_wkv_release`).
    """

    def __init__(self, dim: int, init: str = "release", layer: int = 0, n_layers: int = 1,
                 scan: str = "raster", wkv: str = "exact") -> None:
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {', '.join(SCANS)}; got {scan!r}")
        if wkv not in WKV_MODES:
            raise ValueError(f"wkv must be one of {', '.join(WKV_MODES)}; got {wkv!r}")
        self.scan = scan
        self.wkv = wkv
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
        if init == "vrwkv":
            with torch.no_grad():
                for name, value in vrwkv_init(dim, layer, n_layers).items():
                    getattr(self, name).copy_(value)
        elif init != "release":
            raise ValueError(f"init must be 'release' or 'vrwkv', got {init!r}")

    def forward(self, x: Tensor, hw: tuple[int, ...]) -> Tensor:
        """x: (N, T, C), T = H*W (or D*H*W for hw = (D, H, W)) -> (N, T, C)."""
        t = x.shape[1]
        xk, xv, xr = token_mix(x, hw, (self.mu_k, self.mu_v, self.mu_r))
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        # The authors scale both by T (docs §2 Decision); the op itself runs in float32 or wider.
        dtype = torch.promote_types(k.dtype, torch.float32)
        k, v, w, u = k.to(dtype), v.to(dtype), (self.decay / t).to(dtype), (self.first / t).to(dtype)
        op = bi_wkv if self.wkv == "exact" else bi_wkv_release
        if self.scan == "raster":
            y = op(k, v, w, u)
        else:
            y = sum(axis_fastest(op(axis_fastest(k, hw, a), axis_fastest(v, hw, a), w, u), hw, a, inverse=True)
                    for a in range(len(hw))) / len(hw)
        return self.output(sigmoid_gate(r, self.key_norm(y.to(r.dtype))))


class ChannelMix(nn.Module):
    """Vision-RWKV channel mix with squared-ReLU hidden layer (docs §2), used by CCM.

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

    def forward(self, x: Tensor, hw: tuple[int, ...]) -> Tensor:
        """x: (N, T, C), T = H*W (or D*H*W for hw = (D, H, W)) -> (N, T, C)."""
        xk, xr = token_mix(x, hw, (self.mu_k, self.mu_r))
        kv = self.value(self.key_norm(relu_sq(self.key(xk))))
        return sigmoid_gate(self.receptance(xr), kv)


def token_mixer(name: str, dim: int, spatial_dims: int = 2, **spatial_mix: Any) -> nn.Module:
    """The token mixer ``name`` of :data:`rwkvlab.models.mixers.MIXERS` over ``dim`` channels of a 2D or 3D token grid;
    ``spatial_mix``: the arguments of :class:`SpatialMix`."""
    if name == "spatial_mix":
        return SpatialMix(dim, **spatial_mix)
    # the others see tokens only, except focused linear attention's conv on v
    return create_mixer(name, dim, **({"spatial_dims": spatial_dims} if name == "focused_linear" else {}))


class GLSPBlock(nn.Module):
    """Global-local spatial perception block (docs §1); with ``mixer=None`` an LP block. Over volumes with
    ``spatial_dims=3`` (docs §18).

    Args:
        in_chs: input channels din.
        out_chs: output channels dout.
        mid_chs: expanded width dm.
        stride: stride of the depthwise convolution (2 downsamples), one for all axes or one per axis.
        norm: input normalisation: BatchNorm (stages 1-2), channel LayerNorm (stages 3-4) or none (stem).
        mixer: token mixer between expansion and depthwise conv (:data:`rwkvlab.models.mixers.MIXERS`), or ``None``.
        channel_mix: a Channel Mix residual after the token mixer (paper Table 10).
        se: squeeze-excite after the depthwise conv (stem only).
        skip_allowed: use residuals when the shape allows (din == dout and stride 1).
        dw_kernel: depthwise kernel size.
        drop_path: stochastic-depth rate of the residuals.
        mix_norm: ``"post"``: ``x + LN(mix(x))`` (the release); ``"pre"``: ``x + mix(LN(x))`` (the paper).
        spatial_mix: arguments of a :class:`SpatialMix` mixer (``init``, ``layer``, ``n_layers``, ``scan``).
        spatial_dims: 2 (images) or 3 (volumes).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        stride: int | tuple[int, ...] = 1,
        norm: Literal["bn", "ln", "none"] = "bn",
        mixer: str | None = None,
        channel_mix: bool = False,
        se: bool = False,
        skip_allowed: bool = True,
        dw_kernel: int = 5,
        drop_path: float = 0.0,
        mix_norm: Literal["post", "pre"] = "post",
        spatial_mix: dict[str, Any] | None = None,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if norm not in ("bn", "ln", "none"):
            raise ValueError(f"norm must be 'bn', 'ln' or 'none', got {norm!r}")
        mixer = None if mixer == "none" else mixer
        strided = stride != 1 if isinstance(stride, int) else any(v != 1 for v in stride)
        self.skip = skip_allowed and in_chs == out_chs and not strided
        self.norm = {"bn": lambda: batch_norm_nd(spatial_dims)(in_chs, eps=1e-6),
                     "ln": lambda: ChannelLayerNorm(in_chs, eps=1e-6), "none": nn.Identity}[norm]()
        self.expand = ConvBNAct(in_chs, mid_chs, 1, act_layer=nn.ReLU, spatial_dims=spatial_dims)
        self.mix = token_mixer(mixer, mid_chs, spatial_dims, **(spatial_mix or {})) if mixer else None
        self.pre_norm = mix_norm == "pre"
        self.mix_norm = nn.LayerNorm(mid_chs) if mixer else None
        self.cmix = ChannelMix(mid_chs) if mixer and channel_mix else None
        self.cmix_norm = nn.LayerNorm(mid_chs) if self.cmix is not None else None
        self.dw = ConvBNAct(mid_chs, mid_chs, dw_kernel, stride, groups=mid_chs, act_layer=nn.SiLU,
                            spatial_dims=spatial_dims)
        self.se = SqueezeExcite(mid_chs, nn.SiLU, spatial_dims) if se else nn.Identity()
        self.proj = conv_nd(spatial_dims)(mid_chs, out_chs, 1, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, din, H, W) -> (N, dout, H / stride, W / stride); volumes (N, din, D, H, W) likewise."""
        shortcut = x
        x = self.expand(self.norm(x))
        if self.mix is not None:
            n, c, *grid = x.shape
            grid = tuple(grid)
            tokens = x.flatten(2).transpose(1, 2)
            if self.pre_norm:
                tokens = tokens + self.drop_path(self.mix(self.mix_norm(tokens), grid))
                if self.cmix is not None:
                    tokens = tokens + self.drop_path(self.cmix(self.cmix_norm(tokens), grid))
            else:
                tokens = tokens + self.drop_path(self.mix_norm(self.mix(tokens, grid)))
                if self.cmix is not None:
                    tokens = tokens + self.drop_path(self.cmix_norm(self.cmix(tokens, grid)))
            x = tokens.transpose(1, 2).reshape(n, c, *grid)
        y = self.se(self.dw(x))
        x = self.proj(x + y if self.skip else y)
        return shortcut + self.drop_path(x) if self.skip else x


def _check_channels(x: Tensor, in_chans: int, who: str, spatial_dims: int = 2) -> None:
    if x.dim() != 2 + spatial_dims or x.shape[1] != in_chans:
        axes = "H, W" if spatial_dims == 2 else "D, H, W"
        raise ValueError(f"{who}: built for in_chans={in_chans}, got an input of shape {tuple(x.shape)}; "
                         f"expected (N, {in_chans}, {axes})")


class RWKVEncoder(nn.Module):
    """RWKV-UNet encoder: stem and four stages of GLSP/LP blocks (docs §1), over volumes for ``cfg.spatial_dims=3``
    (docs §18).

    Args:
        cfg: architecture.
        in_chans: input channels; a 1-channel image is repeated to 3 channels.
        num_classes: classes of the ImageNet head (LN2d -> pool -> Linear); 0 builds no head.

    Attributes:
        spatial_dims: 2 or 3, from ``cfg``.
        feature_info: per stage ``num_chs``, ``reduction`` (an int for images, one per axis (D, H, W) for volumes)
            and ``module``.

    Shape:
        forward: (N, in_chans, H, W) -> (N, num_classes) logits, or (N, e3, H/16, W/16) without head (default
        strides); volumes (N, in_chans, D, H, W) likewise.
    """

    def __init__(self, cfg: RWKVUNetCfg, in_chans: int = 3, num_classes: int = 0) -> None:
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.cfg = cfg
        self.in_chans = in_chans
        self.spatial_dims = rank = cfg.spatial_dims
        stem_in = 3 if in_chans == 1 else in_chans
        self.stem = GLSPBlock(stem_in, cfg.stem_dim, stem_in, norm="none", se=True, skip_allowed=False,
                              dw_kernel=cfg.dw_kernel, spatial_dims=rank)
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.feature_info: list[dict] = []
        in_chs = cfg.stem_dim
        # the mixing blocks, numbered through the encoder as Vision-RWKV numbers its layers (wkv_init "vrwkv")
        n_mixing = sum(cfg.depths[i] - 1 for i in cfg.mix_stages) if cfg.mixer != "none" else 0
        layer = 0
        reduction = (1,) * rank
        for i, (depth, dim, exp, stride) in enumerate(zip(cfg.depths, cfg.dims, cfg.expansions, cfg.stage_strides())):
            norm = "bn" if i < 2 else "ln"
            mixer = cfg.mixer if i in cfg.mix_stages else None
            blocks = [GLSPBlock(in_chs, dim, int(in_chs * exp * 2), stride=_collapse(stride), norm=norm,
                                skip_allowed=False, dw_kernel=cfg.dw_kernel, drop_path=rates.pop(0),
                                spatial_dims=rank)]
            for _ in range(depth - 1):
                spatial_mix = {"init": cfg.wkv_init, "layer": layer, "n_layers": n_mixing, "scan": cfg.scan,
                               "wkv": cfg.wkv}
                blocks.append(GLSPBlock(dim, dim, int(dim * exp), norm=norm, mixer=mixer, channel_mix=cfg.channel_mix,
                                        dw_kernel=cfg.dw_kernel, drop_path=rates.pop(0), mix_norm=cfg.norm,
                                        spatial_mix=spatial_mix, spatial_dims=rank))
                layer += mixer is not None and mixer != "none"
            self.stages.append(nn.Sequential(*blocks))
            reduction = tuple(r * s for r, s in zip(reduction, stride))
            # images keep timm's int reduction (their strides are equal along H and W)
            self.feature_info.append({"num_chs": dim, "reduction": reduction[0] if rank == 2 else reduction,
                                      "module": f"stages.{i}"})
            in_chs = dim
        self.num_classes = num_classes
        if num_classes > 0:
            self.head_norm = ChannelLayerNorm(in_chs, eps=1e-6)
            self.head = nn.Linear(in_chs, num_classes)
        self.apply(_init_weights)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """x: (N, in_chans, H, W) -> stage 1-4 features, (N, e_i, H / r_i, W / r_i) with r_i the product of the
        strides of stages 1..i (``feature_info``); volumes (N, in_chans, D, H, W) likewise, per axis."""
        _check_channels(x, self.in_chans, type(self).__name__, self.spatial_dims)
        if self.in_chans == 1:
            x = x.expand(-1, 3, *x.shape[2:])
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
        return self.head(self.head_norm(x).mean(tuple(range(2, x.dim()))))


class TimmEncoder(nn.Module):
    """A timm ``features_only`` backbone behind the encoder interface of :class:`RWKVEncoder` (paper Table 6).

    Its four deepest feature levels play stages 1-4; ``feature_info`` gives their widths and reductions. No
    pretrained weights are loaded (nothing can be downloaded); a 1-channel input is repeated to RGB.

    Args:
        name: a timm model name.
        in_chans: input channels.
        img_size: the input size, for models that fix it at construction (MaxViT).
    """

    def __init__(self, name: str, in_chans: int = 3, img_size: int | None = None) -> None:
        super().__init__()
        import timm

        if name not in timm.list_models():
            raise ValueError(f"encoder {name!r} is not a timm model; e.g. resnet50, pvt_v2_b3, convnext_small, "
                             f"maxvit_small_tf_224 (timm.list_models())")
        kwargs = {"img_size": img_size} if img_size is not None else {}
        try:
            self.body = timm.create_model(name, pretrained=False, features_only=True, **kwargs)
        except TypeError as err:
            raise ValueError(f"encoder {name!r} does not take img_size={img_size}: {err}") from err
        if len(self.body.feature_info) < 4:
            raise ValueError(f"encoder {name!r} has {len(self.body.feature_info)} feature levels; needs at least 4")
        self.in_chans = in_chans
        self.feature_info = [{k: f[k] for k in ("num_chs", "reduction", "module")}
                             for f in self.body.feature_info.get_dicts()[-4:]]
        # timm does not expose size rules. MaxViT partitions every stage into windows of img_size / 32 pixels of
        # its deepest map, so inputs must be multiples of img_size; the others need the deepest reduction.
        self.size_divisor = (img_size or 224) if name.startswith("maxvit") else self.feature_info[-1]["reduction"]

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """x: (N, in_chans, H, W) -> the four deepest feature maps (N, C_i, H / r_i, W / r_i)."""
        _check_channels(x, self.in_chans, f"encoder {type(self).__name__}")
        if self.in_chans == 1:
            x = x.expand(-1, 3, -1, -1)
        return list(self.body(x))[-4:]


class CCM(nn.Module):
    """Cross-Channel Mix over the kept skips (docs §3), of images or volumes (docs §18).

    Args:
        dims: channels of the skip features, shallowest first (stage 1, 2, 3 in the paper).
        width: channels each skip is projected to before mixing (e0, the shallowest skip's); ``None``: each keeps
            its own.
        rate: hidden rate of the Channel Mix.
        drop_path: stochastic-depth rate of its residual.
        keep: how many of the shallowest mixed maps are returned (and projected back); default all.
        spatial_dims: 2 (bilinear resampling, 1x1 convs) or 3 (trilinear, 1x1x1).
    """

    def __init__(self, dims: Sequence[int], width: int | None, rate: int = 2, drop_path: float = 0.05,
                 keep: int | None = None, spatial_dims: int = 2) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.keep = len(self.dims) if keep is None else keep
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        conv = conv_nd(spatial_dims)
        # Ordered as the concatenation: deepest first (stage 3, stage 2, stage 1).
        self.widths = [d if width is None else width for d in reversed(self.dims)]
        self.inp = nn.ModuleList(conv(d, w, 1) for d, w in zip(reversed(self.dims), self.widths))
        self.mix = ChannelMix(sum(self.widths), rate)
        self.norm = nn.LayerNorm(sum(self.widths))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        # only the kept skips are projected back: an output nothing reads would leave parameters without
        # gradients, which DDP refuses
        kept = len(self.dims) - self.keep
        self.out = nn.ModuleList(conv(w, d, 1) for d, w in zip(list(reversed(self.dims))[kept:], self.widths[kept:]))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """feats: the mixed stages' maps, shallowest first (H/2, H/4, ...; volumes (D, H, W) likewise) -> the first
        ``keep`` mixed maps, same shapes."""
        size = feats[0].shape[2:]
        ordered = list(reversed(feats))
        x = torch.cat([conv(F.interpolate(f, size=size, mode=self.mode, align_corners=False))
                       for conv, f in zip(self.inp, ordered)], dim=1)
        n, c, *grid = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.drop_path(self.norm(self.mix(tokens, tuple(grid))))
        parts = tokens.transpose(1, 2).reshape(n, c, *grid).split(self.widths, dim=1)
        kept = len(self.dims) - self.keep  # parts are deepest first; the kept skips are the shallowest
        mixed = [F.interpolate(conv(p), size=f.shape[2:], mode=self.mode, align_corners=False)
                 for conv, p, f in zip(self.out, parts[kept:], ordered[kept:])]
        return list(reversed(mixed))


class UpBlock(nn.Sequential):
    """Decoder block (docs §4): 1x1 -> depthwise kxk -> 1x1, each with BN and activation, then upsampling; kxkxk
    and trilinear for volumes (docs §18).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel: depthwise kernel size (odd).
        scale: upsampling factor, one for all axes or one per axis (the stride of the matching encoder stage).
        spatial_dims: 2 or 3.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 9, scale: int | tuple[int, ...] = 2,
                 spatial_dims: int = 2) -> None:
        super().__init__(
            ConvBNAct(in_chs, in_chs, 1, act_layer=nn.ReLU, spatial_dims=spatial_dims),
            ConvBNAct(in_chs, in_chs, kernel, groups=in_chs, act_layer=nn.SiLU, spatial_dims=spatial_dims),
            ConvBNAct(in_chs, out_chs, 1, act_layer=nn.ReLU, spatial_dims=spatial_dims),
            nn.Upsample(scale_factor=scale, mode="bilinear" if spatial_dims == 2 else "trilinear", align_corners=False),
        )


class RWKVUNet(nn.Module):
    """RWKV-UNet for segmentation (docs §1-4), with the switches of the paper's ablations (docs §10); volumetric for
    ``cfg.spatial_dims=3`` (docs §18).

    Args:
        cfg: architecture.
        in_chans: input channels (1 is repeated to 3).
        num_classes: output classes, background included.

    Attributes:
        spatial_dims: 2 (images) or 3 (volumes).
        size_divisor: the input-size rule. Images: an int, 16 for the RWKV encoder with its default strides (the
            product of the stage strides), the encoder's own for timm encoders. Volumes: one int per axis (D, H, W),
            the product of the stage strides along it, e.g. (8, 16, 16) for strides ((1, 2, 2), 2, 2, 2).

    Shape:
        x: (N, in_chans, H, W), H and W multiples of :attr:`size_divisor` -> (N, num_classes, H, W) logits;
        volumes (N, in_chans, D, H, W), each axis a multiple of its divisor -> (N, num_classes, D, H, W).

    Raises:
        ValueError: in ``forward``, for an input of the wrong rank, channels or size.

    Example:
        >>> from rwkvlab import create_model
        >>> net = create_model("rwkv_unet_t", in_chans=1, num_classes=9)
        >>> net(torch.zeros(2, 1, 224, 320)).shape
        torch.Size([2, 9, 224, 320])
        >>> net = create_model("rwkv_unet3d_t", in_chans=1, num_classes=5, strides=[[1, 2, 2], 2, 2, 2])
        >>> net.size_divisor, net(torch.zeros(1, 1, 8, 32, 48)).shape
        ((8, 16, 16), torch.Size([1, 5, 8, 32, 48]))
    """

    def __init__(self, cfg: RWKVUNetCfg, in_chans: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.spatial_dims = rank = cfg.spatial_dims
        if cfg.encoder == "rwkv":
            self.encoder: nn.Module = RWKVEncoder(cfg, in_chans=in_chans, num_classes=0)
        else:
            self.encoder = TimmEncoder(cfg.encoder, in_chans=in_chans, img_size=cfg.img_size)
        dims = [f["num_chs"] for f in self.encoder.feature_info]
        reductions = [f["reduction"] for f in self.encoder.feature_info]
        self.size_divisor: int | tuple[int, ...] = (self.encoder.size_divisor if cfg.encoder != "rwkv"
                                                    else reductions[3])
        skip_dims = dims[: cfg.skips]
        mixed_dims = dims[:3] if cfg.ccm_over == "all" else skip_dims
        width = dims[0] if cfg.ccm_width == "shallowest" else None
        self.ccm = (CCM(mixed_dims, width, cfg.ccm_rate, cfg.ccm_drop_path, keep=cfg.skips, spatial_dims=rank)
                    if cfg.ccm and skip_dims else None)
        # Up-block i takes the deeper decoder output (plus skip i when kept) up to stage i's resolution; the last
        # one undoes stage 1's stride, which for timm encoders (starting at 1/4) is 2 and a final step follows.
        k = cfg.decoder_kernel
        outs = [cfg.stem_dim, *dims[:3]]
        ins = [dims[3]] + [outs[i + 1] + (dims[i] if i < cfg.skips else 0) for i in (2, 1, 0)]
        first = reductions[0] if cfg.encoder == "rwkv" else 2
        scales = [_ratio(reductions[3], reductions[2]), _ratio(reductions[2], reductions[1]),
                  _ratio(reductions[1], reductions[0]), first]
        self.decoder = nn.ModuleList(UpBlock(i, o, k, s, rank) for i, o, s in zip(ins, outs[::-1], scales))
        self.final_scale = 1 if cfg.encoder == "rwkv" else reductions[0] // 2
        self.head = conv_nd(rank)(cfg.stem_dim, num_classes, 1)
        # CCM and decoder keep PyTorch's default initialisation, as the release does (it initialises its encoder
        # only): the CCM's key and receptance then start at std about 0.06 rather than 0.02.

    def _check_size(self, x: Tensor) -> None:
        divisors = (self.size_divisor,) * 2 if isinstance(self.size_divisor, int) else self.size_divisor
        sizes = tuple(x.shape[2:])
        # a wrong rank or channel count is the encoder's error
        if len(sizes) == len(divisors) and any(n % d for n, d in zip(sizes, divisors)):
            names = "height and width" if len(sizes) == 2 else "depth, height and width"
            raise ValueError(f"{type(self).__name__} ({self.cfg.encoder} encoder): input {names} must be "
                             f"multiples of {self.size_divisor}, got {'x'.join(map(str, sizes))}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_size(x)
        feats = self.encoder.forward_intermediates(x)
        skips = feats[: self.cfg.skips]
        if self.ccm is not None:
            skips = self.ccm(feats[: len(self.ccm.dims)])
        d = self.decoder[0](feats[3])
        for i, up in zip((2, 1, 0), self.decoder[1:]):
            d = up(torch.cat([d, skips[i]], dim=1) if i < len(skips) else d)
        if self.final_scale > 1:
            d = F.interpolate(d, scale_factor=self.final_scale, mode="bilinear", align_corners=False)
        return self.head(d)


def _ratio(deep: int | tuple[int, ...], shallow: int | tuple[int, ...]) -> int | tuple[int, ...]:
    """The upsampling factor between two reductions (ints for images, per-axis tuples for volumes)."""
    if isinstance(deep, int):
        return deep // shallow
    return tuple(a // b for a, b in zip(deep, shallow))


def _collapse(stride: tuple[int, ...]) -> int | tuple[int, ...]:
    """One int for a stride equal along every axis, as the convolutions take it; else the tuple."""
    return stride[0] if len(set(stride)) == 1 else stride


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        # Mamba's step-size projection keeps its own initialisation (marked by rwkvlab.models.mixers).
        if not getattr(m.weight, "_no_reinit", False):
            trunc_normal_(m.weight, std=0.02)
        if m.bias is not None and not getattr(m.bias, "_no_reinit", False):
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.BatchNorm3d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


SIZES: dict[str, RWKVUNetCfg] = {
    "t": RWKVUNetCfg(depths=(2, 2, 4, 2), dims=(32, 48, 96, 160), expansions=(2.0, 2.5, 3.0, 3.5)),
    "s": RWKVUNetCfg(depths=(3, 3, 6, 3), dims=(32, 64, 128, 192), expansions=(2.0, 2.5, 3.0, 4.0)),
    "b": RWKVUNetCfg(depths=(3, 3, 6, 3), dims=(48, 72, 144, 240), expansions=(2.0, 2.5, 4.0, 4.0)),
}


def _cfg(size: str, overrides: dict) -> RWKVUNetCfg:
    """The size's config with ``overrides`` (ablation switches); unknown names are an error naming them."""
    known = {f.name for f in fields(RWKVUNetCfg)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model keyword argument(s) {unknown}; allowed: in_chans, num_classes, "
                         f"{', '.join(sorted(known))}")
    return replace(SIZES[size], **{k: _tuples(v) for k, v in overrides.items()})


def _tuples(value: Any) -> Any:
    """Lists (from YAML or JSON, e.g. ``strides: [[1, 2, 2], 2, 2, 2]``) as tuples, nested ones too."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _create(size: str, in_chans: int = 3, num_classes: int = 2, **overrides) -> RWKVUNet:
    return RWKVUNet(_cfg(size, overrides), in_chans=in_chans, num_classes=num_classes)


def _create3d(size: str, in_chans: int, num_classes: int, **overrides) -> RWKVUNet:
    if overrides.setdefault("spatial_dims", 3) != 3:
        raise ValueError(f"rwkv_unet3d_{size} is volumetric (spatial_dims=3); got spatial_dims="
                         f"{overrides['spatial_dims']!r}, use rwkv_unet_{size} for images")
    return _create(size, in_chans, num_classes, **overrides)


def _paper_rows(label: str) -> dict[str, str]:
    """The paper's rows of one RWKV-UNet size: its name in the binary table, "<name> (ours)" in Tables 3-5."""
    return {"binary": label, **{table: f"{label} (ours)" for table in ("table3", "table4", "table5")}}


def _card(size: str, label: str, *counts: PaperCount) -> ModelCard:
    return ModelCard(label, f"rwkvlab RWKV-UNet-{size.upper()}", paper_rows=_paper_rows(label), paper_counts=counts,
                     pretrain_encoder=f"rwkv_enc_{size}")


def _encoder_card(size: str, flops_g: float) -> ModelCard:
    return ModelCard(f"RWKV-UNet-{size.upper()} encoder", f"rwkvlab RWKV-UNet-{size.upper()} encoder + ImageNet head",
                     task="classification", paper_counts=(PaperCount(224, 0, flops_g),))


def _card3d(size: str) -> ModelCard:
    return ModelCard(f"RWKV-UNet-3D-{size.upper()}", f"rwkvlab RWKV-UNet-{size.upper()} over volumes (docs §18)",
                     spatial_dims=3, size_divisor=(16, 16, 16))


@register_model(_card("t", "RWKV-UNet-T", PaperCount(256, 1, 3.70)))
def rwkv_unet_t(in_chans: int = 3, num_classes: int = 2, **overrides) -> RWKVUNet:
    """RWKV-UNet-T: 3.15M parameters."""
    return _create("t", in_chans, num_classes, **overrides)


@register_model(_card("s", "RWKV-UNet-S", PaperCount(256, 1, 7.64)))
def rwkv_unet_s(in_chans: int = 3, num_classes: int = 2, **overrides) -> RWKVUNet:
    """RWKV-UNet-S: 9.70M parameters."""
    return _create("s", in_chans, num_classes, **overrides)


@register_model(_card("b", "RWKV-UNet", PaperCount(256, 1, 14.50), PaperCount(224, 9, 11.11)))
def rwkv_unet_b(in_chans: int = 3, num_classes: int = 2, **overrides) -> RWKVUNet:
    """RWKV-UNet-B: 17.13M parameters."""
    return _create("b", in_chans, num_classes, **overrides)


@register_model(_encoder_card("t", 1.83))
def rwkv_enc_t(in_chans: int = 3, num_classes: int = 1000, **overrides) -> RWKVEncoder:
    """RWKV-UNet-T encoder with ImageNet head (pretraining): 2.94M parameters without the head."""
    return RWKVEncoder(_cfg("t", overrides), in_chans=in_chans, num_classes=num_classes)


@register_model(_encoder_card("s", 4.73))
def rwkv_enc_s(in_chans: int = 3, num_classes: int = 1000, **overrides) -> RWKVEncoder:
    """RWKV-UNet-S encoder with ImageNet head (pretraining): 9.42M parameters without the head."""
    return RWKVEncoder(_cfg("s", overrides), in_chans=in_chans, num_classes=num_classes)


@register_model(_encoder_card("b", 8.96))
def rwkv_enc_b(in_chans: int = 3, num_classes: int = 1000, **overrides) -> RWKVEncoder:
    """RWKV-UNet-B encoder with ImageNet head (pretraining): 16.69M parameters without the head."""
    return RWKVEncoder(_cfg("b", overrides), in_chans=in_chans, num_classes=num_classes)


@register_model(_card3d("t"))
def rwkv_unet3d_t(in_chans: int = 1, num_classes: int = 2, **overrides) -> RWKVUNet:
    """Volumetric RWKV-UNet-T (docs §18): the widths and depths of RWKV-UNet-T, ``spatial_dims=3``; 3.76M
    parameters."""
    return _create3d("t", in_chans, num_classes, **overrides)


@register_model(_card3d("s"))
def rwkv_unet3d_s(in_chans: int = 1, num_classes: int = 2, **overrides) -> RWKVUNet:
    """Volumetric RWKV-UNet-S (docs §18): the widths and depths of RWKV-UNet-S, ``spatial_dims=3``; 10.67M
    parameters."""
    return _create3d("s", in_chans, num_classes, **overrides)


@register_model(_card3d("b"))
def rwkv_unet3d_b(in_chans: int = 1, num_classes: int = 2, **overrides) -> RWKVUNet:
    """Volumetric RWKV-UNet-B (docs §18): the widths and depths of RWKV-UNet-B, ``spatial_dims=3``; 18.37M
    parameters."""
    return _create3d("b", in_chans, num_classes, **overrides)
