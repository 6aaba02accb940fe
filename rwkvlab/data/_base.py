"""Dataset plumbing shared by every reader: validation, reading, splits, the prepared cache.

A reader turns a raw layout into a list of :class:`Pair` (case id, image file, mask file) and
declares how mask values map to class indices. :func:`prepare_2d` validates every file, resizes
to the training size and writes one ``.npz`` cache (uint8 arrays) that :class:`SegArrays` reads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["DataError", "Pair", "pair_folder", "read_image", "read_mask", "make_split", "prepare_2d",
           "load_prepared", "write_split"]


class DataError(ValueError):
    """A dataset file or folder is not what the reader expects; the message names it."""


@dataclass(frozen=True)
class Pair:
    """One 2D case: an image file and its mask file."""

    case_id: str
    image: Path
    mask: Path


def pair_folder(root: Path, image_dir: str = "images", mask_dir: str = "masks",
                mask_suffix: str = "", mask_ext: str | None = None) -> list[Pair]:
    """Match ``root/image_dir/<id>.<ext>`` with ``root/mask_dir/<id><mask_suffix>.<mask_ext>``.

    Raises:
        DataError: missing or empty folder, an image without mask, or duplicate ids.
    """
    root = Path(root)
    img_root, mask_root = root / image_dir, root / mask_dir
    expected = f"expected {root}/{image_dir}/<id>.<ext> and {root}/{mask_dir}/<id>{mask_suffix}.<ext>"
    for folder in (img_root, mask_root):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; {expected}")
    images = sorted(p for p in img_root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not images:
        raise DataError(f"{img_root}: folder is empty; {expected}")
    masks = {p.stem: p for p in mask_root.iterdir() if p.is_file() and (mask_ext is None or p.suffix == mask_ext)}
    pairs, seen = [], set()
    for img in images:
        if img.stem in seen:
            raise DataError(f"{img}: duplicate case id {img.stem!r} (two images with this name)")
        seen.add(img.stem)
        mask = masks.get(img.stem + mask_suffix)
        if mask is None:
            raise DataError(f"{img}: no mask; expected {mask_root}/{img.stem}{mask_suffix}.<ext>")
        pairs.append(Pair(img.stem, img, mask))
    return pairs


def read_image(path: Path) -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3); a grey image is repeated to three channels."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from e


def read_mask(path: Path, values: Mapping[int, int], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a single-channel mask and map its pixel values to class indices.

    Args:
        path: mask file.
        values: pixel value -> class index, e.g. ``{0: 0, 255: 1}``; any other value is an error.
        shape: the (H, W) the mask must have (its image's).

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


def _resize(a: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    h, w = size
    return np.asarray(Image.fromarray(a).resize((w, h), resample=resample))


def prepare_2d(pairs: Sequence[Pair], values: Mapping[int, int], size: tuple[int, int], out: Path,
               class_names: Sequence[str]) -> Path:
    """Validate, resize and cache a 2D dataset as one ``.npz`` file.

    Images are resized with a box (area) filter, masks with nearest neighbour. Nothing is written
    unless every file passes validation. The arrays are ``images`` (N, H, W, 3) uint8, ``masks``
    (N, H, W) uint8 class indices, ``ids`` and ``class_names``.

    Args:
        pairs: the cases.
        values: mask pixel value -> class index.
        size: (H, W) of the cache.
        out: the ``.npz`` to write.
        class_names: names of the classes, background first.
    """
    images, masks = [], []
    for pair in tqdm(pairs, desc=f"prepare {out.name}", unit="case"):
        img = read_image(pair.image)
        mask = read_mask(pair.mask, values, shape=img.shape[:2])
        images.append(_resize(img, size, Image.BOX))
        masks.append(_resize(mask, size, Image.NEAREST))
    arrays = {"images": np.stack(images), "masks": np.stack(masks), "ids": np.array([p.case_id for p in pairs]),
              "class_names": np.array(class_names)}
    atomic_write(out, lambda tmp: np.savez(tmp, **arrays))
    return out


def load_prepared(cache: Path, split_file: Path) -> dict[str, np.ndarray]:
    """Load a cache of :func:`prepare_2d` and a split JSON; adds ``split_<name>`` index arrays."""
    cache, split_file = Path(cache), Path(split_file)
    for path in (cache, split_file):
        if not path.is_file():
            raise DataError(f"{path}: not found; run the prepare stage first (dvc repro prepare)")
    with np.load(cache) as f:
        data = {k: f[k] for k in f.files}
    index = {cid: i for i, cid in enumerate(data["ids"].tolist())}
    for name, members in json.loads(split_file.read_text()).items():
        missing = sorted(set(members) - set(index))
        if missing:
            raise DataError(f"{split_file}: split {name!r} names cases not in {cache}: {missing[:5]}")
        data[f"split_{name}"] = np.array([index[c] for c in members], dtype=np.int64)
    return data


def write_split(split: Mapping[str, Sequence[str]], path: Path) -> None:
    """Write a split as indented JSON (inspectable, reusable)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(dict(split), indent=2) + "\n"))
