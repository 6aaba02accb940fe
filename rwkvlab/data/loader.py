"""Torch datasets over the prepared cache, and the training augmentation (MONAI)."""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from monai import transforms as mt
from torch.utils.data import Dataset

__all__ = ["SegArrays", "train_transforms"]


class SegArrays(Dataset):
    """Cases of one split of a prepared 2D cache.

    Args:
        data: the arrays of :func:`rwkvlab.data.load_prepared`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: dictionary transform applied to ``{"image", "label"}``, or ``None``.

    Items:
        ``{"image": float32 (3, H, W) in [0, 1], "label": float32 (1, H, W) class indices}``.
    """

    def __init__(self, data: Mapping[str, np.ndarray], split: str, transform: mt.Transform | None = None) -> None:
        key = f"split_{split}"
        if key not in data:
            raise KeyError(f"the prepared data has no split {split!r}")
        self.index = data[key]
        self.images, self.masks, self.ids = data["images"], data["masks"], data["ids"]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.index[i]
        item = {"image": torch.from_numpy(self.images[j]).permute(2, 0, 1).float().div_(255),
                "label": torch.from_numpy(self.masks[j])[None].float()}
        return self.transform(item) if self.transform is not None else item


def train_transforms(seed: int) -> mt.Compose:
    """Random flips, rotation up to 30 degrees and brightness/contrast (after SPEC §6)."""
    keys = ("image", "label")
    compose = mt.Compose([
        mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
        mt.RandRotated(keys, range_x=math.pi / 6, prob=0.3, mode=("bilinear", "nearest"), padding_mode="zeros"),
        mt.RandScaleIntensityd("image", factors=0.2, prob=0.3),
        mt.RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=0.3),
        mt.ToTensord(keys, track_meta=False),  # plain tensors: MetaTensor bookkeeping only costs time here
    ])
    compose.set_random_state(seed)
    return compose
