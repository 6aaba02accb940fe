"""Parameters and multiply-accumulates (MACs) of every model and ablation variant, counted as the paper counts.

The paper's "FLOPs" are MACs counted thop-style (docs §5, §11). :func:`count_macs` runs one forward pass with
module hooks and a function mode and books every operation under a kind:

* ``conv``, ``linear``: weights x output positions (biases not counted), as thop, for convolutions of any rank;
  transposed convolutions too are counted at their output positions (thop's rule: 2^d x their true MACs when kernel
  = stride = 2 in d dimensions);
* ``norm``: BatchNorm (1D/2D/3D) / GroupNorm of exact torch types, 4 ops per element (thop: 2, doubled for the
  affine); instance norms count 0, as the paper's counts never include them;
  subclasses (timm's ``LayerNorm2d``) count 0, as thop hooks exact types only;
* ``layernorm``: ``nn.LayerNorm`` (the token norms), booked at 4 per element but not part of the paper's
  figure: counted, RWKV-UNet-T at 256 comes out 1.1% over its published 3.70G; left out, every row the paper
  prints a figure for that this architecture can reproduce is within 0.5% (measured over all the rows of
  ``params.yaml``'s variants);
* ``upsample``: ``nn.Upsample`` (bilinear) at 11 ops per output element, as thop; trilinear at 31 (thop's formula,
  13 x 2 + 5, which its own hook skips); ``F.interpolate`` called functionally is invisible to thop and counts 0, and
  so do nearest upsampling and pooling of any rank;
* ``attention``: softmax-attention products outside Linear layers (``torch.matmul``, ``@``, ``bmm``,
  ``scaled_dot_product_attention``, or what a token mixer declares in ``extra_macs``), in MACs;
* reported apart, since the paper counts none of them: ``wkv`` (the Bi-WKV recurrence: 6 per element of ``k``,
  (N, T, C), at every call of the op, so a block that scans a volume along several orders books each scan), ``scan`` (Bi-Mamba's
  selective scans), ``ssm_proj`` (the x/dt projections feeding them) and ``linear_attention`` (FLA's products).

``macs_g`` is ``conv + linear + norm + upsample`` (not ``layernorm``) plus the softmax-attention products at 2 per MAC, which is how
the paper's MHSA row adds up (docs §10: +7.44G); ``wkv_macs_g`` sums the kinds reported apart. The hand-written counter exists because
no counter on PyPI counts custom ops, functional interpolation and exact-type norms the way the paper's thop did
(docs §11). ``python -m rwkvlab.complexity`` (:mod:`rwkvlab.complexity.__main__`) prints the table of every model and
variant against the paper (the variants' rows: :func:`rwkvlab.report.ablations.variant_rows`), or with ``--model``
counts registered models at any 2D or 3D size (``--size 32 64 64`` for a D x H x W volume).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from rwkvlab.models import create_model, model_cards
from rwkvlab.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["Complexity", "Row", "paper_rows", "count_macs", "model_complexity", "trained_complexity", "model_rows",
           "complexity_table", "checkpoint_table"]

NORM_OPS = 4  # thop: 2 per element, doubled for an affine norm
BILINEAR_OPS = 11  # thop's count per output element of a bilinear nn.Upsample
# The kinds that make up the paper's FLOPs, and the kinds reported apart (docs §10-11, module docstring).
COUNTED = ("conv", "linear", "norm", "upsample")
APART = ("wkv", "scan", "ssm_proj", "linear_attention")
TRILINEAR_OPS = 31  # thop's formula for trilinear (two bilinear + one linear); its hook itself counts 0
_UPSAMPLE_OPS = {"bilinear": BILINEAR_OPS, "trilinear": TRILINEAR_OPS}
_EXACT_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
_MATMULS = {torch.matmul, torch.bmm, Tensor.matmul, Tensor.__matmul__, Tensor.bmm}


@dataclass
class Complexity:
    """Parameters and MACs of one forward pass, by kind (see the module docstring)."""

    params: int
    macs: dict[str, float] = field(default_factory=dict)

    @property
    def macs_g(self) -> float:
        """The paper's FLOPs in G: conv + linear + norm (BatchNorm) + upsample, plus softmax-attention products at 2
        per MAC."""
        return (sum(self.macs.get(k, 0.0) for k in COUNTED) + 2 * self.macs.get("attention", 0.0)) / 1e9

    @property
    def wkv_macs_g(self) -> float:
        """What the paper does not count, in G: the Bi-WKV recurrence, selective scans and their projections,
        and linear-attention products."""
        return sum(self.macs.get(k, 0.0) for k in APART) / 1e9


class _Counter(TorchFunctionMode):
    """Books every operation of one forward pass by kind: module hooks for layers, this function mode for the
    matrix products outside them (attention written with ``@`` or ``scaled_dot_product_attention``)."""

    def __init__(self) -> None:
        from rwkvlab.ops._op import WKV_MACS_PER_ELEMENT

        super().__init__()
        self.wkv_ops = {torch.ops.rwkvlab.wkv_forward, torch.ops.rwkvlab.wkv_forward.default}
        self.wkv_macs_per_element = WKV_MACS_PER_ELEMENT
        self.macs: dict[str, float] = defaultdict(float)
        self.opaque = 0  # > 0 inside a module whose products are booked by a hook (Linear, declared mixers)
        self.ssm = 0  # > 0 inside a selective-scan direction: its projections are booked apart

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.opaque:
            return out
        if func in self.wkv_ops:
            # Bi-WKV: two recurrences (one each way) and their combination, a few multiply-adds per element of k.
            self.macs["wkv"] += self.wkv_macs_per_element * args[0].numel()
        elif func in _MATMULS and isinstance(out, Tensor):
            self.macs["attention"] += out.numel() * args[0].shape[-1]
        elif func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            self.macs["attention"] += 2 * q.numel() * k.shape[-2]  # q k^T and attn v
        return out

    def enter(self, _module: nn.Module, _inputs: tuple) -> None:
        self.opaque += 1

    def leave(self, _module: nn.Module, _inputs: tuple, _output: Any) -> None:
        self.opaque -= 1

    def book(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        x = inputs[0] if inputs else None
        if isinstance(module, nn.modules.conv._ConvNd):
            kernel = math.prod(module.weight.shape[2:])
            self.macs["conv"] += output.numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear):
            self.macs["ssm_proj" if self.ssm else "linear"] += output.numel() * module.in_features
        elif type(module) is nn.LayerNorm:
            self.macs["layernorm"] += NORM_OPS * x.numel()
        elif type(module) in _EXACT_NORMS:
            self.macs["norm"] += NORM_OPS * x.numel()
        elif isinstance(module, nn.Upsample) and module.mode in _UPSAMPLE_OPS:
            self.macs["upsample"] += _UPSAMPLE_OPS[module.mode] * output.numel()
        extra = getattr(module, "extra_macs", None)
        if callable(extra) and isinstance(x, Tensor):
            for kind, value in extra(x.shape[0], inputs[1] if len(inputs) > 1 else None).items():
                self.macs[kind] += value


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> Complexity:
    """Parameters and MACs of ``model`` on one input of ``input_shape``, counted in eval mode.

    The forward pass runs on the ``meta`` device (shapes only), so counting a 512x512 model or a 128^3 volume takes
    no memory.

    Shape:
        input_shape: (N, C, H, W) for an image model, (N, C, D, H, W) for a volume model; MACs scale with N (the
        paper counts N = 1).
    """
    from rwkvlab.models.mixers import SelectiveSSM

    counter = _Counter()
    params = sum(p.numel() for p in model.parameters())
    tensors = [*model.parameters(), *model.buffers()]
    # shapes only; the caller's weights stay (a model built on meta has none: no copy, its hooks removed after)
    on_meta = bool(tensors) and all(t.is_meta for t in tensors)
    meta = model if on_meta else copy.deepcopy(model).to("meta")
    training = meta.training
    meta.eval()
    hooks = []
    for module in meta.modules():
        hooks.append(module.register_forward_hook(counter.book))
        if isinstance(module, nn.Linear) or callable(getattr(module, "extra_macs", None)):
            hooks += [module.register_forward_pre_hook(counter.enter), module.register_forward_hook(counter.leave)]
        if isinstance(module, SelectiveSSM):
            # The paper's Bi-Mamba row matches only without x_proj and dt_proj (measured: -0.6% vs +8.0% with
            # them): its counter did not see the projections that feed the scan.
            hooks += [module.register_forward_pre_hook(lambda *_: setattr(counter, "ssm", counter.ssm + 1)),
                      module.register_forward_hook(lambda *_: setattr(counter, "ssm", counter.ssm - 1))]
    try:
        with torch.no_grad(), counter:
            meta(torch.zeros(*input_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
        meta.train(training)
    return Complexity(params=params, macs=dict(counter.macs))


def trained_complexity(checkpoint: Path | str) -> Complexity:
    """:func:`count_macs` of the model a training checkpoint holds (its name and kwargs), at its training size."""
    from rwkvlab.models import read_checkpoint

    state = read_checkpoint(checkpoint)
    if not isinstance(state, dict) or not {"model_name", "model_kwargs", "meta"} <= set(state):
        raise ValueError(f"{checkpoint}: not an rwkvlab checkpoint of a segmentation model (model_name, "
                         f"model_kwargs, meta)")
    kwargs = dict(state["model_kwargs"])
    return model_complexity(state["model_name"], tuple(state["meta"]["image_size"]), kwargs.pop("num_classes"),
                            kwargs.pop("in_chans"), **kwargs)


def model_complexity(name: str, size: int | Sequence[int], num_classes: int, in_chans: int = 3,
                     **kwargs: Any) -> Complexity:
    """:func:`count_macs` of a registered model built with ``kwargs``, at one image or volume of ``size``.

    Args:
        size: an ``int`` for a square image or a cube (as many sides as the model's ``spatial_dims``, 2 unless it
            declares 3), or the sizes themselves: (H, W) or (D, H, W).

    Raises:
        ValueError: ``size`` has a number of sides the model does not take.
    """
    with torch.device("meta"):  # shapes only: building a large variant costs no memory or init time
        model = create_model(name, in_chans=in_chans, num_classes=num_classes, **kwargs)
    dims = getattr(model, "spatial_dims", 2)
    sides = (size,) * dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sides) != dims:
        raise ValueError(f"{name} takes {dims}D inputs (spatial_dims={dims}); got size {sides}")
    return count_macs(model, (1, in_chans, *sides))


@dataclass(frozen=True)
class Row:
    """One row of the complexity table: what to build and the paper's figure for it."""

    variant: str
    model: str
    kwargs: dict[str, Any]
    size: int | tuple[int, ...]
    num_classes: int
    paper_flops_g: float | None


