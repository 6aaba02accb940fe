"""Effective receptive fields (docs §12; paper Fig. 3; the method of RepLKNet, Ding et al. CVPR 2022).

The ERF of a feature map is the input gradient of its central position, averaged over images:
where a change of the input moves the centre of the map. Models are probed through their
encoder's ``forward_intermediates`` with the stage chosen by index, so any registered model or
ablation variant can be probed without reaching into its modules.

Centred squares (area ratio): the square of odd side ``s = 2 i + 1`` covers rows
``h // 2 - i .. h // 2 + i`` and columns ``w // 2 - i .. w // 2 + i``. It is centred on the pixel
``(h // 2, w // 2)``, the convention that also picks the probed centre of the feature map (and
RepLKNet's), on even and odd grids alike. Where the square passes a border the grid cuts it (on a
non-square grid it becomes a band across the short side), and its ratio is the area it covers over
``H W``: ``s^2 / (H W)`` while it fits, 1 once it covers the grid. Unlike RepLKNet's loop, sides 1
and the whole grid are candidates, so every threshold below 1 has an answer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rwkvlab.config import Params
from rwkvlab.data._base import DataError, read_image
from rwkvlab.data.cache import resize_image
from rwkvlab.engine.cpu_memory import keep_freed_memory
from rwkvlab import paths
from rwkvlab.engine.inference import load_trained
from rwkvlab.io import atomic_write
from rwkvlab.models import create_model
from rwkvlab.progress import Progress
from rwkvlab.report.figures import new_figure, save_figure

logger = logging.getLogger(__name__)

__all__ = ["THRESHOLDS", "load_images", "erf_map", "scale_erf", "area_ratio", "erf_heatmap", "write_erf",
           "probe_model", "variant_erfs", "erf_figure", "area_ratio_table"]

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
STATES = {"init": "at init", "trained": "after training"}  # output folder -> figure row label
# RepLKNet draws seaborn.heatmap(cmap="RdYlGn", center=0) on [0, 1]: the upper half of RdYlGn,
# yellow at 0 and green at the maximum. Built directly, since seaborn's heatmap warns under this matplotlib.
_CMAP = matplotlib.colors.ListedColormap(matplotlib.colormaps["RdYlGn"](np.linspace(0.5, 1.0, 256)))
# ITU-R 601 luma, the weights of PIL's convert("L"), for models built for one channel.
_LUMA = (0.299, 0.587, 0.114)


def load_images(folder: Path, size: tuple[int, int], n: int, in_chans: int = 3) -> Tensor:
    """The first ``n`` PNG/JPEG files of ``folder`` (sorted by name), resized to ``size``.

    Args:
        folder: a folder of images (e.g. ``data/demo/images``).
        size: (H, W) probe size.
        n: how many images.
        in_chans: 3 (RGB) or 1 (luma).

    Shape:
        -> (n, in_chans, H, W) float32 in [0, 1].
    """
    folder = Path(folder)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive sides, got {tuple(size)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; expected a folder of PNG/JPEG images")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if len(files) < n:
        raise DataError(f"{folder}: {len(files)} PNG/JPEG image(s), but n = {n} were asked for")
    arrays = np.stack([resize_image(read_image(f), tuple(size)) for f in files[:n]])
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255
    if in_chans == 1:
        x = (x * torch.tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x


def _feature_encoder(model: nn.Module) -> nn.Module:
    for m in (model, getattr(model, "encoder", None)):
        if m is not None and callable(getattr(m, "forward_intermediates", None)):
            return m
    raise ValueError(f"{type(model).__name__}: expected an encoder with forward_intermediates(x), "
                     f"or a model whose .encoder has it")


@keep_freed_memory()
def erf_map(model: nn.Module, images: Tensor, stage: int = -1) -> np.ndarray:
    """The effective receptive field of an encoder stage, averaged over images (docs §12).

    Per image (batch 1, model in eval mode): sum over channels of ReLU(stage map at its centre
    ``(h // 2, w // 2)``), backpropagated to the input; ReLU of the input gradient, summed over
    colour channels. Maps that are not finite are skipped (logged).

    Args:
        model: a model with ``forward_intermediates`` (an encoder) or with an ``encoder`` that has it.
            It is left in eval mode.
        images: probe images in [0, 1].
        stage: index into the encoder's stage maps (-1: the last stage, as Fig. 3).

    Shape:
        images (N, C, H, W) -> (H, W) float64, non-negative.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point() or not len(images):
        raise ValueError(f"images must be a non-empty float tensor (N, C, H, W), got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"images must lie in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
    encoder = _feature_encoder(model)
    model.eval()
    device = next(model.parameters(), images).device
    total = np.zeros(images.shape[-2:], np.float64)
    used = 0
    for image in Progress(images, desc="erf", unit="image"):
        x = image[None].to(device).requires_grad_(True)
        with torch.enable_grad():  # also when called under no_grad, e.g. next to inference code
            feats = encoder.forward_intermediates(x)
            if not -len(feats) <= stage < len(feats):
                raise ValueError(f"stage {stage} is out of range: the encoder has {len(feats)} stage maps")
            h, w = feats[stage].shape[-2:]
            centre = F.relu(feats[stage][:, :, h // 2, w // 2]).sum()
        (grad,) = torch.autograd.grad(centre, x)
        m = F.relu(grad[0]).sum(0).double().cpu().numpy()
        if np.isfinite(m).all():
            total += m
            used += 1
    if used < len(images):
        logger.warning("erf: skipped %d of %d images whose map is not finite", len(images) - used, len(images))
    if not used:
        raise ValueError(f"erf: the map of every one of the {len(images)} images is not finite")
    return total / used


def scale_erf(erf: np.ndarray) -> np.ndarray:
    """RepLKNet's display scaling, ``log10(erf + 1) / max``.

    Shape:
        (H, W) non-negative -> (H, W) in [0, 1].
    """
    erf = np.asarray(erf, np.float64)
    if erf.ndim != 2 or not np.isfinite(erf).all() or (erf < 0).any():
        raise ValueError(f"an ERF map must be a finite, non-negative (H, W) array, got shape {erf.shape}")
    scaled = np.log10(erf + 1)
    if scaled.max() <= 0:
        raise ValueError("the ERF map is zero everywhere: nothing reaches the probed centre")
    return scaled / scaled.max()


def area_ratio(erf: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """High-contribution area ratio (docs §12): per threshold t, the area over ``H W`` of the
    smallest centred square whose share of the scaled map's total exceeds t (module docstring:
    how squares are placed and cut by the grid).

    Shape:
        erf (H, W) -> {"0.2": r, ...}, keys ``f"{t:g}"``, r in (0, 1].
    """
    bad = [t for t in thresholds if not 0 <= t < 1]
    if bad:
        raise ValueError(f"thresholds must lie in [0, 1), got {bad}")
    scaled = scale_erf(erf)
    h, w = scaled.shape
    ch, cw = h // 2, w // 2
    total = scaled.sum()
    ratios: dict[str, float] = {}
    pending = sorted(set(thresholds))
    for i in range(max(ch, h - 1 - ch, cw, w - 1 - cw) + 1):
        square = scaled[max(ch - i, 0) : ch + i + 1, max(cw - i, 0) : cw + i + 1]
        share = square.sum() / total
        while pending and share > pending[0]:
            ratios[f"{pending.pop(0):g}"] = square.size / (h * w)
        if not pending:
            break
    return {f"{t:g}": ratios[f"{t:g}"] for t in thresholds}


def _draw(ax: matplotlib.axes.Axes, erf: np.ndarray, cbar: bool) -> None:
    image = ax.imshow(scale_erf(erf), cmap=_CMAP, vmin=0, vmax=1, interpolation="nearest")
    ax.set(xticks=[], yticks=[])
    if cbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _ratio_label(erf: np.ndarray) -> str:
    return "area ratio " + " / ".join(f"{100 * r:.1f}" for r in area_ratio(erf).values()) + " %"


def erf_heatmap(erf: np.ndarray, title: str) -> matplotlib.figure.Figure:
    """Heatmap of ``log10(erf + 1) / max`` with the area ratios at 0.2/0.3/0.5/0.99 below it.

    Shape:
        erf (H, W).
    """
    fig, ax = new_figure(figsize=(4.2, 3.6))
    _draw(ax, erf, cbar=True)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(_ratio_label(erf), fontsize=8)
    fig.tight_layout()
    return fig


def write_erf(out_dir: Path, erf: np.ndarray, title: str) -> dict[str, float]:
    """Write ``erf.npy`` (the averaged map), ``erf.png`` and ``area_ratio.json`` atomically.

    Returns:
        the area ratios, ``{"0.2": r, "0.3": r, "0.5": r, "0.99": r}``.
    """
    out_dir = Path(out_dir)
    ratios = area_ratio(erf)
    atomic_write(out_dir / "erf.npy", lambda p: np.save(p, np.asarray(erf, np.float64)))
    save_figure(erf_heatmap(erf, title), out_dir / "erf.png")
    atomic_write(out_dir / "area_ratio.json", lambda p: p.write_text(json.dumps(ratios, indent=2) + "\n"))
    return ratios


def probe_model(name: str, kwargs: Mapping[str, Any] | None = None, checkpoint: Path | None = None,
                seed: int = 0, in_chans: int = 3, device: torch.device | str = "cpu") -> tuple[nn.Module, int]:
    """The model to probe: freshly initialised from ``seed``, or trained (rebuilt from ``checkpoint``).

    Args:
        name: registered model name.
        kwargs: model keyword arguments (an ablation variant's settings).
        checkpoint: a ``.pt`` file written by the training loop; its model name and the settings in
            ``kwargs`` must match the ones it was trained with.
        seed: RNG seed of the initialisation (without ``checkpoint``).
        in_chans: input channels at init; a checkpoint brings its own.
        device: where to put the model.

    Returns:
        (model in eval mode, its input channels).
    """
    kwargs = dict(kwargs or {})
    if checkpoint is None:
        torch.manual_seed(seed)
        return create_model(name, in_chans=in_chans, **kwargs).to(device).eval(), in_chans
    checkpoint = Path(checkpoint)
    if checkpoint.suffix != ".pt":
        raise ValueError(f"checkpoint must be a .pt file of the training loop, got {checkpoint}")
    model, state = load_trained(checkpoint.parent, checkpoint.stem, torch.device(device))
    if state["model_name"] != name:
        raise ValueError(f"{checkpoint}: trained as {state['model_name']!r}, but model {name!r} was asked for")
    trained = state["model_kwargs"]
    differ = {k: (trained.get(k), v) for k, v in kwargs.items() if trained.get(k) != v}
    if differ:
        raise ValueError(f"{checkpoint}: trained with other settings, (trained, asked) = {differ}")
    return model, int(trained.get("in_chans", 3))


def variant_erfs(p: Params, images: Tensor, device: torch.device | str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Paper Fig. 3 in demo form: ERFs of each ``erf.variants`` applied to ``ablate.model``, at init
    (seeded with ``erf.seed``) and after the ablation training (:func:`rwkvlab.paths.ablation_run_dir`).

    Each map is written by :func:`write_erf` to ``<reports>/erf/<variant>/{init,trained}/``.

    Shape:
        images (N, 3, H, W) in [0, 1] -> {"at init" | "after training": {variant: (H, W) map}}.
    """
    maps: dict[str, dict[str, np.ndarray]] = {label: {} for label in STATES.values()}
    bar = Progress(total=2 * len(p.erf.variants), desc="erf maps", unit="map")
    for variant in p.erf.variants:
        kwargs = p.ablate.variant(variant).kwargs
        trained = paths.ablation_run_dir(p, variant) / f"{p.erf.checkpoint}.pt"
        for state, checkpoint in (("init", None), ("trained", trained)):
            bar.update()
            model, _ = probe_model(p.ablate.base_model(variant), kwargs, checkpoint, seed=p.erf.seed, device=device)
            erf = erf_map(model, images, p.erf.stage)
            ratios = write_erf(paths.erf_dir(p) / variant / state, erf, f"{variant} · {STATES[state]}")
            logger.info("erf %s %s: area ratios %s", variant, state, ratios)
            maps[STATES[state]][variant] = erf
    bar.close()
    return maps


def erf_figure(maps: Mapping[str, Mapping[str, np.ndarray]]) -> matplotlib.figure.Figure:
    """A grid of ERF heatmaps: one row per state (e.g. at init / after training), one column per
    variant, each with its area ratios (paper Fig. 3).

    Shape:
        maps: {row: {column: (H, W)}}.
    """
    rows = list(maps)
    cols = list(dict.fromkeys(c for r in rows for c in maps[r]))
    fig, axes = new_figure(len(rows), len(cols), (2.9 * len(cols), 2.9 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            if col not in maps[row]:
                ax.axis("off")
                continue
            _draw(ax, maps[row][col], cbar=False)
            ax.set_xlabel(_ratio_label(maps[row][col]), fontsize=7)
            if i == 0:
                ax.set_title(col, fontsize=9)
            if j == 0:
                ax.set_ylabel(row, fontsize=9)
    fig.suptitle("effective receptive field, log10(ERF + 1) / max; area ratio at t = 0.2 / 0.3 / 0.5 / 0.99",
                 fontsize=9)
    fig.tight_layout()
    return fig


def area_ratio_table(maps: Mapping[str, Mapping[str, np.ndarray]],
                     thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """High-contribution area ratios in %, one row per (variant, state), as RepLKNet's table.

    Shape:
        maps: {state: {variant: (H, W)}} -> columns variant, state, ``t=<t>`` per threshold.
    """
    rows = []
    for variant in dict.fromkeys(v for by_variant in maps.values() for v in by_variant):
        for state, by_variant in maps.items():
            if variant in by_variant:
                ratios = area_ratio(by_variant[variant], thresholds)
                rows.append({"variant": variant, "state": state,
                             **{f"t={t}": round(100 * r, 2) for t, r in ratios.items()}})
    return pd.DataFrame(rows)
