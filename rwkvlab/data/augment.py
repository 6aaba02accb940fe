"""Training augmentation with MONAI dictionary transforms (docs §6).

Recipes (``train.recipes.<dataset>.augment`` in ``params.yaml``); the last three are the authors' release
(``datasets/dataset_{acdc,synapse}.py``), step for step and with its probabilities:

* ``none``: no augmentation.
* ``light``: flips, rotation up to 30 degrees (p 0.3), brightness/contrast (p 0.3); keeps any
  aspect ratio (the 2D binary sets and the demo).
* ``acdc``: p 0.5 a random rot90 followed by a flip of one random axis (so mirrored images occur),
  p 0.3 a rotation of -30..29 degrees, p 0.3 brightness and contrast, p 0.3 a random crop.
* ``synapse``: the release's Synapse recipe, used with the pretrained encoder: only brightness and contrast
  (p 0.1) and the random crop (p 0.1).
* ``synapse_scratch``: the same plus what the release enables "if the pretrained weights are not used":
  p 0.5 rot90 + flip of one axis, p 0.2 a rotation.
* ``volume``: the volumetric recipe (docs §20): a flip of each axis (p 0.5 each), p 0.5 a rot90 in the
  (H, W) plane where the patch is square in it (never across the slice axis, whose spacing differs), the
  ``light`` intensity changes. It follows the patch sampling of :func:`patch_transforms`.

Geometry of the release's recipes is nearest-neighbour for image and label alike, as the release does. Its
random crop draws one ratio r in [0.8, 1.2) for both sides, keeps the full side where r >= 1, cuts a window of
that size at a random place and resizes it back to the training size: a zoom into a part of the field of view
(about half the time, when r < 1, on at least one side).

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

__all__ = ["AUGMENTATIONS", "VOLUME_AUGMENTATIONS", "train_transforms", "patch_transforms", "ReleaseCropd", "BrightnessContrastd", "TwoViews", "invert_view",
           "consistency_loss", "batch_consistency_loss"]

Recipe = Literal["none", "light", "acdc", "synapse", "synapse_scratch", "volume"]
AUGMENTATIONS = ("none", "light", "acdc", "synapse", "synapse_scratch", "volume")
VOLUME_AUGMENTATIONS = ("none", "volume")
KEYS = ("image", "label")


def _intensity() -> list[mt.Transform]:
    return [mt.RandScaleIntensityd("image", factors=0.2, prob=0.3),
            mt.RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=0.3)]


class BrightnessContrastd(mt.RandomizableTransform, mt.MapTransform):
    """The release's brightness and contrast, one probability for both: ``x (1 + b)``, b ~ U(-0.2, 0.2), then
    ``(x - mean) c + mean``, c ~ U(0.8, 1.2), clipped to [0, 1] (or [0, 255] where the image exceeds 1).
    Hand-written: MONAI's fixed-mean scaling clips to the image's own range, not to the value range."""

    def __init__(self, keys: Sequence[str] | str = "image", prob: float = 0.1) -> None:
        mt.RandomizableTransform.__init__(self, prob)
        mt.MapTransform.__init__(self, keys)

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return data
        brightness, contrast = self.R.uniform(-0.2, 0.2), self.R.uniform(0.8, 1.2)
        out = dict(data)
        for key in self.keys:
            x = torch.as_tensor(out[key]).float() * (1 + brightness)
            mean = x.mean()
            x = (x - mean) * contrast + mean
            out[key] = x.clamp(0, 1 if x.max() <= 1 else 255)
        return out


class ReleaseCropd(mt.RandomizableTransform, mt.MapTransform):
    """The release's random crop: one ratio r ~ U(0.8, 1.2) for both sides, each side ``int(side * r)`` capped at
    the full side, a window of that size at a uniformly random place, resized back to ``size`` with nearest
    neighbour (image and label). Hand-written: MONAI's RandScaleCropd draws each side's scale independently and
    has no cap at the full side."""

    def __init__(self, keys: Sequence[str], size: tuple[int, int], prob: float) -> None:
        mt.RandomizableTransform.__init__(self, prob)
        mt.MapTransform.__init__(self, keys)
        self.resize = mt.Resized(keys, spatial_size=size, mode="nearest")

    def __call__(self, data: dict) -> dict:
        self.randomize(None)
        if not self._do_transform:
            return data
        h, w = torch.as_tensor(data[self.keys[0]]).shape[-2:]
        ratio = self.R.uniform(0.8, 1.2)
        ch, cw = min(h, int(h * ratio)), min(w, int(w * ratio))
        top, left = self.R.randint(0, h - ch + 1), self.R.randint(0, w - cw + 1)
        out = dict(data)
        for key in self.keys:
            out[key] = torch.as_tensor(out[key])[..., top:top + ch, left:left + cw]
        return self.resize(out)


def _rot90_flip(prob: float) -> mt.Transform:
    """p ``prob``: rot90 by a random k, then a flip of one random axis (the release's ``random_rot_flip``)."""
    both = mt.Compose([mt.RandRotate90d(KEYS, prob=1.0), mt.RandAxisFlipd(KEYS, prob=1.0)])
    return mt.OneOf([both, mt.Identityd(KEYS)], weights=[prob, 1 - prob])


def _release_rotation(prob: float) -> mt.Transform:
    """p ``prob``: a rotation of -30..29 degrees (integer), nearest for image and label, corners zero."""
    return mt.RandRotated(KEYS, range_x=(-math.pi / 6, math.radians(29)), prob=prob, mode="nearest",
                          padding_mode="zeros")


def train_transforms(recipe: Recipe, size: tuple[int, int], seed: int) -> mt.Compose | None:
    """The augmentation of ``recipe`` for items of spatial ``size`` (H, W); ``None`` for ``none``."""
    if recipe == "none":
        return None
    if recipe == "volume":
        raise ValueError("augment 'volume' is the volumetric recipe (a 3D model's patches); 2D items take "
                         f"one of {', '.join(a for a in AUGMENTATIONS if a != 'volume')}")
    if recipe in ("acdc", "synapse_scratch") and size[0] != size[1]:
        raise ValueError(f"augment {recipe!r} rotates by 90 degrees and needs square items, got {size}")
    if recipe == "light":
        steps = [mt.RandFlipd(KEYS, prob=0.5, spatial_axis=0), mt.RandFlipd(KEYS, prob=0.5, spatial_axis=1),
                 mt.RandRotated(KEYS, range_x=math.pi / 6, prob=0.3, mode=("bilinear", "nearest"),
                                padding_mode="zeros"),
                 *_intensity()]
    elif recipe == "acdc":
        steps = [_rot90_flip(0.5), _release_rotation(0.3), BrightnessContrastd(prob=0.3),
                 ReleaseCropd(KEYS, size, prob=0.3)]
    elif recipe == "synapse":
        steps = [BrightnessContrastd(prob=0.1), ReleaseCropd(KEYS, size, prob=0.1)]
    elif recipe == "synapse_scratch":
        steps = [_rot90_flip(0.5), _release_rotation(0.2), BrightnessContrastd(prob=0.1),
                 ReleaseCropd(KEYS, size, prob=0.1)]
    else:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; expected one of {', '.join(AUGMENTATIONS)}")
    compose = _WithoutMeta([*steps, mt.ToTensord(KEYS, track_meta=False)])
    compose.set_random_state(seed)
    return compose


def patch_transforms(recipe: Recipe, patch_size: Sequence[int], foreground_fraction: float,
                     seed: int) -> mt.Compose:
    """One training patch of a volume, then the augmentation ``recipe`` (``none`` or ``volume``).

    The volume is zero-padded to at least ``patch_size``; MONAI's ``RandCropByPosNegLabeld`` centres the patch on
    a labelled voxel with probability ``foreground_fraction``, else on a background one (nnU-Net's oversampling
    of foreground, as a probability per patch).

    Shape:
        ``{"image": (1, D, H, W) float, "label": (1, D, H, W) float}`` -> a list of one such dict at ``patch_size``.
    """
    if recipe not in VOLUME_AUGMENTATIONS:
        raise ValueError(f"augment {recipe!r} is a 2D recipe; a volumetric model's patches take one of "
                         f"{', '.join(VOLUME_AUGMENTATIONS)}")
    if not 0 <= foreground_fraction <= 1:
        raise ValueError(f"recipe foreground_fraction must be in [0, 1], got {foreground_fraction}")
    patch = tuple(int(n) for n in patch_size)
    steps: list[mt.Transform] = [
        mt.SpatialPadd(KEYS, patch),
        mt.RandCropByPosNegLabeld(KEYS, "label", patch, pos=foreground_fraction, neg=1 - foreground_fraction,
                                  num_samples=1)]
    if recipe == "volume":
        steps += [mt.RandFlipd(KEYS, prob=0.5, spatial_axis=axis) for axis in range(3)]
        if patch[1] == patch[2]:
            steps.append(mt.RandRotate90d(KEYS, prob=0.5, spatial_axes=(1, 2)))
        steps += _intensity()
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
