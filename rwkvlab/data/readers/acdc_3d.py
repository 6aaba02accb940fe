"""ACDC cardiac cine MRI as 3D volumes: every frame of every patient a volume case (docs §19).

The ``acdc`` reader trains on the 2D slices of patients 31-100; this one gives the same release as
volumes for a 3D model: both frames of each of the 100 training patients, in the paper's split by patient
(31-100 train, 21-30 val, 1-20 test, docs §8). Frames are read exactly as the ``acdc`` reader reads its
volumes (same arrays, intensities min-max scaled per frame as SSL4MIS does). The challenge's NIfTI release
is the intended layout: its volumes keep their voxel size (about 1.5 x 1.5 mm in plane, 5-10 mm between
slices), so ``target_spacing`` can resample them. The h5 conversions of WSL4MIS and SSL4MIS are read too,
from their volume folders, but carry no voxel size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from rwkvlab.data._base import DataError
from rwkvlab.data.reader import Case, Sample, register_reader
from rwkvlab.data.readers._multiclass import log_counts
from rwkvlab.data.readers.acdc import _SLICE_INDEX, ACDC, patient_split
from rwkvlab.data.readers.msd import resample_volume, target_spacing_option

logger = logging.getLogger(__name__)

__all__ = ["ACDC3D"]


@register_reader
class ACDC3D(ACDC):
    """ACDC's frames as volumes, all three splits, from the NIfTI release (or an h5 volume folder).

    Args:
        root: the release as for :class:`~rwkvlab.data.readers.acdc.ACDC`.
        target_spacing: (z, y, x) mm to resample every frame to (order-3 image, nearest label); needs the
            NIfTI release's voxel size. ``None`` keeps the native spacing.
    """

    name = "acdc_3d"
    description = ("ACDC cardiac cine MRI as 3D volumes (NIfTI release, min-max scaled per frame): right ventricle, "
                   "myocardium, left ventricle; patients 31-100 train, 21-30 val, 1-20 test, two frames each")
    layout = """
    the challenge's NIfTI release (also under database/; the voxel size is kept):
    training/patient<XXX>/patient<XXX>_frame<YY>.nii.gz      image (X, Y, Z), any intensities
    training/patient<XXX>/patient<XXX>_frame<YY>_gt.nii.gz   label 0-3 (Info.cfg, *_4d.nii.gz not read)
    or the volume folder of an h5 conversion (no voxel size): ACDC_training_volumes/ (WSL4MIS, beside
    ACDC_training_slices/) or data/ (SSL4MIS), patient<XXX>_frame<YY>.h5 with image (D, H, W) and label
    every frame of patients 001-100 is a volume: 031-100 train, 021-030 val, 001-020 test
    options: target_spacing
    """
    published = {"train": "140 volumes", "val": "20 volumes", "test": "40 volumes"}  # 2 frames per patient

    def __init__(self, root: Path, target_spacing: Sequence[float] | None = None) -> None:
        super().__init__(root)
        self.target_spacing = target_spacing_option(target_spacing)

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        is_nifti, folder = self._nifti_layout(problems)
        if is_nifti:
            if folder is None:
                return []
            cases = _as_volumes(self._scan_nifti(problems, folder))
        else:
            folders = self._folders(problems)
            if folders is None:
                return []
            slice_dir, volume_dir = folders
            kinds = ("slice", "volume") if slice_dir == volume_dir else ("volume",)
            volumes = self._patients(problems, volume_dir, kinds)["volume"]
            if not volumes and not problems:
                problems.append(f"{volume_dir}: no patient<XXX>_frame<YY>.h5 volumes; {self.expected()}")
            cases = [Case(path.name.removesuffix(".h5"), (path,), kind="volume", split=patient_split(patient),
                          group=f"patient{patient:03d}")
                     for patient in sorted(volumes) for path in volumes[patient]]
        log_counts(self, cases, self.published)
        return cases

    def load(self, case: Case) -> Sample:
        sample = super().load(case)
        if self.target_spacing is None:
            return sample
        if sample.spacing is None:
            raise DataError(f"{case.files[0]}: has no voxel size, which target_spacing needs; use the NIfTI release "
                            f"or leave target_spacing unset")
        image, label, spacing = resample_volume(sample.image, sample.label, sample.spacing, self.target_spacing)
        return Sample(image, label, spacing)


def _as_volumes(cases: list[Case]) -> list[Case]:
    """The ACDC reader's NIfTI cases with each training frame's slices folded back into one volume case."""
    out: dict[tuple[Path, ...], Case] = {}
    for case in cases:
        if case.kind == "slice":
            name = case.case_id[: _SLICE_INDEX.search(case.case_id).start()]
            case = Case(name, case.files, kind="volume", split=case.split, group=case.group)
        out.setdefault(case.files, case)
    return list(out.values())
