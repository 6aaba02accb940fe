"""Datasets: readers of the raw layouts, validation, splits and the prepared cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from rwkvlab.data._base import (DataError, Pair, load_prepared, make_split, pair_folder, prepare_2d,
                                write_split)

__all__ = ["DataError", "DatasetSpec", "DATASETS", "Pair", "load_prepared", "make_split", "prepare_2d",
           "write_split"]


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one dataset.

    Args:
        name: registry key.
        class_names: class names, background first.
        mask_values: mask pixel value -> class index.
        pairs: raw root -> its cases (validates the layout).
        description: one line for reports.
    """

    name: str
    class_names: tuple[str, ...]
    mask_values: Mapping[int, int]
    pairs: Callable[[Path], list[Pair]]
    description: str


DATASETS: dict[str, DatasetSpec] = {
    "demo": DatasetSpec(
        name="demo",
        class_names=("background", "lesion"),
        mask_values={0: 0, 255: 1},
        pairs=lambda root: pair_folder(root, "images", "masks"),
        description="HAM10000 dermoscopy subset, 36 cases (CC BY-NC 4.0)",
    ),
}
