"""BUSI: breast ultrasound images with lesion masks (docs §8), split 8:1:1 by seed."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from rwkvlab.data._base import read_image, read_mask
from rwkvlab.data.reader import Case, ImageMaskReader, Sample, register_reader
from rwkvlab.data.readers._binary import SPLIT_8_1_1, find_files, pair_by_name

logger = logging.getLogger(__name__)

__all__ = ["BUSI"]

_IMAGE = r"(?P<name>.+?) ?\((?P<n>\d+)\)\.png"
_MASK = re.compile(r"(?P<stem>.+)_mask(?:_(?P<extra>\d+))?\.png")


def _case_id(image: Path) -> str:
    """``<class folder>_<n>`` of ``<class folder>/<name> (<n>).png``."""
    return f"{image.parent.name}_{int(re.fullmatch(_IMAGE, image.name)['n'])}"


@register_reader
class BUSI(ImageMaskReader):
    """BUSI (Dataset_BUSI_with_GT) as published.

    Each image ``<class>/<class> (<n>).png`` has a mask ``<class> (<n>)_mask.png``; images with
    several lesions add ``_mask_1.png``, ``_mask_2.png``, ... which are OR-merged into one lesion
    mask. Case ids are ``<class>_<n>`` (e.g. ``benign_12``). Normal images have empty masks and are
    kept as negatives unless ``include_normal`` is ``False``.

    Args:
        root: the folder holding ``Dataset_BUSI_with_GT``.
        include_normal: keep the 133 normal (lesion-free) images.
    """

    name = "busi"
    class_names = ("background", "lesion")
    description = "BUSI breast ultrasound: 780 images (437 benign, 210 malignant, 133 normal) with lesion masks"
    layout = """
    Dataset_BUSI_with_GT/
      benign/benign (<n>).png             ultrasound images (sizes vary)
      benign/benign (<n>)_mask.png        lesion mask, 0 / 255 (grey, RGB or RGBA)
      benign/benign (<n>)_mask_1.png      optional further lesions (_mask_2, ...), OR-merged
      malignant/malignant (<n>).png ...   same naming
      normal/normal (<n>).png ...         same naming, empty masks (skipped with include_normal=False)
    """
    mask_values = {0: 0, 255: 1}

    def __init__(self, root: Path, include_normal: bool = True) -> None:
        super().__init__(root)
        self.include_normal = include_normal

    @property
    def folders(self) -> tuple[str, ...]:
        """The class folders read."""
        return ("benign", "malignant", "normal") if self.include_normal else ("benign", "malignant")

    def scan(self, problems: list[str]) -> list[Case]:
        cases = []
        for folder in self.folders:
            path = self.root / "Dataset_BUSI_with_GT" / folder
            if not self.require_dirs(problems, path):
                continue
            extras: dict[str, list[tuple[int, Path]]] = {}
            for file in path.iterdir():
                match = _MASK.fullmatch(file.name)
                if match and match["extra"]:
                    extras.setdefault(match["stem"], []).append((int(match["extra"]), file))
            images = find_files(path, _IMAGE, problems, self.expected())
            for image, mask in pair_by_name(images, lambda p: p.with_name(f"{p.stem}_mask.png"), problems,
                                            _case_id):
                more = tuple(file for _, file in sorted(extras.get(image.stem, [])))
                cases.append(Case(_case_id(image), (image, mask, *more)))
        return cases

    def load(self, case: Case) -> Sample:
        image = read_image(case.files[0])
        masks = [read_mask(file, self.mask_values, shape=image.shape[:2]) for file in case.files[1:]]
        return Sample(image, np.maximum.reduce(masks))

    def split(self, cases: Sequence[Case], seed: int) -> dict[str, list[str]]:
        return self.random_split(cases, seed, SPLIT_8_1_1)
