"""File-level helpers shared by the readers: pairing, reading images and masks, splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["DataError", "Problem", "pair_folder", "read_image", "read_mask", "check_spacing", "make_split",
           "write_split"]

# 16-bit grey -> 8 bit: v / 257 maps 0..65535 onto 0..255 exactly (the reduction libpng and PIL apply).
# A fixed factor keeps intensities comparable between images; scaling each image by its own range
# would give every case a different contrast.
_UINT16_TO_UINT8 = 257


class DataError(ValueError):
    """A dataset file or folder is not what the reader expects; the message names it.

    Args:
        message: the whole message.
        problems: the individual problems it lists (``[message]`` when not given), for a command line
            that prints them one per line, as ``validate`` does.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


class Problem(str):
    """A problem message; ``case`` is the id of the one case it belongs to, ``None`` for the folder as a whole.

    Only a problem that belongs to one case can be skipped (``prepare --skip-invalid``); a missing folder
    or a misnamed file stops the prepare stage.
    """

    case: str | None

    def __new__(cls, message: str, case: str | None = None) -> Problem:
        self = super().__new__(cls, message)
        self.case = case
        return self


def pair_folder(root: Path, image_dir: str, mask_dir: str, problems: list[str], mask_suffix: str = "",
                expected: str = "", id_prefix: str = "", suffixes: Collection[str] | None = None
                ) -> list[tuple[str, Path, Path]]:
    """Match ``root/image_dir/<id>.*`` with ``root/mask_dir/<id><mask_suffix>.*``.

    Appends a problem for each missing or empty folder and each image without a mask (that one
    belongs to the case ``<id_prefix><id>``). With ``suffixes`` (lower case, e.g. ``{".png"}``), files
    with another suffix are left out and named in the log.

    Returns:
        (``<id_prefix><id>``, image file, mask file), sorted by id.
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
    files = {folder: sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
             for folder in (img_root, mask_root)}
    if suffixes is not None:
        for folder, found in files.items():
            other = [p.name for p in found if p.suffix.lower() not in suffixes]
            if other:
                logger.warning("%s: ignoring %d file(s) that are not %s: %s", folder, len(other),
                               "/".join(sorted(suffixes)), ", ".join(other[:10]))
            files[folder] = [p for p in found if p.suffix.lower() in suffixes]
    images = files[img_root]
    if not images:
        problems.append(f"{img_root}: folder is empty; {expected}")
    masks = {p.stem: p for p in files[mask_root]}
    pairs = []
    for img in images:
        mask = masks.get(img.stem + mask_suffix)
        if mask is None:
            problems.append(Problem(f"{img}: no mask; expected {mask_root}/{img.stem}{mask_suffix}.<ext>",
                                    case=id_prefix + img.stem))
        else:
            pairs.append((id_prefix + img.stem, img, mask))
    return pairs


def _grey_to_uint8(raw: np.ndarray, path: Path) -> np.ndarray:
    """A grey image of more than 8 bits (16-bit or 32-bit integer, float) as uint8 (H, W).

    16-bit values are divided by 257 (see ``_UINT16_TO_UINT8``); floats must lie in [0, 1].
    """
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all():
            raise DataError(f"{path}: image has NaN or infinite values, expected finite intensities")
        lo, hi = float(raw.min()), float(raw.max())
        if lo < 0 or hi > 1:
            raise DataError(f"{path}: float image values span [{lo:.4g}, {hi:.4g}], expected [0, 1]")
        return np.round(raw * 255).astype(np.uint8)
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        raise DataError(f"{path}: integer image values span [{lo}, {hi}], expected 16-bit values 0..65535")
    return np.round(raw / _UINT16_TO_UINT8).astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """Read an image as uint8 RGB (H, W, 3); a grey image is repeated to three channels.

    Palette, grey + alpha, RGBA and CMYK images are converted to RGB (alpha dropped); 16-bit and float
    grey images are scaled to 8 bits (16-bit by 1/257, float from [0, 1]); other modes are rejected.
    """
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                grey = _grey_to_uint8(np.asarray(im), path)
                return np.repeat(grey[..., None], 3, axis=-1)
            if im.mode not in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"):
                raise DataError(f"{path}: image mode {im.mode!r} is not supported; expected an 8-bit or "
                                f"16-bit grey, palette, RGB(A) or CMYK image")
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from e


def _looks_like_lossy_binary(raw: np.ndarray) -> bool:
    """Grey values of an 8-bit mask that sit, but for a few pixels, within 32 of black or of white, both present."""
    if raw.dtype != np.uint8:
        return False
    dark, bright = raw <= 32, raw >= 223
    return bool(dark.any() and bright.any() and (dark | bright).mean() >= 0.99)


def _ranges(values: list[int]) -> str:
    """``[2, 3, 4, 7, 248, 249]`` -> ``2-4, 7, 248-249``: ringing values of a lossy mask can be hundreds long."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return "[" + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) + "]"


