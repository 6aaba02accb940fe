"""ACDC cardiac cine MRI as converted to HDF5 by SSL4MIS and WSL4MIS (docs §8, §15), or as released in NIfTI.

Three layouts are read and told apart by their folders: WSL4MIS's ``ACDC_training_slices/`` +
``ACDC_training_volumes/`` (real frame numbers, slices from 0, an extra ``scribble`` key) and SSL4MIS's
own ``data/slices/`` + ``data/`` (frames renamed ``frame01``/``frame02``, slices from 1, with
``train.list``/``val.list``/``test.list``); copies in circulation also keep the slices in ``data/``
beside the volumes. The split is by patient number in both: patients 31-100 train on their 2D slices,
patients 21-30 (validation) and 1-20 (test) are evaluated on their volumes (docs §7). The other files
of each patient (volumes of training patients, slices of the others) and the ``.list`` files (SSL4MIS's
own split) are not used.

The third is the challenge's own release, ``training/patient<XXX>/patient<XXX>_frame<YY>[_gt].nii.gz``
(also under ``database/``), which the h5 files were converted from. It is read as SSL4MIS's
``acdc_data_processing.py`` converts it, so that it gives the h5 layouts' arrays: SimpleITK's array order
(the NIfTI voxel axes reversed, i.e. (D, H, W) = (k, j, i)) and each frame's image min-max scaled to
[0, 1] in its stored dtype, then float32; slices are numbered from 0 with the real frame numbers, as
WSL4MIS names them. Unlike the h5 files, the NIfTI header carries the voxel size: volumes keep it, in mm
along (D, H, W), for HD95 in mm (docs §7). Not checked on the real release.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from rwkvlab.data._base import DataError, Problem, check_spacing
from rwkvlab.data.reader import Case, Sample, register_reader
from rwkvlab.data.readers._multiclass import ArrayFileReader, class_label, log_counts, unit_image

logger = logging.getLogger(__name__)

__all__ = ["ACDC", "patient_split"]

# kind -> (file name pattern, the same for messages)
_NAMES = {"slice": (re.compile(r"patient(\d{3})_frame\d{2}_slice_\d+\.h5"), "patient<XXX>_frame<YY>_slice_<Z>.h5"),
          "volume": (re.compile(r"patient(\d{3})_frame\d{2}\.h5"), "patient<XXX>_frame<YY>.h5")}
_WSL4MIS = ("ACDC_training_slices", "ACDC_training_volumes")
_NIFTI = ("training", "database/training")  # the 2017 release; its 2023 re-release nests it in database/
_NIFTI_FRAME = re.compile(r"(patient(\d{3})_frame\d{2})\.nii(?:\.gz)?")
_SLICE_INDEX = re.compile(r"_slice_(\d+)$")
_SPLITS = {"test": range(1, 21), "val": range(21, 31), "train": range(31, 101)}  # docs §8


def patient_split(patient: int) -> str | None:
    """The paper's split of an ACDC patient number; ``None`` outside the 100 training patients."""
    return next((split for split, numbers in _SPLITS.items() if patient in numbers), None)


