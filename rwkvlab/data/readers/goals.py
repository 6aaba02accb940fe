"""GOALS (MICCAI 2022): OCT B-scans with layer masks for RNFL, GCIPL and choroid (SPEC §8).

The official release has 100 training, 100 validation and 100 test scans, each split in its own folder.
"""

from __future__ import annotations

import logging

from rwkvlab.data.reader import Case, ImageMaskReader, register_reader
from rwkvlab.data.readers._multiclass import log_counts, paired_splits

logger = logging.getLogger(__name__)

__all__ = ["GOALS"]


@register_reader
class GOALS(ImageMaskReader):
    """``<Split>/Image/<id>.png`` with ``<Split>/Layer_Masks/<id>.png`` (grey level per layer).

    The mask grey levels are 0 RNFL, 80 GCIPL, 160 choroid and 255 background; any other level is an
    error naming the file, so a release with another encoding is noticed rather than mislabelled.
    """

    name = "goals"
    class_names = ("background", "rnfl", "gcipl", "choroid")
    description = "GOALS (MICCAI 2022) OCT layer segmentation: RNFL, GCIPL, choroid; 100 / 100 / 100 official split"
    layout = """
    Train/Image/<id>.png          OCT B-scan
    Train/Layer_Masks/<id>.png    grey levels 0 RNFL, 80 GCIPL, 160 choroid, 255 background
    Validation/Image/<id>.png,  Validation/Layer_Masks/<id>.png
    Test/Image/<id>.png,        Test/Layer_Masks/<id>.png
    """
    mask_values = {255: 0, 0: 1, 80: 2, 160: 3}
    published = {"train": "100 scans", "val": "100 scans", "test": "100 scans"}

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        cases = paired_splits(self, problems, [(split, f"{folder}/Image", f"{folder}/Layer_Masks") for split, folder
                                               in (("train", "Train"), ("val", "Validation"), ("test", "Test"))])
        log_counts(self, cases, self.published)
        return cases
