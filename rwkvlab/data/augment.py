"""Training augmentation with MONAI dictionary transforms (docs §6).

Recipes (``train.recipes.<dataset>.augment`` in ``params.yaml``):

* ``none``: no augmentation.
* ``light``: flips, rotation up to 30 degrees (p 0.3), brightness/contrast (p 0.3); keeps any
  aspect ratio (the 2D binary sets and the demo).
* ``acdc``: the authors' ACDC/Synapse recipe: random rot90 + flip (p 0.5), rotation +-30 degrees
  (p 0.3), brightness/contrast (p 0.3), random crop of 0.8-1.2 of the side (p 0.3), then resize
  back to the training size with nearest neighbour for image and label, as the authors do.

:class:`TwoViews` makes the two views of an unlabelled image that FUGC's consistency loss compares,
with geometry (rot90, flip) that :func:`invert_view` undoes exactly on the predictions;
:func:`batch_consistency_loss` is :func:`consistency_loss` over a batch, each image with its own views.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.data import get_track_meta, set_track_meta

__all__ = ["train_transforms", "TwoViews", "invert_view", "consistency_loss", "batch_consistency_loss"]

Recipe = Literal["none", "light", "acdc"]
KEYS = ("image", "label")


def _intensity() -> list[mt.Transform]:
    return [mt.RandScaleIntensityd("image", factors=0.2, prob=0.3),
            mt.RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=0.3)]


def train_transforms(recipe: Recipe, size: tuple[int, int], seed: int) -> mt.Compose | None:
    """The augmentation of ``recipe`` for items of spatial ``size`` (H, W); ``None`` for ``none``."""
    rotate = mt.RandRotated(KEYS, range_x=math.pi / 6, prob=0.3, mode=("bilinear", "nearest"), padding_mode="zeros")
    if recipe == "none":
        return None
    if recipe == "light":
        steps = [mt.RandFlipd(KEYS, prob=0.5, spatial_axis=0), mt.RandFlipd(KEYS, prob=0.5, spatial_axis=1),
                 rotate, *_intensity()]
    elif recipe == "acdc":
        if size[0] != size[1]:
            raise ValueError(f"augment 'acdc' rotates by 90 degrees and needs square items, got {size}")
        steps = [mt.RandRotate90d(KEYS, prob=0.5), mt.RandFlipd(KEYS, prob=0.5, spatial_axis=(0, 1)), rotate,
                 *_intensity(),
                 mt.RandZoomd(KEYS, prob=0.3, min_zoom=0.8, max_zoom=1.2, mode="nearest", keep_size=False),
                 mt.Resized(KEYS, spatial_size=size, mode="nearest")]
    else:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; expected none, light or acdc")
    compose = _WithoutMeta([*steps, mt.ToTensord(KEYS, track_meta=False)])
    compose.set_random_state(seed)
    return compose


class _WithoutMeta(mt.Compose):
    """A Compose that runs with MONAI's MetaTensor tracking off: training needs no metadata, and the
    bookkeeping halves the speed of the spatial transforms (measured by ``python -m rwkvlab.bench data``)."""

    def __call__(self, data, *args, **kwargs):
        previous = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(data, *args, **kwargs)
        finally:
            set_track_meta(previous)


class TwoViews(mt.Randomizable):
    """Two random views of an unlabelled image for a consistency loss (FUGC, docs §6).

    Each view gets an independent rot90 (square images only) and flip, recorded so that
    :func:`invert_view` maps a prediction on the view back onto the original grid, plus
    brightness/contrast changes, which need no inversion.

    Call:
        ``{"image": (C, H, W)} -> {"view1", "view2": (C, H, W), "geom1", "geom2": (k, flip)}``.
    """

    def __init__(self, seed: int = 0) -> None:
        self.intensity = _WithoutMeta([mt.RandScaleIntensity(factors=0.2, prob=0.5),
                                       mt.RandAdjustContrast(gamma=(0.8, 1.25), prob=0.5)])
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViews:
        """Seed the geometry with ``seed`` and the brightness/contrast with ``seed + 1``.

        Both, so that re-seeding every epoch (as the training loop does) replays the views exactly; with
        ``state`` instead, the brightness/contrast is seeded from a draw of it.
        """
        super().set_random_state(seed, state)
        self.intensity.set_random_state(seed + 1 if seed is not None else int(self.R.randint(2**31)))
        return self

    def randomize(self, square: bool) -> tuple[int, bool]:
        return (int(self.R.randint(4)) if square else 2 * int(self.R.randint(2)), bool(self.R.randint(2)))

    def __call__(self, data: dict) -> dict:
        image = torch.as_tensor(data["image"])
        out = dict(data)
        for name in ("1", "2"):
            k, flip = self.randomize(image.shape[-1] == image.shape[-2])
            view = torch.rot90(image, k, dims=(-2, -1))
            view = torch.flip(view, dims=(-1,)) if flip else view
            out[f"view{name}"] = torch.as_tensor(self.intensity(view))
            out[f"geom{name}"] = (k, flip)
        return out


def invert_view(x: torch.Tensor, geom: tuple[int, bool]) -> torch.Tensor:
    """Undo the geometry of a :class:`TwoViews` view on a map (..., H, W) computed from it."""
    k, flip = geom
    x = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(x, -k, dims=(-2, -1))


def consistency_loss(pred1: torch.Tensor, pred2: torch.Tensor, geom1: tuple[int, bool],
                     geom2: tuple[int, bool]) -> torch.Tensor:
    """MSE between the softmax predictions on two views, compared on the original grid (docs §6).

    Shape:
        pred1, pred2: logits (K, H, W) of one image's two views -> scalar.
    """
    p1 = invert_view(torch.softmax(pred1, 0), geom1)
    p2 = invert_view(torch.softmax(pred2, 0), geom2)
    return torch.mean((p1 - p2) ** 2)


def _invert_batch(x: torch.Tensor, geom: tuple[Sequence[int], Sequence[bool]]) -> torch.Tensor:
    """:func:`invert_view` of each map of ``x`` (N, ..., H, W) with its own geometry; one call per distinct one."""
    ks, flips = (torch.as_tensor(g).reshape(-1).tolist() for g in geom)
    if not len(ks) == len(flips) == len(x):
        raise ValueError(f"geometry of {len(ks)} rotations and {len(flips)} flips for a batch of {len(x)} maps; "
                         f"expected one (k, flip) per map")
    per_map = list(zip(ks, flips))
    groups = sorted(set(per_map))
    members = [[i for i, g in enumerate(per_map) if g == group] for group in groups]
    inverted = torch.cat([invert_view(x[idx], group) for group, idx in zip(groups, members)])
    order = torch.tensor([i for idx in members for i in idx], device=x.device)
    return inverted[torch.argsort(order)]


def batch_consistency_loss(pred1: torch.Tensor, pred2: torch.Tensor, geom1: tuple[Sequence[int], Sequence[bool]],
                           geom2: tuple[Sequence[int], Sequence[bool]]) -> torch.Tensor:
    """The mean over a batch of :func:`consistency_loss`, each image's views inverted with their own geometry.

    Exact: the inversions are permutations of the pixels, and with every image the same size the mean of
    the per-image means is the mean over the batch.

    Shape:
        pred1, pred2: logits (N, K, H, W) of the two views; geom1, geom2: ``(k, flip)`` each of length N, as a
        ``DataLoader`` collates the geometries of :class:`TwoViews` -> scalar.
    """
    p1 = _invert_batch(torch.softmax(pred1, 1), geom1)
    p2 = _invert_batch(torch.softmax(pred2, 1), geom2)
    return torch.mean((p1 - p2) ** 2)
