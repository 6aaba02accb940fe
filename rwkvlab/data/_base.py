"""File-level helpers shared by the readers: pairing, reading images and masks, splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["DataError", "pair_folder", "read_image", "read_mask", "make_split", "write_split"]


class DataError(ValueError):
    """A dataset file or folder is not what the reader expects; the message names it."""


def pair_folder(root: Path, image_dir: str, mask_dir: str, problems: list[str], mask_suffix: str = "",
                expected: str = "") -> list[tuple[str, Path, Path]]:
    """Match ``root/image_dir/<id>.*`` with ``root/mask_dir/<id><mask_suffix>.*``.

    Appends a problem for each missing or empty folder and each image without a mask.

    Returns:
        (case id, image file, mask file), sorted by id.
    """
    root = Path(root)
    img_root, mask_root = root / image_dir, root / mask_dir
    expected = expected or f"expected {img_root}/<id>.<ext> and {mask_root}/<id>{mask_suffix}.<ext>"
    ok = True
    for folder in (img_root, mask_root):
        if not folder.is_dir():
            problems.append(f"{folder}: folder not found; {expected}")
            ok = False
    if not ok:
        return []
    images = sorted(p for p in img_root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not images:
        problems.append(f"{img_root}: folder is empty; {expected}")
    masks = {p.stem: p for p in mask_root.iterdir() if p.is_file() and not p.name.startswith(".")}
    pairs = []
    for img in images:
        mask = masks.get(img.stem + mask_suffix)
        if mask is None:
            problems.append(f"{img}: no mask; expected {mask_root}/{img.stem}{mask_suffix}.<ext>")
        else:
            pairs.append((img.stem, img, mask))
    return pairs


def read_image(path: Path) -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3); a grey image is repeated to three channels."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from e


def read_mask(path: Path, values: Mapping[int, int] | None = None, shape: tuple[int, int] | None = None,
              threshold: int | None = None) -> np.ndarray:
    """Read a single-channel mask and map its pixel values to class indices.

    Args:
        path: mask file.
        values: pixel value -> class index, e.g. ``{0: 0, 255: 1}``; any other value is an error.
        shape: the (H, W) the mask must have (its image's).
        threshold: instead of ``values``, class 1 where the grey value exceeds it (lossy JPEG masks)
            and 0 elsewhere.

    Returns:
        uint8 class map (H, W).
    """
    try:
        with Image.open(path) as im:
            # A palette mask means what it shows: HAM10000's maps index 0 to white (the lesion).
            raw = np.asarray(im if im.mode in ("L", "I", "I;16") else im.convert("L"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable or truncated mask ({e})") from e
    if shape is not None and raw.shape != shape:
        raise DataError(f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image is "
                        f"{shape[1]}x{shape[0]}; expected the same size")
    if threshold is not None:
        return (raw > threshold).astype(np.uint8)
    found = np.unique(raw)
    unexpected = sorted(set(found.tolist()) - set(values))
    if unexpected:
        raise DataError(f"{path}: mask values {unexpected} are outside the declared values {sorted(values)}")
    lut = np.zeros(int(found.max()) + 1, dtype=np.uint8)
    for value, cls in values.items():
        if value < lut.size:
            lut[value] = cls
    return lut[raw]


def make_split(ids: Sequence[str], fractions: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    """Deterministic random split of case ids by fractions (e.g. train 0.8, val 0.1, test 0.1).

    The last split takes the remainder, so every id lands in exactly one split.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)}")
    order = np.random.default_rng(seed).permutation(sorted(ids))
    names = list(fractions)
    split, start = {}, 0
    for i, name in enumerate(names):
        stop = len(order) if i == len(names) - 1 else start + round(fractions[name] * len(order))
        split[name] = sorted(order[start:stop].tolist())
        start = stop
    return split


def write_split(split: Mapping[str, Sequence[str]], path: Path) -> None:
    """Write a split as indented JSON (inspectable, reusable)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(dict(split), indent=2) + "\n"))
