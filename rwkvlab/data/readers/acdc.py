"""ACDC cardiac cine MRI as converted to HDF5 by SSL4MIS and WSL4MIS (SPEC §8, §15).

Two layouts are published and told apart by their folders: WSL4MIS's ``ACDC_training_slices/`` +
``ACDC_training_volumes/`` (real frame numbers, slices from 0, an extra ``scribble`` key) and SSL4MIS's
own ``data/slices/`` + ``data/`` (frames renamed ``frame01``/``frame02``, slices from 1, with
``train.list``/``val.list``/``test.list``); copies in circulation also keep the slices in ``data/``
beside the volumes. The split is by patient number in both: patients 31-100 train on their 2D slices,
patients 21-30 (validation) and 1-20 (test) are evaluated on their volumes (SPEC §7). The other files
of each patient (volumes of training patients, slices of the others) and the ``.list`` files (SSL4MIS's
own split) are not used.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from rwkvlab.data.reader import Case, register_reader
from rwkvlab.data.readers._multiclass import ArrayFileReader, log_counts

logger = logging.getLogger(__name__)

__all__ = ["ACDC", "patient_split"]

# kind -> (file name pattern, the same for messages)
_NAMES = {"slice": (re.compile(r"patient(\d{3})_frame\d{2}_slice_\d+\.h5"), "patient<XXX>_frame<YY>_slice_<Z>.h5"),
          "volume": (re.compile(r"patient(\d{3})_frame\d{2}\.h5"), "patient<XXX>_frame<YY>.h5")}
_WSL4MIS = ("ACDC_training_slices", "ACDC_training_volumes")
_SPLITS = {"test": range(1, 21), "val": range(21, 31), "train": range(31, 101)}  # SPEC §8


def patient_split(patient: int) -> str | None:
    """The paper's split of an ACDC patient number; ``None`` outside the 100 training patients."""
    return next((split for split, numbers in _SPLITS.items() if patient in numbers), None)


@register_reader
class ACDC(ArrayFileReader):
    """SSL4MIS's and WSL4MIS's ACDC files: ``image`` float in [0, 1] and ``label`` 0-3 per slice and per volume."""

    name = "acdc"
    class_names = ("background", "rv", "myo", "lv")
    description = ("ACDC cardiac cine MRI (SSL4MIS/WSL4MIS h5): right ventricle, myocardium, left ventricle; "
                   "patients 31-100 train (slices), 21-30 val and 1-20 test (volumes)")
    layout = """
    either WSL4MIS's layout:
    ACDC_training_slices/patient<XXX>_frame<YY>_slice_<Z>.h5
        datasets image (H, W) float in [0, 1] and label (H, W) uint8 0-3 (scribble ignored)
    ACDC_training_volumes/patient<XXX>_frame<YY>.h5
        datasets image (D, H, W) float in [0, 1] and label (D, H, W) uint8 0-3
    or SSL4MIS's (frames frame01/frame02, slices from 1):
    data/slices/patient<XXX>_frame<YY>_slice_<Z>.h5   (or in data/ beside the volumes)
    data/patient<XXX>_frame<YY>.h5
    train.list, val.list, test.list                   (SSL4MIS's own split; not read)
    patients 001-100: 031-100 are read as slices (train), 021-030 and 001-020 as volumes (val, test)
    """
    published = {"train": "the slices of 70 patients", "val": "20 volumes", "test": "40 volumes"}  # 2 frames each

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        folders = self._folders(problems)
        if folders is None:
            return []
        slice_dir, volume_dir = folders
        if slice_dir == volume_dir:
            both = self._patients(problems, slice_dir, ("slice", "volume"))
            slices, volumes = both["slice"], both["volume"]
        else:
            slices = self._patients(problems, slice_dir, ("slice",))["slice"]
            volumes = self._patients(problems, volume_dir, ("volume",))["volume"]
        cases = []
        for patient in sorted(set(slices) | set(volumes)):
            split, group = patient_split(patient), f"patient{patient:03d}"
            files, folder, kind = (slices, slice_dir, "slice") if split == "train" else (volumes, volume_dir, "volume")
            if patient not in files:
                if files:  # else the folder itself was reported
                    problems.append(f"{folder}: no {kind} files of {group}, which the {split} split reads from here "
                                    f"(its other files exist); {self.expected()}")
                continue
            cases += [Case(path.name.removesuffix(".h5"), (path,), kind=kind, split=split, group=group)
                      for path in files[patient]]
        log_counts(self, cases, self.published)
        return cases

    def _folders(self, problems: list[str]) -> tuple[Path, Path] | None:
        """(slice folder, volume folder) of the layout found under the root; ``None`` after a problem."""
        wsl = [self.root / d for d in _WSL4MIS]
        ssl = self.root / "data"
        if any(d.is_dir() for d in wsl) and ssl.is_dir():
            problems.append(f"{self.root}: holds both WSL4MIS's {_WSL4MIS[0]}/ and SSL4MIS's data/; keep one layout")
            return None
        if any(d.is_dir() for d in wsl):
            return tuple(wsl) if self.require_dirs(problems, *wsl) else None
        if not ssl.is_dir():
            problems.append(f"{self.root}: neither {_WSL4MIS[0]}/ + {_WSL4MIS[1]}/ (WSL4MIS) nor data/ (SSL4MIS) "
                            f"found; {self.expected()}")
            return None
        if not self.require_dirs(problems, ssl):
            return None
        slices = ssl / "slices"
        return (slices if slices.is_dir() else ssl), ssl

    def _patients(self, problems: list[str], folder: Path, kinds: tuple[str, ...]) -> dict[str, dict[int, list[Path]]]:
        """The ``kinds`` files of ``folder`` by kind and patient; problems for misnamed files and unknown patients."""
        found: dict[str, dict[int, list[Path]]] = {kind: {} for kind in kinds}
        if not folder.is_dir():
            return found
        for path in sorted(folder.glob("*.h5")):
            kind, match = next(((k, m) for k in kinds if (m := _NAMES[k][0].fullmatch(path.name))), (None, None))
            if match is None:
                expected = " or ".join(_NAMES[k][1] for k in kinds)
                problems.append(f"{path}: unexpected file name; expected {expected}; {self.expected()}")
            elif patient_split(int(match[1])) is None:
                problems.append(f"{path}: patient {int(match[1])} is not one of ACDC's training patients 1-100")
            else:
                found[kind].setdefault(int(match[1]), []).append(path)
        return found
