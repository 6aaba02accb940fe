"""Synapse multi-organ CT (BTCV) as preprocessed and listed by TransUNet (docs §8).

Training uses the 2D slices of the 18 volumes in ``lists_Synapse/train.txt``; evaluation the 12 volumes
in ``lists_Synapse/test_vol.txt`` (docs §7). There is no validation split: the paper tests the last epoch.
Files present but not listed are ignored, as TransUNet's loader does.

TransUNet's files carry no voxel size, so HD95 of Synapse is in voxels only. A test volume may hold an
optional ``spacing`` dataset (mm along its D, H, W axes), which is then kept for HD95 in mm; the synthetic
demo set writes one, the published files have none.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import h5py

from rwkvlab.data._base import DataError, check_spacing
from rwkvlab.data.reader import Case, Sample, register_reader
from rwkvlab.data.readers._multiclass import ArrayFileReader, log_counts

logger = logging.getLogger(__name__)

__all__ = ["Synapse"]

# (list entry pattern, the same for messages)
_SLICE_NAME = (re.compile(r"case\d+_slice\d+"), "case<XXXX>_slice<YYY>")
_VOLUME_NAME = (re.compile(r"case\d+"), "case<XXXX>")


@register_reader
class Synapse(ArrayFileReader):
    """TransUNet's Synapse files: training slices as npz, test volumes as HDF5, both named by list files.

    Labels may be stored as floats; they must be integral class indices.
    """

    name = "synapse"
    class_names = ("background", "aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas",
                   "spleen", "stomach")
    description = ("Synapse multi-organ CT (BTCV, TransUNet preprocessing, HU clipped to [-125, 275]): "
                   "8 organs, 18 training volumes as slices, 12 test volumes")
    layout = """
    train_npz/case<XXXX>_slice<YYY>.npz   arrays image (H, W) float in [0, 1], label (H, W) class indices
    test_vol_h5/case<XXXX>.npy.h5         datasets image (D, H, W) float in [0, 1], label (D, H, W),
                                          optional spacing (3,): mm along D, H, W (not in TransUNet's files)
    lists_Synapse/train.txt               one training slice per line, e.g. case0005_slice000
    lists_Synapse/test_vol.txt            one test volume per line, e.g. case0001
    """
    published = {"train": "the slices of 18 volumes", "test": "12 volumes"}

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        train = [Case(name, (path,), kind="slice", split="train", group=name.split("_slice")[0])
                 for name, path in self._listed(problems, "train.txt", "train_npz", ".npz", _SLICE_NAME)]
        test = [Case(name, (path,), kind="volume", split="test", group=name)
                for name, path in self._listed(problems, "test_vol.txt", "test_vol_h5", ".npy.h5", _VOLUME_NAME)]
        for shared in sorted({c.group for c in train} & {c.group for c in test}):
            problems.append(f"{self.root / 'lists_Synapse'}: {shared} is listed in both train.txt and "
                            f"test_vol.txt; a volume must be in one split only")
        cases = train + test
        log_counts(self, cases, self.published)
        return cases

    def load(self, case: Case) -> Sample:
        sample = super().load(case)
        if case.kind == "volume":
            sample.spacing = _optional_spacing(case.files[0])
        return sample

    def _listed(self, problems: list[str], list_name: str, folder: str, suffix: str,
                entry: tuple[re.Pattern, str]) -> list[tuple[str, Path]]:
        """The (name, file) pairs listed in ``lists_Synapse/<list_name>``; problems for bad lines and missing files."""
        list_file = self.root / "lists_Synapse" / list_name
        data_dir = self.root / folder
        if not list_file.is_file():
            problems.append(f"{list_file}: list file not found; {self.expected()}")
            return []
        if not self.require_dirs(problems, data_dir):
            return []
        entries = [(i, line.strip()) for i, line in enumerate(list_file.read_text().splitlines(), 1) if line.strip()]
        if not entries:
            problems.append(f"{list_file}: list file is empty; {self.expected()}")
        listed = []
        for i, name in entries:
            path = data_dir / f"{name}{suffix}"
            if not entry[0].fullmatch(name):
                problems.append(f"{list_file}, line {i}: {name!r} is not a name like {entry[1]}")
            elif not path.is_file():
                problems.append(f"{path}: listed in {list_file} (line {i}) but not found")
            else:
                listed.append((name, path))
        return listed


def _optional_spacing(path: Path) -> tuple[float, float, float] | None:
    """The ``spacing`` dataset of a test volume's HDF5 file, ``None`` when it has none (TransUNet's files)."""
    try:
        with h5py.File(path, "r") as h5:
            found = h5.get("spacing")
            values = found[()] if isinstance(found, h5py.Dataset) else None
    except OSError as e:
        raise DataError(f"{path}: unreadable or truncated ({type(e).__name__}: {e})") from e
    return None if values is None else check_spacing(values, path)