@register_reader
class ACDC(ArrayFileReader):
    """SSL4MIS's and WSL4MIS's ACDC files: ``image`` float in [0, 1] and ``label`` 0-3 per slice and per volume."""

    name = "acdc"
    class_names = ("background", "rv", "myo", "lv")
    description = ("ACDC cardiac cine MRI (SSL4MIS/WSL4MIS h5 or the NIfTI release): right ventricle, myocardium, "
                   "left ventricle; patients 31-100 train (slices), 21-30 val and 1-20 test (volumes)")
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
    or the challenge's NIfTI release (also under database/; the voxel size is kept for HD95 in mm):
    training/patient<XXX>/patient<XXX>_frame<YY>.nii.gz      image (X, Y, Z), any intensities
    training/patient<XXX>/patient<XXX>_frame<YY>_gt.nii.gz   label 0-3 (Info.cfg, *_4d.nii.gz not read)
    patients 001-100: 031-100 are read as slices (train), 021-030 and 001-020 as volumes (val, test)
    """
    published = {"train": "the slices of 70 patients", "val": "20 volumes", "test": "40 volumes"}  # 2 frames each

    def _nifti_layout(self, problems: list[str]) -> tuple[bool, Path | None]:
        """Whether the root holds the NIfTI release, and its folder; ``None`` (a problem appended) when the root
        also holds another layout."""
        nifti = [d for d in _NIFTI if (self.root / d).is_dir()]
        if not nifti:
            return False, None
        found = [d for d in (*_WSL4MIS, "data") if (self.root / d).is_dir()] + nifti
        if len(found) > 1:
            problems.append(f"{self.root}: holds {', '.join(f'{d}/' for d in found)}; keep one layout")
            return True, None
        return True, self.root / nifti[0]

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        is_nifti, folder = self._nifti_layout(problems)
        if is_nifti:
            if folder is None:
                return []
            cases = self._scan_nifti(problems, folder)
            log_counts(self, cases, self.published)
            return cases
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
                            f"nor training/ (the NIfTI release) found; {self.expected()}")
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

    def _scan_nifti(self, problems: list[str], folder: Path) -> list[Case]:
        """Cases of the NIfTI release under ``folder``: a training patient's frame per slice, the others' per frame."""
        if not self.require_dirs(problems, folder):
            return []
        cases = []
        for path in sorted(folder.glob("patient*/patient*_frame*.nii*")):
            match = _NIFTI_FRAME.fullmatch(path.name)
            if match is None:  # the _gt partners, and files that are no frame at all
                if not re.fullmatch(r"patient\d{3}_frame\d{2}_gt\.nii(?:\.gz)?", path.name):
                    problems.append(f"{path}: unexpected file name; expected patient<XXX>_frame<YY>.nii.gz and "
                                    f"patient<XXX>_frame<YY>_gt.nii.gz; {self.expected()}")
                continue
            name, patient = match[1], int(match[2])
            split = patient_split(patient)
            if split is None:
                problems.append(f"{path}: patient {patient} is not one of ACDC's training patients 1-100")
                continue
            gt = path.with_name(path.name.replace(".nii", "_gt.nii", 1))
            if not gt.is_file():
                problems.append(Problem(f"{path}: no label; expected {gt}", case=name))
                continue
            group = f"patient{patient:03d}"
            if split != "train":
                cases.append(Case(name, (path, gt), kind="volume", split=split, group=group))
                continue
            try:
                shape = nib.load(path).shape  # the header only
            except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
                problems.append(Problem(f"{path}: unreadable NIfTI header ({type(e).__name__}: {e})", case=name))
                continue
            if len(shape) != 3:
                problems.append(Problem(f"{path}: image has shape {shape}, expected one 3D frame (X, Y, Z)", case=name))
                continue
            cases += [Case(f"{name}_slice_{z}", (path, gt), kind="slice", split=split, group=group)
                      for z in range(shape[2])]
        if not cases and not problems:
            problems.append(f"{folder}: no patient<XXX>/patient<XXX>_frame<YY>.nii.gz files; {self.expected()}")
        return cases

    def load(self, case: Case) -> Sample:
        if not case.files[0].name.endswith((".nii", ".nii.gz")):
            return super().load(case)
        image, label, spacing = _nifti_frame(*case.files, *(f.stat().st_mtime_ns for f in case.files),
                                             num_classes=len(self.class_names))
        if case.kind == "slice":
            z = int(_SLICE_INDEX.search(case.case_id)[1])
            return Sample(image[z], label[z])
        return Sample(image, label, spacing)


@functools.lru_cache(maxsize=2)  # a training frame's slices are loaded one after another: read it once
def _nifti_frame(image_path: Path, label_path: Path, image_mtime: int, label_mtime: int, num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One NIfTI frame as SSL4MIS converts it: image float32 (D, H, W) in [0, 1], label uint8, spacing (mm, D H W).

    The modification times are part of the cache key only, so a rewritten file is read again. The arrays are
    read-only: slices of one frame share them.
    """
    arrays = []
    for path in (image_path, label_path):
        try:
            nifti = nib.load(path)
            array = np.asarray(nifti.dataobj)
        except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
            raise DataError(f"{path}: unreadable or truncated NIfTI ({type(e).__name__}: {e})") from e
        if array.ndim != 3:
            raise DataError(f"{path}: has shape {array.shape}, expected one 3D frame (X, Y, Z)")
        # SimpleITK's GetArrayFromImage, which SSL4MIS reads with, reverses nibabel's voxel axes (i, j, k).
        arrays.append((array.transpose(2, 1, 0), nifti.header.get_zooms()[:3][::-1]))
    (raw, zooms), (gt, _) = arrays
    lo, hi = raw.min(), raw.max()
    if not np.isfinite([lo, hi]).all() or lo == hi:
        raise DataError(f"{image_path}: image intensities span [{lo}, {hi}], expected finite, non-constant values "
                        f"to scale to [0, 1]")
    image = unit_image(((raw - lo) / (hi - lo)).astype(np.float32), image_path, ndim=3)
    label = class_label(gt, label_path, image.shape, num_classes)
    spacing = check_spacing(np.asarray(zooms, dtype=np.float64), image_path)
    for a in (image, label):
        a.setflags(write=False)
    return image, label, spacing
