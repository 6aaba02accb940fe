"""GOALS (MICCAI 2022): OCT B-scans with layer masks for RNFL, GCIPL and choroid (docs §8, §15).

The official release has 100 training, 100 validation and 100 test scans, each split in its own folder.
As downloaded, ``GOALS2022-Train.zip`` unpacks to ``GOALS2022-Train/Train/{Image,Layer_Masks}`` and
``GOALS2022-Validation.zip`` to ``GOALS2022-Validation/GOALS2022-Validation/Image``, without masks.
"""

from __future__ import annotations

import logging

from rwkvlab.data.reader import Case, ImageMaskReader, register_reader
from rwkvlab.data.readers._multiclass import locate, log_counts, paired_splits

logger = logging.getLogger(__name__)

__all__ = ["GOALS"]

# split -> where its folder may be under the root, in the order tried: as the archives unpack (both
# unpacked side by side, or the root is the folder an archive created) or as flat split folders.
_FOLDERS = {
    "train": ("Train", "GOALS2022-Train/Train"),
    "val": ("Validation", "GOALS2022-Validation/GOALS2022-Validation", "GOALS2022-Validation"),
    "test": ("Test", "GOALS2022-Test/GOALS2022-Test", "GOALS2022-Test"),
}


@register_reader
class GOALS(ImageMaskReader):
    """``<Split>/Image/<id>.png`` with ``<Split>/Layer_Masks/<id>.png`` (grey level per layer).

    The mask grey levels are 0 RNFL, 80 GCIPL, 160 choroid and 255 background; any other level is an
    error naming the file, so a release with another encoding is noticed rather than mislabelled.
    The training folder is required. A validation or test folder that is absent is logged (the
    downloads are separate); one without ``Layer_Masks`` gives unlabelled cases (split
    ``val_unlabelled`` / ``test_unlabelled``), usable for prediction but not for training or scoring.
    """

    name = "goals"
    class_names = ("background", "rnfl", "gcipl", "choroid")
    description = "GOALS (MICCAI 2022) OCT layer segmentation: RNFL, GCIPL, choroid; 100 / 100 / 100 official split"
    layout = """
    GOALS2022-Train/Train/Image/<id>.png          OCT B-scan (as GOALS2022-Train.zip unpacks)
    GOALS2022-Train/Train/Layer_Masks/<id>.png    grey levels 0 RNFL, 80 GCIPL, 160 choroid, 255 background
    GOALS2022-Validation/GOALS2022-Validation/Image/<id>.png   no masks in the download: unlabelled
    GOALS2022-Test/GOALS2022-Test/Image/<id>.png  optional, Layer_Masks/ beside it if you have them
    or the split folders directly under the root (also the root = the folder an archive created):
    Train/Image/<id>.png,  Train/Layer_Masks/<id>.png
    Validation/Image/<id>.png  [Validation/Layer_Masks/<id>.png]
    Test/Image/<id>.png        [Test/Layer_Masks/<id>.png]
    """
    mask_values = {255: 0, 0: 1, 80: 2, 160: 3}
    published = {"train": "100 scans", "val": "100 scans", "test": "100 scans"}

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        folders = []
        for split, candidates in _FOLDERS.items():
            folder = locate(self, problems, candidates, holding="Image")
            if folder is not None:
                folders.append((split, folder, "Image", "Layer_Masks"))
            elif split == "train":
                tried = ", ".join(f"{c}/Image" for c in candidates)
                problems.append(f"{self.root}: no training folder (tried {tried}); {self.expected()}")
            else:
                logger.warning("%s: no %s folder under %s (tried %s); that split is not prepared", self.name, split,
                               self.root, ", ".join(candidates))
        cases = paired_splits(self, problems, folders, masks_optional=("val", "test"))
        log_counts(self, cases, self.published)
        return cases
