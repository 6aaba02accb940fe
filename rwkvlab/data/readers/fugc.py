"""FUGC 2025 (ISBI 2025 Fetal Ultrasound Grand Challenge): semi-supervised cervix segmentation (docs §8, §15).

The challenge release has 50 labelled and 450 unlabelled training images, 90 validation and 300 test
images; it unpacks to ``FUGC (Dataset)/dataset/{train,val,test}``. Labels are single-channel PNGs of
class indices 0 background, 1 anterior lip, 2 posterior lip, as released; other encodings (such as
0/128/255 grey levels) are rejected rather than guessed.
"""

from __future__ import annotations

import logging

from rwkvlab.data.reader import Case, ImageMaskReader, register_reader
from rwkvlab.data.readers._multiclass import locate, log_counts, paired_splits

logger = logging.getLogger(__name__)

__all__ = ["FUGC"]

# Where the challenge folders may be under the root, in the order tried: the root is the ``dataset``
# folder, the ``FUGC (Dataset)`` folder the archive created, or the folder holding that one.
_BASES = (".", "dataset", "FUGC (Dataset)/dataset")


@register_reader
class FUGC(ImageMaskReader):
    """The challenge folders; unlabelled training images are cases with ``labelled=False`` in split ``unlabelled``.

    A validation or test folder without ``labels/`` (labels not part of the download) gives unlabelled
    cases of split ``val_unlabelled`` / ``test_unlabelled``, usable for prediction only.
    """

    name = "fugc"
    class_names = ("background", "anterior_lip", "posterior_lip")
    description = ("FUGC 2025 transvaginal cervix ultrasound: anterior and posterior lip; 50 labelled + "
                   "450 unlabelled train, 90 val, 300 test")
    layout = """
    FUGC (Dataset)/dataset/    as the archive unpacks; the root may also be FUGC (Dataset)/ or dataset/
      train/labeled_data/images/<id>.png     ultrasound image
      train/labeled_data/labels/<id>.png     class indices 0 background, 1 anterior lip, 2 posterior lip
      train/unlabeled_data/images/<id>.png   no labels
      val/images/<id>.png    [val/labels/<id>.png]    without labels/: unlabelled
      test/images/<id>.png   [test/labels/<id>.png]   without labels/: unlabelled
    """
    mask_values = {0: 0, 1: 1, 2: 2}
    published = {"train": "50 images", "unlabelled": "450 images", "val": "90 images", "test": "300 images"}

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        base = locate(self, problems, _BASES, holding="train")
        if base is None:
            problems.append(f"{self.root}: no train/ folder (tried {', '.join(f'{b}/train' for b in _BASES)}); "
                            f"{self.expected()}")
            return []
        cases = paired_splits(self, problems, [("train", base / "train" / "labeled_data", "images", "labels"),
                                               ("val", base / "val", "images", "labels"),
                                               ("test", base / "test", "images", "labels")],
                              masks_optional=("val", "test"))
        unlabelled = base / "train" / "unlabeled_data" / "images"
        if self.require_dirs(problems, unlabelled):
            cases += [Case(f"unlabelled_{path.stem}", (path,), split="unlabelled", labelled=False)
                      for path in sorted(unlabelled.iterdir()) if path.is_file() and not path.name.startswith(".")]
        log_counts(self, cases, self.published)
        return cases