def paper_rows() -> list[Row]:
    """Every registered model at each setting its card says the paper counts it at (the binary table: 256, 1 class;
    the Synapse tables: 224, 9 classes; Table 1: the encoders alone at 224), with the paper's figure."""
    rows = []
    for name, card in model_cards().items():
        for i, count in enumerate(card.paper_counts):
            label = name if i == 0 else f"{name}@{count.size}x{count.num_classes}"
            rows.append(Row(label, name, {}, count.size, count.num_classes, count.flops_g))
    return rows


def model_rows(models: Iterable[str], size: Sequence[int], num_classes: int = 2,
               in_chans: int | None = None) -> list[Row]:
    """Rows that count registered models at one size (``python -m rwkvlab.complexity --model``), labelled
    ``name@DxHxW`` (or ``name@HxW``), without a paper figure.

    Args:
        size: one side (a square image or a cube, by the model's ``spatial_dims``), (H, W) or (D, H, W).
        in_chans: input channels; ``None`` for 1 with a 3D model, 3 with a 2D one.

    Raises:
        ValueError: an unknown model, or a size whose number of sides the model does not take.
    """
    rows = []
    for name in models:
        with torch.device("meta"):
            dims = getattr(create_model(name, num_classes=max(num_classes, 1)), "spatial_dims", 2)
        sides = tuple(size) * dims if len(size) == 1 else tuple(size)
        if len(sides) != dims:
            raise ValueError(f"{name} takes {dims}D inputs (spatial_dims={dims}); got --size {' '.join(map(str, size))}")
        chans = in_chans if in_chans is not None else (1 if dims == 3 else 3)
        rows.append(Row(f"{name}@{'x'.join(map(str, sides))}", name, {"in_chans": chans}, sides, num_classes, None))
    return rows


