"""Torch datasets over the prepared cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from rwkvlab.data.cache import Prepared

if TYPE_CHECKING:  # only a type here: MONAI's import-everything __init__ costs seconds per process
    from monai import transforms as mt

__all__ = ["SegArrays", "VolumePatches", "as_float", "to_tensor"]


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Cached pixels (uint8 0-255 or float16 0-1) -> float32 in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Cached images (N, H, W, C), uint8 or float16 -> float32 (N, C, H, W) in [0, 1]."""
    return as_float(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


class SegArrays(Dataset):
    """The 2D items of one split of a prepared dataset.

    Args:
        data: a prepared dataset (:func:`rwkvlab.data.load_prepared`).
        split: a split name of its split file (``train``, ``val``, ...).
        transform: dictionary transform applied to ``{"image", "label"}``, or ``None``.

    Items:
        ``{"image": (C, H, W), "label": (1, H, W) class indices}``. Without a transform they keep the
        cache's dtypes (uint8 or float16 images, uint8 labels) so that batches stay small until they
        reach the device (convert with :func:`as_float` there); a transform gets and returns float32.
    """

    def __init__(self, data: Prepared, split: str, transform: mt.Transform | None = None) -> None:
        if split not in data.splits:
            raise KeyError(f"{data.dataset}: no split {split!r}; splits: {sorted(data.splits)}")
        self.index = data.splits[split]
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.index[i]
        item = {"image": torch.from_numpy(self.data.images[j]).permute(2, 0, 1),
                "label": torch.from_numpy(self.data.masks[j])[None]}
        if self.transform is None:
            return item
        return self.transform({"image": as_float(item["image"]), "label": item["label"].float()})


class VolumePatches(Dataset):
    """Training patches of the volumes of one split (docs §20): item ``i`` is a patch of volume
    ``i // patches_per_volume`` (in the split's order), cut by ``transform`` (:func:`rwkvlab.data.augment.patch_transforms`).

    Items:
        ``{"image": (1, D, H, W) float32, "label": (1, D, H, W) class indices (float)}`` at the patch size.
    """

    def __init__(self, data: Prepared, split: str, patches_per_volume: int, transform: mt.Transform) -> None:
        if split not in data.volume_splits:
            raise KeyError(f"{data.dataset}: no split {split!r}; splits: {sorted(data.volume_splits)}")
        if patches_per_volume < 1:
            raise ValueError(f"recipe patches_per_volume must be >= 1, got {patches_per_volume}")
        self.ids = list(data.volume_splits[split])
        if not self.ids:
            raise ValueError(f"{data.dataset}: split {split!r} has no volumes; a volumetric model trains on volumes")
        self.data, self.per_volume, self.transform = data, patches_per_volume, transform

    def __len__(self) -> int:
        return len(self.ids) * self.per_volume

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, label = self.data.volumes[self.ids[i // self.per_volume]]
        out = self.transform({"image": torch.from_numpy(np.require(image, np.float32, "W"))[None],
                              "label": torch.from_numpy(label.astype(np.float32))[None]})
        return out[0] if isinstance(out, list) else out