def read_mask(path: Path, values: Mapping[int, int] | None = None, shape: tuple[int, int] | None = None,
              threshold: int | None = None, any_channel: bool = False) -> np.ndarray:
    """Read a single-channel mask and map its pixel values to class indices.

    Args:
        path: mask file.
        values: pixel value -> class index, e.g. ``{0: 0, 255: 1}``; any other value is an error.
        shape: the (H, W) the mask must have (its image's).
        threshold: instead of ``values``, class 1 where the grey value exceeds it (lossy JPEG masks)
            and 0 elsewhere.
        any_channel: read the mask as RGB and take the largest of the three channels, so that a
            pixel counts as soon as one channel exceeds ``threshold`` (PSVFM's authors binarise this way).

    Returns:
        uint8 class map (H, W).
    """
    try:
        with Image.open(path) as im:
            if any_channel:
                raw = np.asarray(im.convert("RGB")).max(axis=-1)
            else:
                # A palette mask means what it shows: HAM10000's maps index 0 to white (the lesion).
                # 16-bit and float masks keep their values (class indices are not rescaled).
                keep = im.mode in ("L", "I", "F") or im.mode.startswith("I;16")
                raw = np.asarray(im if keep else im.convert("L"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable or truncated mask ({e})") from e
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all():
            raise DataError(f"{path}: mask has NaN or infinite values, expected class values")
        if (raw != np.round(raw)).any() or raw.min() < 0:
            raise DataError(f"{path}: float mask has non-integral or negative values, expected class values")
        raw = raw.astype(np.int64)
    if shape is not None and raw.shape != shape:
        raise DataError(f"{path}: mask is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image is "
                        f"{shape[1]}x{shape[0]}; expected the same size")
    if threshold is not None:
        return (raw > threshold).astype(np.uint8)
    found = np.unique(raw)
    unexpected = sorted(set(found.tolist()) - set(values))
    if unexpected:
        hint = ""
        if len(values) == 2 and _looks_like_lossy_binary(raw):
            hint = ("; its values cluster near black and white, as a binary mask saved lossily (JPEG) does: "
                    "binarise it with the reader option mask_threshold, e.g. prepare.options.<dataset>.mask_threshold: "
                    "127 (class 1 above that grey value) instead of mask_values")
        raise DataError(f"{path}: mask values {_ranges(unexpected)} are outside the declared values "
                        f"{sorted(values)}{hint}")
    lut = np.zeros(int(found.max()) + 1, dtype=np.uint8)
    for value, cls in values.items():
        if value < lut.size:
            lut[value] = cls
    return lut[raw]


def check_spacing(values: Sequence[float] | np.ndarray, where: Path | str) -> tuple[float, float, float]:
    """A volume's voxel spacing as three floats (mm along its (D, H, W) axes).

    Raises:
        DataError: naming ``where`` unless ``values`` are three finite positive numbers.
    """
    array = np.asarray(values)
    if (array.shape != (3,) or array.dtype.kind not in "iuf"
            or not (np.isfinite(array) & (array > 0)).all()):
        raise DataError(f"{where}: spacing {array.tolist()!r} is not three positive finite numbers "
                        f"(mm along the volume's D, H, W axes)")
    return tuple(float(v) for v in array)


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
