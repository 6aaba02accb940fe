"""GlaS (MICCAI 2015): colon histology images with gland masks (docs §8)."""

from __future__ import annotations

import logging
from typing import Sequence

from rwkvlab.data.reader import Case, ImageMaskReader, register_reader
from rwkvlab.data.readers._binary import find_files, pair_by_name

logger = logging.getLogger(__name__)

__all__ = ["GlaS"]

_IMAGE = r"(train|testA|testB)_\d+\.bmp"


@register_reader
class GlaS(ImageMaskReader):
    """GlaS (Warwick-QU) as published: one folder of ``<part>_<N>.bmp`` with ``<part>_<N>_anno.bmp``.

    ``part`` is ``train`` (85), ``testA`` (60) or ``testB`` (20); the case id is the file stem
    (``train_3``). Annotations are gland instance maps (0 background, 1..k one id per gland),
    binarised > 0. The official test set is testA + testB; the paper splits the training images
    9:1 into train and val per seed. ``Grade.csv`` is not read.
    """

    name = "glas"
    class_names = ("background", "gland")
    description = "GlaS colon histology (H&E): 165 images (85 train, 80 test) with gland masks"
    layout = """
    train_<N>.bmp  train_<N>_anno.bmp      N = 1..85; anno: gland instance ids (0 = background)
    testA_<N>.bmp  testA_<N>_anno.bmp      N = 1..60
    testB_<N>.bmp  testB_<N>_anno.bmp      N = 1..20
    Grade.csv                              (ignored)
    """
    mask_threshold = 0

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        images = find_files(self.root, _IMAGE, problems, self.expected())
        pairs = pair_by_name(images, lambda p: p.with_name(f"{p.stem}_anno.bmp"), problems)
        return [Case(image.stem, (image, mask), split="train" if image.name.startswith("train") else "test")
                for image, mask in pairs]

    def split(self, cases: Sequence[Case], seed: int) -> dict[str, list[str]]:
        """Official test (testA + testB) and a seeded 9:1 train/val split of the official training images."""
        split = self.random_split([c for c in cases if c.split == "train"], seed, {"train": 0.9, "val": 0.1})
        split["test"] = sorted(c.case_id for c in cases if c.split == "test")
        return split
