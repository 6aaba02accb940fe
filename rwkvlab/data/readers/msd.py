"""3D volumes in the Medical Segmentation Decathlon / nnU-Net raw layout (docs §19).

``imagesTr/`` holds the training images, ``labelsTr/`` one label per case and ``dataset.json`` the class
names and the input channels. Two namings are read, told apart by ``dataset.json``:

* nnU-Net v2 (``channel_names``, labels ``{"background": 0, ...}``, ``file_ending``): one file per channel,
  ``imagesTr/<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...;
* the Decathlon's own (``modality``, labels ``{"0": "background", ...}``): ``imagesTr/<case>.nii.gz``,
  4D (X, Y, Z, C) when the task has several modalities.

Every labelled training case becomes a ``volume`` case; ``imagesTs/`` has no labels and is not read. The
split is a seeded 8:1:1 one (docs §8) over those cases.

Orientation (the convention of every NIfTI reader here): the array nibabel returns is indexed (i, j, k)
along the file's voxel axes; it is reversed to (D, H, W) = (k, j, i), which is SimpleITK's and nnU-Net's
array order and the one the ACDC reader uses. For the axial scans of these releases k is the slice axis
(z), so D counts slices, H rows (y) and W columns (x); the spacing is the header's voxel size reversed
the same way, in mm along (D, H, W). ``orientation: ras`` first turns the volume to the closest canonical
(RAS+) orientation, so that D, H, W run inferior -> superior, posterior -> anterior, left -> right whatever
the file's storage order; the default keeps the stored voxel order, as nnU-Net does.

Intensities become float32 in [0, 1] per volume: ``ct`` clips Hounsfield units to a window and scales
it (TransUNet's abdominal window [-125, 275] by default), ``percentile`` clips to the volume's 0.5 and
99.5 percentiles and scales (for MRI, whose units are arbitrary). The default follows ``dataset.json``:
``ct`` for a channel named CT, ``percentile`` otherwise. ``target_spacing`` resamples each volume to a
common voxel size; by default volumes keep their native spacing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

import numpy as np

from rwkvlab.data._base import DataError, Problem, check_spacing
from rwkvlab.data.files import read_nifti, resample_volume
from rwkvlab.data.reader import Case, Reader, Sample, register_reader
from rwkvlab.data.readers._binary import SPLIT_8_1_1

logger = logging.getLogger(__name__)

__all__ = ["MSD", "NiftiVolumeReader", "DatasetJson", "parse_dataset_json", "read_nifti", "ct_window",
           "percentile_scale", "resample_volume", "map_labels", "target_spacing_option", "CT_WINDOW", "PERCENTILES"]

CT_WINDOW = (-125.0, 275.0)  # HU; TransUNet's abdominal soft-tissue window for Synapse (docs §8)
PERCENTILES = (0.5, 99.5)  # per-volume intensity range for MRI, as nnU-Net clips its non-CT inputs
NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"(.+)_(\d{4})")  # nnU-Net v2: <case>_<channel, 4 digits>
_AFFINE_TOLERANCE = 1e-2  # mm; image and label must share their voxel grid


def ct_window(raw: np.ndarray, window: Sequence[float] = CT_WINDOW) -> np.ndarray:
    """Clip Hounsfield units to ``window`` = (lo, hi) and scale to [0, 1]: float32, same shape."""
    lo, hi = (float(v) for v in window)
    return ((np.clip(raw.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def percentile_scale(raw: np.ndarray, path: Path | str, percentiles: Sequence[float] = PERCENTILES) -> np.ndarray:
    """Clip to the volume's own ``percentiles`` and scale to [0, 1]: float32, same shape.

    Raises:
        DataError: naming ``path`` when the two percentiles coincide (a constant volume).
    """
    lo, hi = np.percentile(raw.astype(np.float64), percentiles)
    if not hi > lo:
        raise DataError(f"{path}: intensity percentiles {list(percentiles)} are both {lo:.6g}; expected a "
                        f"non-constant image to scale to [0, 1]")
    return ((np.clip(raw.astype(np.float64), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def map_labels(array: np.ndarray, path: Path, values: Mapping[int, int], source: str) -> np.ndarray:
    """Map stored label values to class indices with ``values`` (stored value -> class): uint8.

    Raises:
        DataError: naming ``path`` for non-integral values or values that ``values`` does not list
            (``source`` says where those are declared, e.g. ``dataset.json``).
    """
    if np.issubdtype(array.dtype, np.floating):
        fractional = ~np.isfinite(array) | (array != np.round(array))
        if fractional.any():
            raise DataError(f"{path}: label has non-integral values such as {array[fractional].flat[0].item()!r}; "
                            f"expected the integer labels of {source} {sorted(values)}")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise DataError(f"{path}: label has dtype {array.dtype}, expected integer labels")
    found = np.unique(array).astype(np.int64)
    unknown = sorted(set(found.tolist()) - set(values))
    if unknown:
        raise DataError(f"{path}: label values {unknown[:10]} are not among the labels of {source} {sorted(values)}")
    lut = np.zeros(max(values) + 1, np.uint8)
    for value, cls in values.items():
        lut[value] = cls
    return lut[array.astype(np.int64)]


class NiftiVolumeReader(Reader):
    """Base of the readers of NIfTI volumes (image + label file per case): intensity, labels, resampling.

    ``case.files`` is ``(image, label)``. Subclasses implement :meth:`scan`, and may set ``label_values``
    (stored value -> class; by default the stored values are the class indices) and override
    :meth:`read_image` (channel selection) or :meth:`intensity_mode` (the default normalisation).

    Args:
        root: the raw folder.
        intensity: ``ct`` (clip to ``window`` in HU, scale) or ``percentile`` (clip to the volume's
            ``percentiles``, scale); ``None``: the reader's default (:meth:`intensity_mode`).
        window: (lo, hi) HU for ``ct``; default :data:`CT_WINDOW`.
        percentiles: (lo, hi) percentiles for ``percentile``; default :data:`PERCENTILES`.
        target_spacing: (z, y, x) mm to resample every volume to (order-3 image, nearest label); ``None``
            keeps each volume's native spacing.
        orientation: ``voxel`` (the file's voxel axes reversed to (D, H, W)) or ``ras`` (closest
            canonical orientation first).

    Raises:
        DataError: naming the option that is not what is expected.
    """

    label_values: ClassVar[Mapping[int, int] | None] = None
    label_source: ClassVar[str] = "the class names"

    def __init__(self, root: Path, intensity: str | None = None, window: Sequence[float] | None = None,
                 percentiles: Sequence[float] = PERCENTILES, target_spacing: Sequence[float] | None = None,
                 orientation: str = "voxel") -> None:
        super().__init__(root)
        if intensity not in (None, "ct", "percentile"):
            raise DataError(f"intensity must be ct or percentile (or unset for the dataset's default); "
                            f"got {intensity!r}")
        if window is not None:
            if intensity == "percentile":
                raise DataError("window is the ct intensity's HU range; it does not go with intensity: percentile")
            window = _pair(window, "window", "(lo, hi) in HU, lo < hi, e.g. [-125, 275]")
        self.percentiles = _pair(percentiles, "percentiles", "(lo, hi) with 0 <= lo < hi <= 100, e.g. [0.5, 99.5]",
                                 bounds=(0, 100))
        target_spacing = target_spacing_option(target_spacing)
        if orientation not in ("voxel", "ras"):
            raise DataError(f"orientation must be voxel or ras; got {orientation!r}")
        self.intensity, self.window, self.target_spacing = intensity, window, target_spacing
        self.orientation = orientation

    def intensity_mode(self) -> str:
        """The normalisation used: the ``intensity`` option, else this reader's default."""
        return self.intensity or "percentile"

    def read_image(self, case: Case) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
        """The raw image (D, H, W), its spacing and affine; a 4D file is an error here."""
        raw, spacing, affine = read_nifti(case.files[0], self.orientation)
        if raw.ndim != 3:
            raise DataError(f"{case.files[0]}: has {raw.shape[-1]} channels (shape {raw.shape[::-1]} as X, Y, Z, C), "
                            f"expected one 3D volume")
        return raw, spacing, affine

    def normalise(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Intensities to float32 in [0, 1] by :meth:`intensity_mode`."""
        if not np.isfinite(raw).all():
            raise DataError(f"{path}: image has NaN or infinite values")
        if self.intensity_mode() == "ct":
            return ct_window(raw, self.window or CT_WINDOW)
        return percentile_scale(raw, path, self.percentiles)

    def load(self, case: Case) -> Sample:
        raw, spacing, affine = self.read_image(case)
        image = self.normalise(raw, case.files[0])
        label = None
        if case.labelled:
            path = case.files[1]
            stored, _, label_affine = read_nifti(path, self.orientation)
            if stored.shape != image.shape:
                raise DataError(f"{path}: label shape {stored.shape} differs from its image's {image.shape} "
                                f"({case.files[0]}), both (D, H, W); expected the same voxel grid")
            if not np.allclose(label_affine, affine, atol=_AFFINE_TOLERANCE):
                raise DataError(f"{path}: label affine differs from its image's ({case.files[0]}); expected the "
                                f"same voxel grid\nlabel:\n{np.round(label_affine, 3)}\nimage:\n{np.round(affine, 3)}")
            values = self.label_values or {i: i for i in range(len(self.class_names))}
            label = map_labels(stored, path, values, self.label_source)
        if self.target_spacing is not None:
            image, label, spacing = resample_volume(image, label, spacing, self.target_spacing)
        return Sample(image, label, spacing)


def target_spacing_option(value: Any) -> tuple[float, float, float] | None:
    """The ``target_spacing`` option as three positive mm values along (z, y, x); ``None`` stays ``None``.

    Raises:
        DataError: for anything else.
    """
    if value is None:
        return None
    try:
        return check_spacing(np.asarray(value, dtype=np.float64), "target_spacing")
    except (TypeError, ValueError) as e:
        raise DataError(f"target_spacing must be three positive numbers (mm along z, y, x); got {value!r}") from e


def _pair(value: Any, name: str, expected: str, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Two finite increasing numbers (within ``bounds``), else a :class:`DataError` for option ``name``."""
    try:
        lo, hi = (float(v) for v in value)
        ok = np.isfinite([lo, hi]).all() and lo < hi and not isinstance(value, (str, bytes))
    except (TypeError, ValueError):
        ok = False
    if ok and bounds is not None:
        ok = bounds[0] <= lo and hi <= bounds[1]
    if not ok:
        raise DataError(f"{name} must be {expected}; got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class DatasetJson:
    """What the readers use of a ``dataset.json``.

    ``naming`` is ``nnunet`` (one ``<case>_XXXX`` file per channel) or ``msd`` (one file per case, 4D
    for several channels); ``class_names`` are ordered by label value, ``channels`` by channel index.
    """

    naming: Literal["nnunet", "msd"]
    class_names: tuple[str, ...]
    channels: tuple[str, ...]
    file_ending: str
    num_training: int | None


def parse_dataset_json(path: Path) -> DatasetJson:
    """Read ``dataset.json`` in the Decathlon's or nnU-Net v2's form.

    Raises:
        DataError: naming ``path`` and listing every problem of the file (each in ``problems``).
    """
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: unreadable dataset.json ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    problems: list[str] = []
    naming: Literal["nnunet", "msd"] = "nnunet" if "channel_names" in meta else "msd"
    if ("channel_names" in meta) == ("modality" in meta):
        problems.append(f"{path}: expected one of \"channel_names\" (nnU-Net v2) or \"modality\" (Decathlon), "
                        f"found {'both' if 'modality' in meta else 'neither'}")
    key = "channel_names" if naming == "nnunet" else "modality"
    channels = _indexed(meta[key], key, path, problems) if key in meta else []
    labels = meta.get("labels")
    class_names: list[str] = []
    if not isinstance(labels, dict) or not labels:
        problems.append(f"{path}: \"labels\" must be an object, e.g. {{\"background\": 0, \"liver\": 1}} (nnU-Net v2) "
                        f"or {{\"0\": \"background\", \"1\": \"liver\"}} (Decathlon); got {labels!r}")
    elif all(isinstance(v, str) for v in labels.values()):  # Decathlon: {"0": "background", ...}
        class_names = _indexed(labels, "labels", path, problems)
    else:  # nnU-Net v2: {"background": 0, ...}
        bad = {k: v for k, v in labels.items() if not isinstance(v, int) or isinstance(v, bool)}
        if bad:
            regions = any(isinstance(v, list) for v in bad.values())
            problems.append(f"{path}: \"labels\" values {bad} are not integer labels"
                            + ("; region-based labels (lists) are not supported" if regions else ""))
        elif "ignore" in labels:
            problems.append(f"{path}: an \"ignore\" label ({labels['ignore']}) is not supported")
        else:
            class_names = _indexed({str(v): k for k, v in labels.items()}, "labels", path, problems,
                                   count=len(labels))
    if class_names and len(class_names) < 2:
        problems.append(f"{path}: \"labels\" declares {len(class_names)} class, expected background and at least one")
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_ENDINGS:
        problems.append(f"{path}: file_ending {ending!r} is not read; expected one of {list(NIFTI_ENDINGS)} "
                        f"(NIfTI; convert other formats first)")
    num = meta.get("numTraining")
    if problems:
        raise DataError("\n".join(problems), problems)
    return DatasetJson(naming, tuple(class_names), tuple(channels), ending,
                       num if isinstance(num, int) and not isinstance(num, bool) else None)


def _indexed(mapping: Any, key: str, path: Path, problems: list[str], count: int | None = None) -> list[str]:
    """``{"0": name0, "1": name1, ...}`` -> ``[name0, name1, ...]``; a problem unless the keys are 0..N-1."""
    if not isinstance(mapping, dict) or not mapping:
        problems.append(f"{path}: \"{key}\" must be a non-empty object {{\"0\": name, ...}}; got {mapping!r}")
        return []
    try:
        index = {int(k): v for k, v in mapping.items()}
    except ValueError:
        index = {}
    n = count if count is not None else len(mapping)
    if sorted(index) != list(range(n)) or not all(isinstance(v, str) and v for v in index.values()):
        problems.append(f"{path}: \"{key}\" must number its names 0..{n - 1} without gaps; got {mapping!r}")
        return []
    return [index[i] for i in range(n)]


@register_reader
class MSD(NiftiVolumeReader):
    """The Decathlon's / nnU-Net v2's raw training cases, every one a volume (docs §19).

    Args:
        root: the task folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        channel: which input channel to read (the cache holds one channel per volume); default 0.
        intensity, window, percentiles, target_spacing, orientation: see :class:`NiftiVolumeReader`;
            the default intensity is ``ct`` when the channel's name in ``dataset.json`` is CT, else
            ``percentile``.
    """

    name = "msd"
    class_names = ("background", "foreground")  # replaced by dataset.json's labels
    description = "3D volumes in the Medical Segmentation Decathlon / nnU-Net raw layout (imagesTr, labelsTr)"
    layout = """
    dataset.json                      labels ({"0": "background", ...} or {"background": 0, ...}),
                                      modality or channel_names ({"0": "CT"}), optional file_ending
    imagesTr/<case>_0000.nii.gz       nnU-Net v2 (channel_names): one file per channel _0000, _0001, ...
    imagesTr/<case>.nii.gz            or the Decathlon's (modality): one file, 4D (X, Y, Z, C) if several channels
    labelsTr/<case>.nii.gz            class indices as declared in dataset.json's labels
    imagesTs/                         test images without labels: not read
    options: channel, intensity (ct | percentile), window, percentiles, target_spacing, orientation
    cases: every labelled training case, split 8:1:1 per split seed
    """
    split_fractions: ClassVar[Mapping[str, float]] = SPLIT_8_1_1
    names_from_json: ClassVar[bool] = True  # False: the class names are fixed, and dataset.json must match them

    def __init__(self, root: Path, channel: int = 0, intensity: str | None = None,
                 window: Sequence[float] | None = None, percentiles: Sequence[float] = PERCENTILES,
                 target_spacing: Sequence[float] | None = None, orientation: str = "voxel") -> None:
        super().__init__(root, intensity, window, percentiles, target_spacing, orientation)
        if not isinstance(channel, int) or isinstance(channel, bool) or channel < 0:
            raise DataError(f"channel must be a channel index 0, 1, ...; got {channel!r}")
        self.channel = channel
        self._meta: DatasetJson | None = None
        try:  # class names as soon as the reader exists; scan reports a bad or missing dataset.json
            self._use(parse_dataset_json(self.root / "dataset.json"))
        except DataError:
            pass

    def _use(self, meta: DatasetJson) -> None:
        self._meta = meta
        if self.names_from_json:
            self.class_names = meta.class_names

    def intensity_mode(self) -> str:
        if self.intensity:
            return self.intensity
        channels = self._meta.channels if self._meta else ()
        name = channels[self.channel] if self.channel < len(channels) else ""
        return "ct" if name.strip().upper() == "CT" else "percentile"

    def scan(self, problems: list[str]) -> list[Case]:
        if not self.require_dirs(problems, self.root):
            return []
        json_path = self.root / "dataset.json"
        if not json_path.is_file():
            problems.append(f"{json_path}: not found; {self.expected()}")
            meta = None
        else:
            try:
                meta = parse_dataset_json(json_path)
                self._use(meta)
            except DataError as err:
                problems.extend(err.problems)
                meta = None
        images, labels = self.root / "imagesTr", self.root / "labelsTr"
        if not self.require_dirs(problems, images, labels) or meta is None:
            return []
        if meta.class_names != tuple(self.class_names):
            problems.append(f"{json_path}: labels {list(meta.class_names)} differ from this reader's classes "
                            f"{list(self.class_names)}")
            return []
        if self.channel >= len(meta.channels):
            problems.append(f"{json_path}: declares {len(meta.channels)} channel(s) {list(meta.channels)}; the channel "
                            f"option {self.channel} is not one of them")
            return []
        if len(meta.channels) > 1:
            logger.info("%s: %d input channels %s; reading channel %d (%s) only, the cache holds one channel per "
                        "volume (option channel)", self.name, len(meta.channels), list(meta.channels), self.channel,
                        meta.channels[self.channel])
        if (self.root / "imagesTs").is_dir():
            logger.info("%s: %s has no labels and is not used", self.name, self.root / "imagesTs")
        by_case, named = self._images(problems, images, meta)
        cases = []
        label_files = {_strip(p.name, meta.file_ending): p for p in _files(labels, meta.file_ending)}
        for cid, files in by_case.items():
            label = labels / f"{cid}{meta.file_ending}"
            if cid not in label_files:
                problems.append(Problem(f"{files[0]}: no label; expected {label}", case=cid))
                continue
            cases.append(Case(cid, (files[self.channel] if meta.naming == "nnunet" else files[0], label),
                              kind="volume", group=cid))
        for cid in sorted(set(label_files) - named):
            problems.append(Problem(f"{label_files[cid]}: label without an image in {images}", case=cid))
        if meta.num_training is not None and meta.num_training != len(by_case):
            logger.warning("%s: %s gives numTraining %d, %s holds %d case(s)", self.name, json_path,
                           meta.num_training, images, len(by_case))
        logger.info("%s under %s: %d labelled training volumes (%s naming), intensity %s", self.name, self.root,
                    len(cases), meta.naming, self.intensity_mode())
        return cases

    def _images(self, problems: list[str], folder: Path, meta: DatasetJson) -> tuple[dict[str, list[Path]], set[str]]:
        """Case id -> its image file(s) (one per channel, in channel order for nnU-Net v2), and every case id
        named by an image file (complete or not); naming problems."""
        found: dict[str, dict[int, Path]] = {}
        for path in _files(folder, meta.file_ending):
            stem = _strip(path.name, meta.file_ending)
            if meta.naming == "msd":
                found[stem] = {0: path}
                continue
            match = _CHANNEL_FILE.fullmatch(stem)
            if match is None:
                problems.append(f"{path}: not named <case>_<XXXX>{meta.file_ending} (nnU-Net v2 names one file per "
                                f"channel, e.g. {stem}_0000{meta.file_ending}); {self.expected()}")
                continue
            found.setdefault(match[1], {})[int(match[2])] = path
        out = {}
        n = len(meta.channels) if meta.naming == "nnunet" else 1
        for cid in sorted(found):
            missing = [f"{cid}_{c:04d}{meta.file_ending}" for c in range(n) if c not in found[cid]]
            extra = sorted(c for c in found[cid] if c >= n)
            if missing or extra:
                problems.append(Problem(f"{folder}: case {cid} " + "; ".join(
                    ([f"lacks {', '.join(missing)}"] if missing else [])
                    + ([f"has channel(s) {extra} beyond the {n} of dataset.json"] if extra else [])), case=cid))
                continue
            out[cid] = [found[cid][c] for c in range(n)]
        if not found and not any(p.startswith(f"{folder}") for p in problems):
            problems.append(f"{folder}: no *{meta.file_ending} images; {self.expected()}")
        return out, set(found)

    def read_image(self, case: Case) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
        path = case.files[0]
        raw, spacing, affine = read_nifti(path, self.orientation)
        if raw.ndim == 4:
            if self._meta is not None and self._meta.naming == "nnunet":
                raise DataError(f"{path}: is 4D (X, Y, Z, C); nnU-Net v2 stores one 3D file per channel")
            if self.channel >= raw.shape[-1]:
                raise DataError(f"{path}: has {raw.shape[-1]} channel(s); the channel option is {self.channel}")
            raw = raw[..., self.channel]
        elif self.channel and (self._meta is None or self._meta.naming == "msd"):
            raise DataError(f"{path}: is one 3D channel; the channel option {self.channel} needs a 4D (X, Y, Z, C) "
                            f"file")
        return raw, spacing, affine

    def split(self, cases: Sequence[Case], seed: int) -> dict[str, list[str]]:
        return self.random_split(cases, seed, self.split_fractions)


def _files(folder: Path, ending: str) -> list[Path]:
    """The ``*<ending>`` files of ``folder``, sorted; hidden files (the Decathlon's ``._*`` macOS copies) left out."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    other = [p.name for p in found if not p.name.endswith(ending)]
    if other:
        logger.warning("%s: ignoring %d file(s) that do not end in %s: %s", folder, len(other), ending,
                       ", ".join(other[:10]))
    return [p for p in found if p.name.endswith(ending)]


def _strip(name: str, ending: str) -> str:
    return name[: -len(ending)]
