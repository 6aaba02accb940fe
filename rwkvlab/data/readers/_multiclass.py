"""Helpers shared by the multi-class readers (docs §8): array files for Synapse and ACDC, and
one image folder plus one mask folder per official split for GOALS and FUGC, found where their
archives unpack them (docs §15)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from rwkvlab.data._base import DataError, pair_folder
from rwkvlab.data.files import read_arrays, unit_image
from rwkvlab.data.reader import Case, Reader, Sample

logger = logging.getLogger(__name__)

__all__ = ["ArrayFileReader", "read_arrays", "unit_image", "class_label", "locate", "paired_splits", "log_counts"]

def class_label(array: np.ndarray, path: Path, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """Check that ``array`` holds class indices 0..num_classes-1 of ``shape``; return it as uint8.

    Labels stored as floats (TransUNet's Synapse files) are accepted when every value is integral.

    Raises:
        DataError: naming ``path`` for a shape mismatch, non-integral values or values out of range.
    """
    if array.shape != shape:
        raise DataError(f"{path}: label shape {array.shape} differs from image shape {shape}")
    if np.issubdtype(array.dtype, np.floating):
        fractional = ~np.isfinite(array) | (array != np.round(array))
        if fractional.any():
            raise DataError(f"{path}: label has non-integral values such as {array[fractional].flat[0].item()!r}; "
                            f"expected class indices 0..{num_classes - 1}")
    elif not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: label has dtype {array.dtype}, expected integer class indices")
    outside = (array < 0) | (array >= num_classes)
    if outside.any():
        bad = np.unique(array[outside])[:10].astype(np.int64).tolist()
        raise DataError(f"{path}: label values {bad} are outside the classes 0..{num_classes - 1}")
    return array.astype(np.uint8)


class ArrayFileReader(Reader):
    """Base of the layouts that store each case as ``image`` and ``label`` arrays in one npz or HDF5 file.

    ``case.files`` is ``(file,)``; slices are (H, W), volumes (D, H, W).
    """

    def load(self, case: Case) -> Sample:
        path = case.files[0]
        arrays = read_arrays(path, ("image", "label"))
        image = unit_image(arrays["image"], path, ndim=3 if case.kind == "volume" else 2)
        label = class_label(arrays["label"], path, image.shape, len(self.class_names))
        return Sample(image, label)


def locate(reader: Reader, problems: list[str], candidates: Sequence[str], holding: str) -> Path | None:
    """The one of ``candidates`` (folders relative to the root, in the order tried) that holds ``holding``.

    Several of them holding it is a problem naming each (two copies of one split), and the first is used.
    """
    found = [reader.root / c for c in candidates if (reader.root / c / holding).is_dir()]
    if len(found) > 1:
        problems.append(f"{', '.join(map(str, found))}: several copies of the same folder; keep one of them")
    return found[0] if found else None


def paired_splits(reader: Reader, problems: list[str], folders: Sequence[tuple[str, Path, str, str]],
                  masks_optional: Collection[str] = ()) -> list[Case]:
    """Cases of a layout with one image folder and one mask folder per official split.

    Args:
        reader: the reader (its root and expected tree).
        problems: where missing folders and images without a mask are appended.
        folders: ``(split, folder, image subfolder, mask subfolder)``; masks share the image's file stem.
        masks_optional: splits whose masks may be absent from the download: their images are then
            unlabelled cases (usable for prediction, not for training or scoring) of split
            ``<split>_unlabelled``, and this is logged.

    Returns:
        ``Case("<split>_<stem>", (image, mask), split=split)``: the split prefix keeps ids unique when
        every split numbers its files from 1.
    """
    cases = []
    for split, folder, image_dir, mask_dir in folders:
        images, masks = folder / image_dir, folder / mask_dir
        if split in masks_optional and images.is_dir() and not masks.exists():
            if reader.require_dirs(problems, images):
                files = sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith("."))
                logger.warning("%s: %s has no %s folder (masks not part of the download): its %d images are "
                               "unlabelled, usable for prediction only", reader.name, folder, mask_dir, len(files))
                cases += [Case(f"{split}_{p.stem}", (p,), split=f"{split}_unlabelled", labelled=False) for p in files]
            continue
        for cid, image, mask in pair_folder(folder, image_dir, mask_dir, problems, expected=reader.expected(),
                                            id_prefix=f"{split}_"):
            cases.append(Case(cid, (image, mask), split=split))
    return cases


def log_counts(reader: Reader, cases: Sequence[Case], published: dict[str, str]) -> None:
    """Log the cases per split next to the published release (fixtures and subsets differ on purpose)."""
    counts = Counter(c.split for c in cases)
    others = [f"{s} {n}" for s, n in sorted(counts.items()) if s not in published]
    logger.info("%s under %s: %s", reader.name, reader.root,
                ", ".join([f"{s} {counts.get(s, 0)} (published: {n})" for s, n in published.items()] + others))