def complexity_table(rows: Sequence[Row], progress: bool = True) -> pd.DataFrame:
    """Parameters (M), MACs (G, the paper's convention), the WKV/scan MACs apart, the paper's figure and the
    relative difference, one row per model or variant.

    Columns: ``variant, params_m, macs_g, wkv_macs_g, paper_flops_g, rel_diff`` (``paper_flops_g`` and
    ``rel_diff`` empty where the paper prints no figure).
    """
    out = []
    for row in Progress(rows, desc="complexity", unit="model", disable=not progress):
        c = model_complexity(row.model, row.size, row.num_classes, **row.kwargs)
        rel = (c.macs_g / row.paper_flops_g - 1) if row.paper_flops_g else None
        out.append({"variant": row.variant, "params_m": round(c.params / 1e6, 3), "macs_g": round(c.macs_g, 3),
                    "wkv_macs_g": round(c.wkv_macs_g, 4), "paper_flops_g": row.paper_flops_g,
                    "rel_diff": None if rel is None else round(rel, 4)})
    return pd.DataFrame(out, columns=["variant", "params_m", "macs_g", "wkv_macs_g", "paper_flops_g", "rel_diff"])


def checkpoint_table(checkpoints: Sequence[Path]) -> pd.DataFrame:
    """Parameters and MACs of each checkpoint's model at its training size (:func:`trained_complexity`)."""
    from rwkvlab.models import read_checkpoint

    out = []
    for path in checkpoints:
        c, state = trained_complexity(path), read_checkpoint(path)
        out.append({"checkpoint": str(path), "model": state["model_name"],
                    "size": "x".join(map(str, state["meta"]["image_size"])), "params_m": round(c.params / 1e6, 3),
                    "macs_g": round(c.macs_g, 3), "wkv_macs_g": round(c.wkv_macs_g, 4)})
    return pd.DataFrame(out)
