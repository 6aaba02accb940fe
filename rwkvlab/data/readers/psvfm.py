"""PSVFM: placental vessel segmentation in fetoscopy videos, split by video (SPEC §8)."""

from __future__ import annotations

import logging
import re

from rwkvlab.data._base import pair_folder
from rwkvlab.data.reader import Case, ImageMaskReader, register_reader

logger = logging.getLogger(__name__)

__all__ = ["PSVFM"]

_VIDEO = re.compile(r"video0*(\d+)")
# The official split is by video, so frames of one procedure never straddle train and test.
_VIDEO_SPLIT = {1: "train", 2: "train", 3: "train", 4: "val", 5: "test", 6: "test"}


@register_reader
class PSVFM(ImageMaskReader):
    """Placental vessels in fetoscopy (Bano et al., MICCAI 2020): annotated frames of six in-vivo videos.

    Layout assumption: one folder per video, ``video<K>`` (``K`` = 1..6, leading zeros allowed, as
    in ``video01``), holding ``images/<frame>.png`` and ``masks/<frame>.png`` with the same file
    names. The case id is ``<video folder>_<frame>`` and the case's ``group`` is the video folder.
    Videos 1-3 are train, 4 val and 5-6 test. Other entries of the root are ignored.
    """

    name = "psvfm"
    class_names = ("background", "vessel")
    description = "PSVFM fetoscopy: 483 frames from 6 placental videos with vessel masks"
    layout = """
    video<K>/images/<frame>.png     fetoscopic frames; K = 1..6 (video1 or video01)
    video<K>/masks/<frame>.png      vessel masks, 0 background / 255 vessel, same file names
    split by video: 1-3 train, 4 val, 5-6 test
    """
    mask_values = {0: 0, 255: 1}

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        found: set[int] = set()
        cases = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            match = _VIDEO.fullmatch(folder.name)
            if match is None:
                continue
            video = int(match[1])
            if video not in _VIDEO_SPLIT:
                problems.append(f"{folder}: video {video} is not one of the published videos 1-6; {self.expected()}")
                continue
            found.add(video)
            for frame, image, mask in pair_folder(folder, "images", "masks", problems, expected=self.expected()):
                cases.append(Case(f"{folder.name}_{frame}", (image, mask), split=_VIDEO_SPLIT[video],
                                  group=folder.name))
        for video in sorted(set(_VIDEO_SPLIT) - found):
            problems.append(f"{self.root}: no folder for video {video} (video{video} or video0{video}, official "
                            f"{_VIDEO_SPLIT[video]} split); {self.expected()}")
        return cases
