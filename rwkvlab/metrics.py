"""Per-case segmentation metrics with the paper's TransUNet protocol (docs §7).

HD95 pools the surface distances of both directions and takes their 95th percentile, which equals
MedPy's ``hd95`` bit for bit. MONAI's ``HausdorffDistanceMetric(percentile=95)`` takes the larger of
the two *directed* 95th percentiles instead; measured on 256 blob pairs it is larger by +1.2% at the
median, +13% at the 90th percentile and up to +90 px. Hence the hand-written HD95 here.

Each class is scored inside the bounding box of its prediction and ground truth plus a one-voxel
margin, which gives the same bits as the whole volume (see :func:`_class_box`) in a fraction of the
time: ``python -m rwkvlab.bench metrics`` times both on Synapse-sized volumes.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["dice_hd95", "case_metrics"]

logger = logging.getLogger(__name__)

_MARGIN = 1  # voxels of background kept around each class's box


def _surface(mask: np.ndarray) -> np.ndarray:
    # Mask minus its erosion with the cross-shaped (connectivity-1) structuring element.
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, iterations=1)


def _directed_distances(surface_a: np.ndarray, surface_b: np.ndarray, spacing: np.ndarray | None) -> np.ndarray:
    """Distance of every voxel of ``surface_a`` to the nearest voxel of ``surface_b``, C order.

    The arithmetic is that of ``ndimage.distance_transform_edt`` (integer offset to the nearest
    feature, times spacing, squared, summed over axes in order, square root), applied at the surface
    voxels only: on the whole array it costs three times the feature transform itself.
    """
    ft = ndimage.distance_transform_edt(~surface_b, sampling=spacing, return_distances=False, return_indices=True)
    at = np.nonzero(surface_a)
    offsets = np.stack([ft[axis][at] - at[axis] for axis in range(surface_a.ndim)]).astype(np.float64)
    if spacing is not None:
        offsets *= spacing[:, None]
    np.multiply(offsets, offsets, offsets)
    return np.sqrt(np.add.reduce(offsets, axis=0))


def _score(pred: np.ndarray, gt: np.ndarray, spacing: np.ndarray | None) -> tuple[float, float]:
    """(DSC, HD95) of two boolean masks of one shape: the docs §7 formula with its empty-case rules."""
    if pred.any() and gt.any():
        dsc = 2.0 * np.count_nonzero(pred & gt) / (np.count_nonzero(pred) + np.count_nonzero(gt))
        surface_p, surface_g = _surface(pred), _surface(gt)
        pooled = np.concatenate([_directed_distances(surface_p, surface_g, spacing),
                                 _directed_distances(surface_g, surface_p, spacing)])
        return float(dsc), float(np.percentile(pooled, 95))
    if pred.any():
        return 1.0, 0.0
    return 0.0, 0.0


def _class_box(box_p: tuple[slice, ...] | None, box_g: tuple[slice, ...] | None,
               shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Bounding box of a class in prediction and ground truth, grown by :data:`_MARGIN`, clipped.

    Scoring inside it gives the whole volume's bits. Surface: a box voxel's six neighbours are in
    the box or outside the volume, which erosion treats as background in both. Distances: every
    feature (surface voxel) lies in the box, and scipy's exact transform (Maurer et al. 2003) only
    ever subtracts coordinates, so a box voxel gets the same nearest feature, ties included, and the
    same float distance. ``None`` when the class is absent from both.
    """
    boxes = [b for b in (box_p, box_g) if b is not None]
    if not boxes:
        return None
    return tuple(slice(max(min(s.start for s in axis) - _MARGIN, 0), min(max(s.stop for s in axis) + _MARGIN, n))
                 for axis, n in zip(zip(*boxes), shape))


def _check(who: str, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None) -> np.ndarray | None:
    """Validate shapes and spacing; return the spacing as float64 per axis, as scipy uses it."""
    if pred.shape != gt.shape:
        raise ValueError(f"{who}: prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if spacing is None:
        return None
    sampling = np.asarray(spacing, dtype=np.float64)
    if sampling.shape != (pred.ndim,) or not (sampling > 0).all():
        raise ValueError(f"{who}: spacing must be {pred.ndim} positive numbers (one per axis), got {spacing!r}")
    return sampling


def dice_hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[float, float]:
    """DSC and pooled-surface HD95 of one binary case (2D image or 3D volume).

    Empty cases follow the paper: prediction non-empty and ground truth empty -> (1, 0);
    prediction empty -> (0, 0).

    Args:
        pred: predicted mask, any shape; non-zero is foreground.
        gt: ground-truth mask of the same shape.
        spacing: voxel size per axis for HD95 in physical units; ``None`` gives voxels (paper).

    Returns:
        (dsc, hd95), DSC in [0, 1].

    Shape:
        pred, gt: (H, W) or (D, H, W), any dtype.
    """
    sampling = _check("dice_hd95", pred, gt, spacing)
    pred, gt = pred.astype(bool), gt.astype(bool)
    box = _class_box(*(ndimage.find_objects(m.view(np.uint8), 1)[0] for m in (pred, gt)), pred.shape)
    return (0.0, 0.0) if box is None else _score(pred[box], gt[box], sampling)


def case_metrics(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """DSC and HD95 of each foreground class of one labelled case.

    Args:
        pred: predicted label map (integers in [0, num_classes)).
        gt: ground-truth label map of the same shape.
        num_classes: classes including background (label 0).
        spacing: voxel size per axis, or ``None`` for voxels.

    Returns:
        array (num_classes - 1, 2): columns DSC, HD95; row ``c - 1`` is class ``c``.

    Shape:
        pred, gt: (H, W) or (D, H, W), integer or bool -> (num_classes - 1, 2).
    """
    sampling = _check("case_metrics", pred, gt, spacing)
    if num_classes < 2:
        raise ValueError(f"case_metrics: num_classes counts background and at least one class, got {num_classes}")
    for name, labels in (("prediction", pred), ("ground truth", gt)):
        if labels.dtype.kind not in "biu":
            raise ValueError(f"case_metrics: {name} must be an integer label map, got dtype {labels.dtype}")
    # One pass per label map finds every class's box (find_objects takes no bool).
    boxes = zip(*(ndimage.find_objects(m.view(np.uint8) if m.dtype == bool else m, num_classes - 1)
                  for m in (pred, gt)))
    rows = []
    for c, (box_p, box_g) in enumerate(boxes, start=1):
        box = _class_box(box_p, box_g, pred.shape)
        rows.append((0.0, 0.0) if box is None else _score(pred[box] == c, gt[box] == c, sampling))
    return np.array(rows, dtype=np.float64)
