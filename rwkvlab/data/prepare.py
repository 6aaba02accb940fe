"""The prepare stage: validate a raw dataset, cache it at the training size, write its splits and card."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from rwkvlab.data import DATASETS
from rwkvlab.io import atomic_write
from rwkvlab.data._base import DataError, make_split, prepare_2d, write_split
from rwkvlab.report.figures import dataset_montage, save_figure

logger = logging.getLogger(__name__)

__all__ = ["prepare_dataset", "dataset_card", "write_card"]


def prepare_dataset(name: str, raw_root: Path, image_size: tuple[int, int], fractions: Mapping[str, float],
                    seeds: Sequence[int], cache_dir: Path, splits_dir: Path) -> Path:
    """Validate ``raw_root``, write ``cache_dir/<name>.npz`` and ``splits_dir/<name>/seed<k>.json``.

    Raises:
        DataError: naming the first file or folder that is not as the dataset's layout expects.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    h, w = image_size
    if h % 16 or w % 16:
        raise ValueError(f"prepare.image_size must be multiples of 16 (RWKV-UNet), got {h}x{w}")
    spec = DATASETS[name]
    pairs = spec.pairs(Path(raw_root))
    cache = prepare_2d(pairs, spec.mask_values, image_size, Path(cache_dir) / f"{name}.npz", spec.class_names)
    ids = [p.case_id for p in pairs]
    for seed in seeds:
        write_split(make_split(ids, fractions, seed), Path(splits_dir) / name / f"seed{seed}.json")
    logger.info("prepared %s: %d cases at %dx%d -> %s", name, len(ids), h, w, cache)
    return cache


def dataset_card(data: Mapping[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Counts per split and class pixel frequencies of a prepared dataset (with a split loaded)."""
    splits = [k.removeprefix("split_") for k in data if k.startswith("split_")]
    n, h, w = data["masks"].shape
    counts = pd.DataFrame([{"split": s, "cases": len(data[f"split_{s}"])} for s in splits]
                          + [{"split": "all", "cases": n}])
    pixels = np.bincount(data["masks"].ravel(), minlength=len(data["class_names"]))
    freq = pd.DataFrame({"class": data["class_names"], "pixel_fraction": np.round(pixels / pixels.sum(), 4),
                         "cases_present": [(data["masks"] == c).any(axis=(1, 2)).sum()
                                           for c in range(len(data["class_names"]))]})
    return counts, freq


def write_card(name: str, description: str, data: Mapping[str, np.ndarray], out_dir: Path,
               montage: int) -> plt.Figure:
    """Write ``out_dir/card.md`` and ``out_dir/montage.png`` for one prepared dataset; returns the montage."""
    counts, freq = dataset_card(data)
    n, h, w = data["masks"].shape
    md = (f"# Dataset card: {name}\n\n{description}\n\nPrepared size: {h}x{w} (HxW), {n} cases.\n\n"
          f"## Cases per split\n\n{counts.to_markdown(index=False)}\n\n"
          f"## Class pixel frequencies\n\n{freq.to_markdown(index=False)}\n\n![montage](montage.png)\n")
    atomic_write(Path(out_dir) / "card.md", lambda p: p.write_text(md))
    k = min(montage, n)
    fig = dataset_montage(data["images"][:k], data["masks"][:k], data["ids"][:k].tolist(), len(data["class_names"]))
    save_figure(fig, Path(out_dir) / "montage.png")
    return fig
