"""ISIC 2017 (Part 1, lesion segmentation): dermoscopy images with lesion masks, official splits (docs §8)."""

from __future__ import annotations

import logging

from rwkvlab.data.reader import Case, ImageMaskReader, register_reader
from rwkvlab.data.readers._binary import find_files, pair_by_name

logger = logging.getLogger(__name__)

__all__ = ["ISIC2017"]

# split -> the folder name part of the official release
_PARTS = {"train": "Training", "val": "Validation", "test": "Test_v2"}


@register_reader
class ISIC2017(ImageMaskReader):
    """ISIC 2017 as published: ``ISIC-2017_<part>_Data/ISIC_<n>.jpg`` with
    ``ISIC-2017_<part>_Part1_GroundTruth/ISIC_<n>_segmentation.png``, case id ``ISIC_<n>``.

    The official parts are the split (Training 2000, Validation 150, Test_v2 600). The
    ``*_superpixels.png`` files and metadata CSVs of the data folders are not read.
    """

    name = "isic2017"
    class_names = ("background", "lesion")
    description = "ISIC 2017 dermoscopy: 2000 / 150 / 600 train / val / test images with lesion masks"
    layout = """
    ISIC-2017_Training_Data/ISIC_<n>.jpg                              dermoscopy images (sizes vary)
    ISIC-2017_Training_Part1_GroundTruth/ISIC_<n>_segmentation.png    lesion masks, 0 / 255
    ISIC-2017_Validation_Data/...  ISIC-2017_Validation_Part1_GroundTruth/...   same naming
    ISIC-2017_Test_v2_Data/...     ISIC-2017_Test_v2_Part1_GroundTruth/...      same naming
    (ISIC_<n>_superpixels.png and *_metadata.csv in the data folders are ignored)
    """
    mask_values = {0: 0, 255: 1}

    def scan(self, problems: list[str]) -> list[Case]:
        cases = []
        for split, part in _PARTS.items():
            images_dir = self.root / f"ISIC-2017_{part}_Data"
            masks_dir = self.root / f"ISIC-2017_{part}_Part1_GroundTruth"
            if not self.require_dirs(problems, images_dir, masks_dir):
                continue
            images = find_files(images_dir, r"ISIC_\d+\.jpg", problems, self.expected())
            for image, mask in pair_by_name(images, lambda p, d=masks_dir: d / f"{p.stem}_segmentation.png",
                                            problems):
                cases.append(Case(image.stem, (image, mask), split=split))
        return cases
