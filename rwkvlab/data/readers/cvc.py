"""CVC-ClinicDB and CVC-ColonDB: colonoscopy frames with polyp masks (docs §8), split 8:1:1 by seed."""

from __future__ import annotations

import logging

from rwkvlab.data.reader import register_reader
from rwkvlab.data.readers._binary import PairedFolderReader

logger = logging.getLogger(__name__)

__all__ = ["CVCClinicDB", "CVCColonDB"]


@register_reader
class CVCClinicDB(PairedFolderReader):
    """CVC-ClinicDB as published: ``Original/<N>.tif`` and ``Ground Truth/<N>.tif``, case id ``<N>``.

    The ground-truth TIFFs may be RGB and carry a few intermediate grey values along the polyp
    border, so masks are read as grey and binarised above 127 instead of requiring exactly 0/255.
    """

    name = "cvc_clinicdb"
    class_names = ("background", "polyp")
    description = "CVC-ClinicDB colonoscopy: 612 frames (384x288) with polyp masks"
    layout = """
    Original/<N>.tif            colonoscopy frames, N = 1..612
    Ground Truth/<N>.tif        polyp masks, 0 background / 255 polyp (grey or RGB; binarised > 127)
    """
    image_dir = "Original"
    mask_dir = "Ground Truth"
    mask_threshold = 127


@register_reader
class CVCColonDB(PairedFolderReader):
    """CVC-ColonDB as published: ``images/<N>.png`` and ``masks/<N>.png`` (lossless, exactly 0/255), case id ``<N>``."""

    name = "cvc_colondb"
    class_names = ("background", "polyp")
    description = "CVC-ColonDB colonoscopy: 380 frames with polyp masks"
    layout = """
    images/<N>.png              colonoscopy frames, N = 1..380
    masks/<N>.png               polyp masks, values 0 (background) and 255 (polyp)
    """
    image_dir = "images"
    mask_dir = "masks"
    mask_values = {0: 0, 255: 1}
