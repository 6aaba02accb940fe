"""Kvasir-SEG: colonoscopy images with polyp masks (docs §8), split 8:1:1 by seed."""

from __future__ import annotations

import logging

from rwkvlab.data.reader import register_reader
from rwkvlab.data.readers._binary import PairedFolderReader

logger = logging.getLogger(__name__)

__all__ = ["KvasirSEG"]


@register_reader
class KvasirSEG(PairedFolderReader):
    """Kvasir-SEG as published: ``images/<id>.jpg`` and ``masks/<id>.jpg``, case id ``<id>``.

    The masks are JPEG, so compression leaves grey values around 0 and 255; they are binarised
    above 127. ``kavsir_bboxes.json`` beside the folders is not read.
    """

    name = "kvasir_seg"
    class_names = ("background", "polyp")
    description = "Kvasir-SEG colonoscopy: 1000 images of varying size with polyp masks"
    layout = """
    images/<id>.jpg             colonoscopy images (sizes vary)
    masks/<id>.jpg              polyp masks, ~0 background / ~255 polyp (JPEG; binarised > 127)
    """
    image_dir = "images"
    mask_dir = "masks"
    mask_threshold = 127
