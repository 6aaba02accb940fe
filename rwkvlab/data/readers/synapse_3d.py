"""Synapse multi-organ CT as 3D volumes, read from BTCV's raw NIfTI release (docs §19).

The 30 labelled training scans of the MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault" abdomen
challenge (``RawData/Training/img/img<XXXX>.nii.gz`` with ``label/label<XXXX>.nii.gz``) are the volumes
TransUNet's ``synapse`` files were made from. This reader gives them as volume cases with TransUNet's
case ids (``img0008`` -> ``case0008``), its split (the 12 volumes of ``lists_Synapse/test_vol.txt`` test,
the other 18 train, no validation) and its 8 classes: BTCV's 13 labels are mapped to the ``synapse``
reader's classes and the other five organs (oesophagus, inferior vena cava, portal and splenic vein,
adrenal glands) become background. Intensities are Hounsfield units clipped to TransUNet's window
[-125, 275] and scaled to [0, 1]; unlike TransUNet's files the volumes keep their voxel size, at native
resolution unless ``target_spacing`` is given. The axis order is that of every NIfTI reader here (docs §19);
whether it matches the orientation of TransUNet's h5 volumes was not checked (their conversion script is
not published). ``RawData/Testing`` has no labels and is not read.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

from rwkvlab.data._base import Problem
from rwkvlab.data.reader import Case, register_reader
from rwkvlab.data.readers._multiclass import locate, log_counts
from rwkvlab.data.readers.msd import NiftiVolumeReader
from rwkvlab.data.readers.synapse import Synapse

logger = logging.getLogger(__name__)

__all__ = ["Synapse3D", "BTCV_TO_SYNAPSE", "TEST_CASES", "TRAIN_CASES"]

# BTCV's label values: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver,
# 7 stomach, 8 aorta, 9 inferior vena cava, 10 portal and splenic vein, 11 pancreas, 12 right and
# 13 left adrenal gland; mapped to the synapse reader's 1 aorta ... 8 stomach (docs §8), the rest to 0.
BTCV_TO_SYNAPSE = {0: 0, 1: 7, 2: 4, 3: 3, 4: 2, 5: 0, 6: 5, 7: 8, 8: 1, 9: 0, 10: 0, 11: 6, 12: 0, 13: 0}
# TransUNet's lists_Synapse/test_vol.txt, and the other 18 of BTCV's 30 labelled scans (train.txt's volumes).
TEST_CASES = tuple(f"case{n:04d}" for n in (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38))
TRAIN_CASES = tuple(f"case{n:04d}" for n in (*range(1, 11), *range(21, 41)) if f"case{n:04d}" not in TEST_CASES)
_IMAGE = re.compile(r"img(\d{4})(\.nii(?:\.gz)?)")
_ROOTS = ("RawData/Training", "Training", "Abdomen/RawData/Training")  # as unpacked, or one level in or out


@register_reader
class Synapse3D(NiftiVolumeReader):
    """BTCV's raw abdomen CT as TransUNet's Synapse volumes: 18 train, 12 test, 8 organs, HU windowed.

    Args:
        root: the folder holding ``RawData/`` (or ``RawData`` itself).
        window: (lo, hi) HU clipped and scaled to [0, 1]; default TransUNet's [-125, 275].
        target_spacing, orientation: see :class:`~rwkvlab.data.readers.msd.NiftiVolumeReader`.
    """

    name = "synapse_3d"
    class_names = Synapse.class_names
    description = ("Synapse multi-organ CT as 3D volumes (BTCV raw NIfTI, HU clipped to [-125, 275], native voxel "
                   "size): 8 organs, TransUNet's 18 training and 12 test volumes")
    layout = """
    RawData/Training/img/img<XXXX>.nii.gz       CT in HU, the 30 labelled scans 0001-0010, 0021-0040
    RawData/Training/label/label<XXXX>.nii.gz   BTCV's labels 0-13, mapped to Synapse's 8 organs
    RawData/Testing/                            no labels: not read
    (the root may also be RawData/ itself); cases case<XXXX>: the 12 of TransUNet's test_vol.txt test,
    the other 18 train; options: window, target_spacing, orientation
    """
    published = {"train": "18 volumes", "test": "12 volumes"}
    label_values = BTCV_TO_SYNAPSE
    label_source = "BTCV (0-13)"

    def __init__(self, root: Path, window: Sequence[float] | None = None, target_spacing: Sequence[float] | None = None,
                 orientation: str = "voxel") -> None:
        super().__init__(root, "ct", window, target_spacing=target_spacing, orientation=orientation)

    def intensity_mode(self) -> str:
        return "ct"

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        training = locate(self, problems, _ROOTS, "img")
        if training is None:
            problems.append(f"{self.root}: no RawData/Training/img folder; {self.expected()}")
            return []
        images, labels = training / "img", training / "label"
        if not self.require_dirs(problems, images, labels):
            return []
        known = set(TRAIN_CASES) | set(TEST_CASES)
        cases = []
        for path in sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith(".")):
            match = _IMAGE.fullmatch(path.name)
            if match is None:
                problems.append(f"{path}: unexpected file name; expected img<XXXX>.nii.gz; {self.expected()}")
                continue
            cid = f"case{match[1]}"
            if cid not in known:
                problems.append(f"{path}: img{match[1]} is not one of BTCV's 30 labelled training scans "
                                f"(0001-0010, 0021-0040)")
                continue
            label = labels / f"label{match[1]}{match[2]}"
            if not label.is_file():
                problems.append(Problem(f"{path}: no label; expected {label}", case=cid))
                continue
            cases.append(Case(cid, (path, label), kind="volume", split="test" if cid in TEST_CASES else "train",
                              group=cid))
        if not cases and not problems:
            problems.append(f"{images}: no img<XXXX>.nii.gz files; {self.expected()}")
        if (training.parent / "Testing").is_dir():
            logger.info("%s: %s has no labels and is not used", self.name, training.parent / "Testing")
        log_counts(self, cases, self.published)
        return cases

