"""Helpers shared by the readers of the 2D binary benchmarks (docs §8): file matching and the 8:1:1 split."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from rwkvlab.data._base import Problem, pair_folder
from rwkvlab.data.reader import Case, ImageMaskReader

logger = logging.getLogger(__name__)

__all__ = ["SPLIT_8_1_1", "find_files", "pair_by_name", "PairedFolderReader"]

# The paper's random split of the sets without an official one (docs §8), redrawn per seed.
SPLIT_8_1_1 = {"train": 0.8, "val": 0.1, "test": 0.1}


def find_files(folder: Path, pattern: str, problems: list[str], expected: str) -> list[Path]:
    """The files of ``folder`` whose whole name matches the regex ``pattern``, sorted.

    Other files (metadata, superpixels, grade tables) are ignored; a problem is appended when none
    match, since a folder holding only those is as unusable as an empty one.
    """
    regex = re.compile(pattern)
    found = sorted(p for p in folder.iterdir() if p.is_file() and regex.fullmatch(p.name))
    if not found:
        problems.append(f"{folder}: no files matching {pattern!r}; {expected}")
    return found


def pair_by_name(images: Sequence[Path], mask_for: Callable[[Path], Path], problems: list[str],
                 case_of: Callable[[Path], str] = lambda image: image.stem) -> list[tuple[Path, Path]]:
    """Pair each image with the mask file ``mask_for(image)``; a problem of case ``case_of(image)`` for each
    mask that is missing."""
    pairs = []
    for image in images:
        mask = mask_for(image)
        if mask.is_file():
            pairs.append((image, mask))
        else:
            problems.append(Problem(f"{image}: no mask; expected {mask}", case=case_of(image)))
    return pairs


class PairedFolderReader(ImageMaskReader):
    """Base of the sets stored as ``<image_dir>/<id>.<ext>`` and ``<mask_dir>/<id>.<ext>``, split 8:1:1 by seed.

    Subclasses set ``image_dir``, ``mask_dir`` and how masks map to classes (``mask_values`` or
    ``mask_threshold``), besides the :class:`~rwkvlab.data.reader.Reader` attributes.
    """

    image_dir: ClassVar[str]
    mask_dir: ClassVar[str]

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        pairs = pair_folder(self.root, self.image_dir, self.mask_dir, problems, expected=self.expected())
        return [Case(cid, (image, mask)) for cid, image, mask in pairs]

    def split(self, cases: Sequence[Case], seed: int) -> dict[str, list[str]]:
        return self.random_split(cases, seed, SPLIT_8_1_1)
