"""ACDC cardiac cine MRI as converted to HDF5 by SSL4MIS (SPEC §8).

The split is by patient number: patients 31-100 train on their 2D slices, patients 21-30 (validation)
and 1-20 (test) are evaluated on their volumes (SPEC §7). The other files of each patient (volumes of
training patients, slices of the others) are not used.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from rwkvlab.data.reader import Case, register_reader
from rwkvlab.data.readers._multiclass import ArrayFileReader, log_counts

logger = logging.getLogger(__name__)

__all__ = ["ACDC", "patient_split"]

# (file name pattern, the same for messages)
_SLICE_NAME = (re.compile(r"patient(\d{3})_frame\d{2}_slice_\d+\.h5"), "patient<XXX>_frame<YY>_slice_<Z>.h5")
_VOLUME_NAME = (re.compile(r"patient(\d{3})_frame\d{2}\.h5"), "patient<XXX>_frame<YY>.h5")
_SPLITS = {"test": range(1, 21), "val": range(21, 31), "train": range(31, 101)}  # SPEC §8


def patient_split(patient: int) -> str | None:
    """The paper's split of an ACDC patient number; ``None`` outside the 100 training patients."""
    return next((split for split, numbers in _SPLITS.items() if patient in numbers), None)


@register_reader
class ACDC(ArrayFileReader):
    """SSL4MIS's ACDC files: ``image`` float in [0, 1] and ``label`` 0-3 per slice and per volume."""

    name = "acdc"
    class_names = ("background", "rv", "myo", "lv")
    description = ("ACDC cardiac cine MRI (SSL4MIS h5): right ventricle, myocardium, left ventricle; "
                   "patients 31-100 train (slices), 21-30 val and 1-20 test (volumes)")
    layout = """
    ACDC_training_slices/patient<XXX>_frame<YY>_slice_<Z>.h5
        datasets image (H, W) float in [0, 1] and label (H, W) uint8 0-3
    ACDC_training_volumes/patient<XXX>_frame<YY>.h5
        datasets image (D, H, W) float in [0, 1] and label (D, H, W) uint8 0-3
    patients 001-100: 031-100 are read as slices (train), 021-030 and 001-020 as volumes (val, test)
    """
    published = {"train": "the slices of 70 patients", "val": "20 volumes", "test": "40 volumes"}  # 2 frames each

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        slice_dir, volume_dir = self.root / "ACDC_training_slices", self.root / "ACDC_training_volumes"
        self.require_dirs(problems, slice_dir, volume_dir)
        slices = self._patients(problems, slice_dir, _SLICE_NAME)
        volumes = self._patients(problems, volume_dir, _VOLUME_NAME)
        cases = []
        for patient in sorted(set(slices) | set(volumes)):
            split, group = patient_split(patient), f"patient{patient:03d}"
            files, folder, kind = (slices, slice_dir, "slice") if split == "train" else (volumes, volume_dir, "volume")
            if patient not in files:
                if files:  # else require_dirs reported the folder itself
                    problems.append(f"{folder}: no {kind} files of {group}, which the {split} split reads from here "
                                    f"(its other files exist); {self.expected()}")
                continue
            cases += [Case(path.name.removesuffix(".h5"), (path,), kind=kind, split=split, group=group)
                      for path in files[patient]]
        log_counts(self, cases, self.published)
        return cases

    def _patients(self, problems: list[str], folder: Path,
                  name: tuple[re.Pattern, str]) -> dict[int, list[Path]]:
        """The files of ``folder`` by patient number; problems for misnamed files and unknown patients."""
        found: dict[int, list[Path]] = {}
        if not folder.is_dir():
            return found
        for path in sorted(folder.glob("*.h5")):
            match = name[0].fullmatch(path.name)
            if match is None:
                problems.append(f"{path}: unexpected file name; expected {name[1]}; {self.expected()}")
            elif patient_split(int(match[1])) is None:
                problems.append(f"{path}: patient {int(match[1])} is not one of ACDC's training patients 1-100")
            else:
                found.setdefault(int(match[1]), []).append(path)
        return found
