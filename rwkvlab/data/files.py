"""Reading image arrays and volumes from files, and resampling volumes: what the dataset readers and inference on a
user's own files share (the readers themselves are :mod:`rwkvlab.data.readers`)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal, Sequence

import h5py
import nibabel as nib
import numpy as np
from scipy import ndimage

from rwkvlab.data._base import DataError, check_spacing

__all__ = ["read_arrays", "unit_image", "read_nifti", "resample_volume"]

# Float rounding of a [0, 1] normalisation may overshoot by an ulp or so; more than this is a wrong scale.
_UNIT_TOLERANCE = 1e-4


def read_arrays(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` from an ``.npz`` file or, for any other suffix, an HDF5 file.

    Raises:
        DataError: naming ``path`` if it is missing, unreadable or truncated, or lacks one of ``keys``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                found = list(npz.files)
                arrays = {k: npz[k] for k in keys if k in found}
        else:
            with h5py.File(path, "r") as h5:
                found = list(h5.keys())
                arrays = {k: h5[k][()] for k in keys if isinstance(h5.get(k), h5py.Dataset)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: unreadable or truncated ({type(e).__name__}: {e})") from e
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; found {found}, expected {list(keys)}")
    return arrays


def unit_image(array: np.ndarray, path: Path, ndim: int) -> np.ndarray:
    """Check that ``array`` is an ``ndim``-D image of intensities in [0, 1]; return it as float32.

    Raises:
        DataError: naming ``path`` for a wrong rank, an empty or non-numeric array, or values outside [0, 1].
    """
    axes = "(D, H, W)" if ndim == 3 else "(H, W)"
    if array.ndim != ndim or array.size == 0:
        raise DataError(f"{path}: image has shape {array.shape}, expected a non-empty {axes} array")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise DataError(f"{path}: image has dtype {array.dtype}, expected float intensities in [0, 1]")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: image has NaN or infinite values, expected intensities in [0, 1]")
    lo, hi = float(array.min()), float(array.max())
    if lo < -_UNIT_TOLERANCE or hi > 1 + _UNIT_TOLERANCE:
        raise DataError(f"{path}: image values span [{lo:.4g}, {hi:.4g}], expected [0, 1] "
                        f"(the published preprocessing normalises intensities)")
    return np.clip(array, 0, 1).astype(np.float32, copy=False)


def read_nifti(path: Path, orientation: Literal["voxel", "ras"] = "voxel"
               ) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Read a NIfTI file as (D, H, W[, C]) with its spacing (mm along D, H, W) and its affine.

    The voxel axes (i, j, k) become (k, j, i); a fourth (channel) axis stays last. With ``orientation="ras"``
    the volume is first reoriented to the closest canonical (RAS+) orientation. The spacing is the header's
    voxel size (``pixdim``) in the same order, each float32 value as its shortest decimal.

    Raises:
        DataError: naming ``path`` if it is unreadable, truncated, not 3D or 4D, or has a bad voxel size.
    """
    try:
        nifti = nib.load(path)
        if orientation == "ras":
            nifti = nib.as_closest_canonical(nifti)
        array = np.asarray(nifti.dataobj)
        zooms = nifti.header.get_zooms()[:3]
        affine = nifti.affine
    except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise DataError(f"{path}: unreadable or truncated NIfTI ({type(e).__name__}: {e})") from e
    if array.ndim not in (3, 4) or array.size == 0:
        raise DataError(f"{path}: has shape {array.shape}, expected a 3D volume (X, Y, Z) or 4D (X, Y, Z, C)")
    axes = (2, 1, 0, 3)[: array.ndim]
    # The header stores float32: take the shortest decimal that gives it back (0.7, not 0.699999988).
    spacing = check_spacing(np.array([float(str(np.float32(z))) for z in zooms[::-1]]), path)
    return array.transpose(axes), spacing, affine


def resample_volume(image: np.ndarray, label: np.ndarray | None, spacing: Sequence[float], target: Sequence[float]
                    ) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Resample a (D, H, W) volume to about ``target`` mm per voxel.

    The new shape is ``round(shape * spacing / target)`` (at least 1); the grid keeps the volume's extent
    (voxel edges aligned, ``grid_mode``), so the returned spacing is ``spacing * shape / new_shape``, equal
    to ``target`` up to that rounding. The image is interpolated with an order-3 spline and clipped to
    [0, 1], the label with nearest neighbour (its values are kept).
    """
    shape = np.asarray(image.shape)
    new_shape = np.maximum(1, np.round(shape * np.asarray(spacing) / np.asarray(target))).astype(int)
    if (new_shape == shape).all():
        return image, label, tuple(float(s) for s in spacing)
    factors = new_shape / shape
    out = ndimage.zoom(image.astype(np.float32), factors, order=3, mode="nearest", grid_mode=True)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if label is not None:
        label = ndimage.zoom(label, factors, order=0, mode="nearest", grid_mode=True)
    new_spacing = tuple(float(s) for s in np.asarray(spacing) * shape / new_shape)
    return out, label, new_spacing
