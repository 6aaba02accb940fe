"""Your own 2D data: a folder of ``images/`` and ``masks/``, set up from ``params.yaml`` alone.

Add a dataset with ``reader: folder`` in ``prepare.options.<name>`` (see README, "Your own data");
the reader then takes ``<name>`` as its dataset name. Masks hold class indices, or one grey level
per class given as ``mask_values``; the split is a seeded 8:1:1 one, or the user's split file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

from rwkvlab.data._base import DataError, pair_folder
from rwkvlab.data.reader import Case, ImageMaskReader, register_reader
from rwkvlab.data.readers._binary import SPLIT_8_1_1

logger = logging.getLogger(__name__)

__all__ = ["Folder", "SUFFIXES"]

# The common formats PIL reads losslessly or as published (JPEG); other files in the folders are logged and left out.
SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
_SPLIT_NAMES = ("train", "val", "test")


@register_reader
class Folder(ImageMaskReader):
    """``images/<id>.<ext>`` with ``masks/<id>.<ext>`` (PNG, JPEG, TIFF or BMP; the same id, any suffix).

    Args:
        root: the folder holding ``image_dir`` and ``mask_dir``.
        class_names: one name per class, background first.
        mask_values: mask pixel value -> class index (e.g. ``{0: 0, 255: 1}`` for 0/255 masks); by
            default the mask pixels are the class indices ``0..len(class_names) - 1``.
        mask_threshold: for two classes with lossy (JPEG) masks: class 1 above this grey value.
        split_file: a JSON file ``{"train": [ids], "val": [ids], "test": [ids]}`` (relative paths
            are under ``root``); without one, a seeded 8:1:1 split per split seed.
        image_dir: the image folder under ``root``.
        mask_dir: the mask folder under ``root``.
        description: one line for the dataset card.

    Raises:
        DataError: naming the option that is not what is expected.
    """

    name = "folder"
    class_names = ("background", "foreground")
    description = "Your own 2D images with masks (images/ + masks/)"
    layout = """
    images/<id>.<png|jpg|jpeg|tif|tiff|bmp>   grey, RGB, palette, 16-bit grey images (sizes may vary)
    masks/<id>.<png|tif|tiff|bmp|jpg>         same <id>: class indices 0..K-1, or one grey level per class
                                              (mask_values) or, for 2 classes, binarised above mask_threshold
    split.json                                optional (split_file): {"train": [ids], "val": [ids], "test": [ids]}
    options (prepare.options.<name>): reader: folder, class_names, mask_values, mask_threshold, split_file
    """

    def __init__(self, root: Path, class_names: Sequence[str] = ("background", "foreground"),
                 mask_values: Mapping[int, int] | None = None, mask_threshold: int | None = None,
                 split_file: str | Path | None = None, image_dir: str = "images", mask_dir: str = "masks",
                 description: str | None = None) -> None:
        super().__init__(root)
        if (isinstance(class_names, str) or not isinstance(class_names, Sequence) or len(class_names) < 2
                or not all(isinstance(c, str) and c for c in class_names) or len(set(class_names)) < len(class_names)):
            raise DataError(f"class_names must be a list of at least two distinct names, background first; "
                            f"got {class_names!r}")
        self.class_names = tuple(class_names)
        num_classes = len(self.class_names)
        if mask_values is not None and mask_threshold is not None:
            raise DataError("give mask_values or mask_threshold, not both")
        if mask_threshold is not None and (num_classes != 2 or not isinstance(mask_threshold, int)
                                           or isinstance(mask_threshold, bool)):
            raise DataError(f"mask_threshold must be an integer grey value and needs exactly two class_names; "
                            f"got {mask_threshold!r} with {num_classes} classes")
        if mask_values is None and mask_threshold is None:
            mask_values = {i: i for i in range(num_classes)}
        if mask_values is not None:
            if not isinstance(mask_values, Mapping) or not mask_values or not all(
                    isinstance(k, int) and isinstance(v, int) and not isinstance(k, bool) and not isinstance(v, bool)
                    and 0 <= k <= 65535 and 0 <= v < num_classes for k, v in mask_values.items()):
                raise DataError(f"mask_values must map grey values 0..65535 to class indices 0..{num_classes - 1} "
                                f"(e.g. {{0: 0, 255: 1}}); got {mask_values!r}")
            mask_values = dict(mask_values)
        self.mask_values, self.mask_threshold = mask_values, mask_threshold
        self.split_file = None if split_file is None else (Path(root) / split_file)  # an absolute path stays as is
        self.image_dir, self.mask_dir = image_dir, mask_dir
        self.description = description or (f"Own data ({self.root}): {num_classes} classes "
                                            f"({', '.join(self.class_names)})")
        self._split_names: tuple[str, ...] = ()

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        pairs = pair_folder(self.root, self.image_dir, self.mask_dir, problems, expected=self.expected(),
                            suffixes=SUFFIXES)
        cases = [Case(cid, (image, mask)) for cid, image, mask in pairs]
        if self.split_file is not None:
            cases = self._apply_split_file(cases, problems)
        return cases

    def _apply_split_file(self, cases: list[Case], problems: list[str]) -> list[Case]:
        """``cases`` with their split from the split file; problems for a bad file, unknown or repeated ids."""
        path = self.split_file
        try:
            listed = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{path}: split file unreadable ({type(e).__name__}: {e}); expected JSON "
                            f'{{"train": [ids], "val": [ids], "test": [ids]}}')
            return cases
        if (not isinstance(listed, dict) or "train" not in listed or set(listed) - set(_SPLIT_NAMES)
                or not all(isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in listed.values())):
            got = f"keys {sorted(listed)}" if isinstance(listed, dict) else f"{type(listed).__name__}"
            problems.append(f"{path}: expected a JSON object with a \"train\" list and optional \"val\" and \"test\" "
                            f"lists of case ids (file stems); got {got}")
            return cases
        self._split_names = tuple(listed)
        known = {c.case_id for c in cases}
        split_of: dict[str, str] = {}
        for split, ids in listed.items():
            unknown = [i for i in ids if i not in known]
            if unknown:
                problems.append(f"{path}: split {split!r} lists {len(unknown)} id(s) with no image and mask in "
                                f"{self.root}: {unknown[:10]}")
            for cid in ids:
                if cid in split_of and split_of[cid] != split:
                    problems.append(f"{path}: case {cid!r} is listed in both {split_of[cid]!r} and {split!r}")
                split_of.setdefault(cid, split)
        unlisted = sorted(known - set(split_of))
        if unlisted:
            logger.warning("%s: %d case(s) are in no split of %s and will not be used: %s", self.root, len(unlisted),
                           path, ", ".join(unlisted[:10]))
        return [dataclasses.replace(c, split=split_of.get(c.case_id)) for c in cases]

    def split(self, cases: Sequence[Case], seed: int) -> dict[str, list[str]]:
        """The split file's split (every split it names, even if empty), else the seeded 8:1:1 split."""
        if self.split_file is None:
            return self.random_split(cases, seed, SPLIT_8_1_1)
        out: dict[str, list[str]] = {name: [] for name in self._split_names}
        for case in cases:
            if case.split is not None:
                out[case.split].append(case.case_id)
        return {name: sorted(ids) for name, ids in out.items()}
