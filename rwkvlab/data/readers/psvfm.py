"""PSVFM: placental vessel segmentation in fetoscopy videos, split by video (docs §8, §15)."""

from __future__ import annotations

import logging
from typing import Sequence

from rwkvlab.data._base import pair_folder, read_image, read_mask
from rwkvlab.data.reader import Case, ImageMaskReader, Sample, register_reader

logger = logging.getLogger(__name__)

__all__ = ["PSVFM", "VIDEOS"]

# The release's video folders in order: the paper's videos 1-6 (docs §15).
VIDEOS = ("anon001", "anon002", "anon003", "anon005", "anon010", "anon012")
# The paper's split is by video, so frames of one procedure never straddle train and test.
_VIDEO_SPLIT = dict(zip(VIDEOS, ("train", "train", "train", "val", "test", "test")))


@register_reader
class PSVFM(ImageMaskReader):
    """Placental vessels in fetoscopy (Bano et al., MICCAI 2020): annotated frames of six in-vivo videos.

    One folder per video as released (``anon001`` ... ``anon012``, see :data:`VIDEOS`), holding
    ``images/<frame>.png`` and ``masks/<frame>.png`` with the same file names. The case id is
    ``<video folder>_<frame>`` and the case's ``group`` is the video folder. Masks are read as RGB and
    binarised > 0 in any channel, as the authors do. The paper's split is videos 1-3 train, 4 val,
    5-6 test; the authors' leave-one-video-out folds are extra splits ``loo_<video>`` (the held-out
    video is the test split, the other five train). Any other folder under the root is a problem.
    """

    name = "psvfm"
    class_names = ("background", "vessel")
    description = "PSVFM fetoscopy: 483 frames from 6 placental videos with vessel masks"
    layout = """
    anon001/images/<frame>.png     fetoscopic frames; videos 1-6 are anon001 anon002 anon003 anon005 anon010 anon012
    anon001/masks/<frame>.png      vessel masks (RGB or grey), binarised > 0, same file names
    anon002/ ... anon012/          same layout
    split by video: 1-3 train, 4 val, 5-6 test; leave-one-video-out folds in loo_<video>.json
    """

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        cases = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in _VIDEO_SPLIT:
                problems.append(f"{folder}: not one of the published video folders {', '.join(VIDEOS)}; "
                                f"{self.expected()}")
                continue
            for cid, image, mask in pair_folder(folder, "images", "masks", problems, expected=self.expected(),
                                                id_prefix=f"{folder.name}_"):
                cases.append(Case(cid, (image, mask), split=_VIDEO_SPLIT[folder.name], group=folder.name))
        for number, video in enumerate(VIDEOS, 1):
            if not (self.root / video).is_dir():
                problems.append(f"{self.root / video}: folder not found (video {number}, official "
                                f"{_VIDEO_SPLIT[video]} split); {self.expected()}")
        return cases

    def load(self, case: Case) -> Sample:
        image = read_image(case.files[0])
        return Sample(image, read_mask(case.files[1], shape=image.shape[:2], threshold=0, any_channel=True))

    def extra_splits(self, cases: Sequence[Case]) -> dict[str, dict[str, list[str]]]:
        """The leave-one-video-out folds: ``loo_<video>`` tests on that video and trains on the other five."""
        return {f"loo_{video}": {"train": sorted(c.case_id for c in cases if c.group != video),
                                 "test": sorted(c.case_id for c in cases if c.group == video)}
                for video in VIDEOS}
