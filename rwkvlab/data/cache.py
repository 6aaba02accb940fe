"""The prepared cache: one HDF5 file per dataset that training and evaluation read.

Layout of ``<name>.h5`` (all datasets at the root, written with ``track_times=False`` so that
preparing twice gives identical bytes):

* 2D items (``image`` and ``slice`` cases) resized to the training size: ``images`` (N, H, W, C),
  uint8 for colour photographs (C = 3) or float16 in [0, 1] for grey images (C = 1); ``masks``
  (N, H, W) uint8; ``ids``, ``groups`` (strings), ``labelled`` (bool) and ``sizes`` (N, 2), the
  original (H, W).
* Volumes (``volume`` cases) at their original resolution, for the volume protocol of docs §7:
  ``volume_ids``, ``volume_shapes`` (M, 3), ``volume_offsets`` (M,) and the flattened
  ``volume_images`` (float32, the values the reader returned) and ``volume_labels`` (uint8).
  float32, not float16 as the 2D items: the protocol must give TransUNet's bits, and TransUNet reads
  the float32 HDF5 volumes. That costs 2 more bytes per voxel: about +0.8 GB for Synapse's 12 test
  volumes (~1,570 slices of 512 x 512: 1.6 GB instead of 0.8 GB), roughly +70 MB for ACDC's 60
  validation and test volumes. ``volume_spacings`` (M, 3) float64: each volume's voxel size in mm along
  its (D, H, W) axes where the reader found one (ACDC's NIfTI release, the synthetic Synapse demo), NaN
  where not (TransUNet's and SSL4MIS's h5 files carry none); caches written before it read as no spacing.
* Attributes ``dataset``, ``description``, ``class_names`` and ``skipped`` (JSON, case id -> problem,
  of the cases left out by ``skip_invalid``; ``{}`` when none).

Beside the seeded ``seed<k>.json`` splits, a reader's further published splits (PSVFM's
leave-one-video-out folds) are written as ``<name>.json`` in the same folder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from PIL import Image
from scipy import ndimage

from rwkvlab.data._base import DataError, check_spacing, write_split
from rwkvlab.data.reader import Case, Reader, iter_valid
from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["Prepared", "prepare", "load_prepared", "resize_image", "resize_label"]


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2D image: uint8 colour with a box filter, float grey with an order-3 spline (TransUNet)."""
    h, w = size
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BOX))
    if image.shape == (h, w):
        return image.astype(np.float32)
    out = ndimage.zoom(image.astype(np.float32), (h / image.shape[0], w / image.shape[1]), order=3)
    return np.clip(out, 0.0, 1.0)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2D label map with nearest neighbour."""
    h, w = size
    if label.shape == (h, w):
        return label
    return ndimage.zoom(label, (h / label.shape[0], w / label.shape[1]), order=0)


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(values, dtype=h5py.string_dtype())


def _problem_report(reader: Reader, problems: Sequence[str]) -> DataError:
    return DataError(f"{reader.name}: {len(problems)} problem(s) in {reader.root}:\n- " + "\n- ".join(problems),
                     problems)


def _all_splits(reader: Reader, cases: Sequence[Case], seed: int) -> dict[str, dict[str, list[str]]]:
    """The paper's split drawn with ``seed`` (file ``seed<seed>``) and the reader's extra splits, by file stem."""
    return {f"seed{seed}": reader.split(cases, seed), **reader.extra_splits(cases)}


def prepare(reader: Reader, size: tuple[int, int] | None, out: Path, splits_dir: Path, seeds: Sequence[int],
            skip_invalid: bool = False) -> Path:
    """Validate ``reader``'s raw folder and write ``out`` (HDF5) and ``splits_dir/seed<k>.json``.

    Every case is read once. If any problem is found, all of them are raised together and nothing
    is written, unless ``skip_invalid``: then the cases with a problem are left out, each named in the
    log and in the cache's ``skipped`` attribute, provided every problem belongs to one case.

    Args:
        reader: the dataset over its raw folder.
        size: (H, W) of the 2D items, positive; ``None`` for a dataset of volumes only (an error if the reader
            returns a 2D item). The size rule of a model (``size_divisor``) is checked where a model meets the
            data (:func:`rwkvlab.engine.inference.check_image_size`), not here.
        out: the ``.h5`` file to write.
        splits_dir: folder of the split files.
        seeds: one split file per seed.
        skip_invalid: leave out the cases that have a problem instead of stopping.

    Raises:
        DataError: listing every problem of the raw folder (with ``skip_invalid``: the problems that
            belong to no single case), or naming a split that skipping left empty.
    """
    h, w = (1, 1) if size is None else size
    if h < 1 or w < 1:
        raise ValueError(f"prepare.image_size must be two positive integers (H, W), got {h}x{w}")
    problems: list[str] = []
    images, masks, ids, groups, labelled, sizes, cases = [], [], [], [], [], [], []
    vol_ids, vol_shapes, vol_images, vol_labels, vol_spacings = [], [], [], [], []
    scanned: list[Case] = []
    for case, sample in iter_valid(reader, problems, scanned):
        cases.append(case)
        spatial = sample.image.shape[:2] if sample.image.dtype == np.uint8 else sample.image.shape
        label = sample.label if sample.label is not None else np.zeros(spatial, np.uint8)
        if case.kind == "volume":
            vol_ids.append(case.case_id)
            vol_shapes.append(sample.image.shape)
            vol_images.append(sample.image.astype(np.float32).ravel())
            vol_labels.append(label.astype(np.uint8).ravel())
            vol_spacings.append((np.nan,) * 3 if sample.spacing is None
                                else check_spacing(sample.spacing, case.files[0] if case.files else case.case_id))
            continue
        if size is None:
            raise ValueError(f"prepare.image_size.{reader.name}: missing, but case {case.case_id} is a 2D item; give "
                             f"the (H, W) its 2D items are resized to")
        sizes.append(spatial)
        img = resize_image(sample.image, size)
        images.append(img if img.dtype == np.uint8 else img.astype(np.float16)[..., None])
        masks.append(resize_label(label, size))
        ids.append(case.case_id)
        groups.append(case.group or "")
        labelled.append(case.labelled)
    if not cases and not problems:
        problems.append(f"{reader.root}: no cases found; {reader.expected()}")
    skipped: dict[str, str] = {}
    if problems and skip_invalid and all(getattr(p, "case", None) for p in problems):
        for problem in problems:
            skipped[problem.case] = f"{skipped[problem.case]}; {problem}" if problem.case in skipped else problem
        for cid, problem in sorted(skipped.items()):
            logger.warning("%s: skipping case %s: %s", reader.name, cid, problem)
    elif problems:
        raise _problem_report(reader, problems)
    split_files = {seed: _all_splits(reader, cases, seed) for seed in seeds}
    if skipped:
        for seed, kept in split_files.items():
            for file, full in _all_splits(reader, scanned, seed).items():
                empty = sorted(s for s, ids in full.items() if ids and not kept[file].get(s))
                if empty:
                    raise DataError(f"{reader.name}: split(s) {empty} of {file}.json would be empty after skipping "
                                    f"{len(skipped)} case(s) with problems: {sorted(skipped)}; fix those cases")
    if len({im.dtype for im in images}) > 1:
        raise DataError(f"{reader.name}: mixes colour and grey images; a reader must return one kind")

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            def put(name: str, data: np.ndarray) -> None:
                f.create_dataset(name, data=data, track_times=False)

            first = images[0] if images else np.zeros((h, w, 1), np.float16)
            put("images", np.stack(images) if images else np.zeros((0, *first.shape), first.dtype))
            put("masks", np.stack(masks) if masks else np.zeros((0, h, w), np.uint8))
            put("ids", _strings(ids))
            put("groups", _strings(groups))
            put("labelled", np.array(labelled, dtype=bool))
            put("sizes", np.array(sizes, dtype=np.int64).reshape(-1, 2))
            put("volume_ids", _strings(vol_ids))
            put("volume_shapes", np.array(vol_shapes, dtype=np.int64).reshape(-1, 3))
            put("volume_offsets", np.cumsum([0] + [a.size for a in vol_images[:-1]]).astype(np.int64)
                if vol_images else np.zeros(0, np.int64))
            put("volume_images", np.concatenate(vol_images) if vol_images else np.zeros(0, np.float32))
            put("volume_labels", np.concatenate(vol_labels) if vol_labels else np.zeros(0, np.uint8))
            put("volume_spacings", np.array(vol_spacings, dtype=np.float64).reshape(-1, 3))
            f.attrs["dataset"] = reader.name
            f.attrs["class_names"] = json.dumps(list(reader.class_names))
            f.attrs["description"] = reader.description
            f.attrs["skipped"] = json.dumps(dict(sorted(skipped.items())))

    atomic_write(out, write)
    for files in split_files.values():
        for file, split in files.items():
            write_split(split, Path(splits_dir) / f"{file}.json")
    logger.info("prepared %s: %d 2D items at %dx%d, %d volumes, %d case(s) skipped -> %s", reader.name, len(ids),
                h, w, len(vol_ids), len(skipped), out)
    return out


@dataclass
class Prepared:
    """A prepared dataset in memory, with one split applied.

    ``images``/``masks``/``ids`` hold the 2D items; ``splits[name]`` indexes them, and
    ``volume_splits[name]`` lists the volume ids of a split (evaluated with the volume protocol).
    ``spacings[volume id]`` is a volume's voxel size in mm along its (D, H, W) axes, for the volumes
    whose files carry one.
    """

    dataset: str
    description: str
    class_names: tuple[str, ...]
    images: np.ndarray
    masks: np.ndarray
    ids: np.ndarray
    labelled: np.ndarray
    sizes: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    volume_splits: dict[str, list[str]] = field(default_factory=dict)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    spacings: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # case id -> problem, left out by skip_invalid

    @property
    def in_chans(self) -> int:
        return int(self.images.shape[-1])

    @property
    def item_size(self) -> tuple[int, ...]:
        """The spatial size of the 2D items, (H, W) (``prepare.image_size``; (1, 1) for a set of volumes only)."""
        return tuple(int(n) for n in self.images.shape[1:-1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_prepared(cache: Path, split_file: Path) -> Prepared:
    """Read a cache of :func:`prepare` and apply a split file to it."""
    cache, split_file = Path(cache), Path(split_file)
    for path in (cache, split_file):
        if not path.is_file():
            raise DataError(f"{path}: not found; run the prepare stage first (dvc repro)")
    with h5py.File(cache, "r") as f:
        data = Prepared(
            dataset=str(f.attrs["dataset"]), description=str(f.attrs["description"]),
            class_names=tuple(json.loads(f.attrs["class_names"])),
            images=f["images"][()], masks=f["masks"][()], labelled=f["labelled"][()], sizes=f["sizes"][()],
            ids=np.array(f["ids"].asstr()[()], dtype=str), skipped=json.loads(f.attrs.get("skipped", "{}")),
        )
        vol_ids = list(f["volume_ids"].asstr()[()])
        if vol_ids and f["volume_images"].dtype != np.float32:
            raise DataError(f"{cache}: volume_images are {f['volume_images'].dtype}, expected float32 (a cache "
                            f"written by an older rwkvlab, whose volumes cannot give the protocol's bits); "
                            f"run the prepare stage again")
        for vid, shape, offset in zip(vol_ids, f["volume_shapes"][()], f["volume_offsets"][()]):
            n = int(np.prod(shape))
            data.volumes[vid] = (f["volume_images"][offset : offset + n].reshape(shape),
                                 f["volume_labels"][offset : offset + n].reshape(shape))
        spacings = f["volume_spacings"][()] if "volume_spacings" in f else np.full((len(vol_ids), 3), np.nan)
        data.spacings = {vid: tuple(float(v) for v in row) for vid, row in zip(vol_ids, spacings)
                         if not np.isnan(row).any()}
    index = {cid: i for i, cid in enumerate(data.ids.tolist())}
    for name, members in json.loads(split_file.read_text()).items():
        unknown = sorted(set(members) - set(index) - set(data.volumes))
        if unknown:
            raise DataError(f"{split_file}: split {name!r} names cases not in {cache}: {unknown[:5]}")
        data.splits[name] = np.array([index[c] for c in members if c in index], dtype=np.int64)
        data.volume_splits[name] = [c for c in members if c in data.volumes]
    return data
