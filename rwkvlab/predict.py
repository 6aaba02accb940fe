"""Apply a trained checkpoint to your own images and volumes (issue 10 §3)::

    python -m rwkvlab.predict --checkpoint PATH --input FILE_OR_DIR --out DIR [--device auto] [--batch-size N]
        [--mode resize|window] [--overlap F] [--window LO HI] [--overlay/--no-overlay]

Inputs (a file, or every such file under a folder): photographs (PNG, JPEG, TIFF, BMP), NIfTI (``.nii``,
``.nii.gz``, 2D or 3D; 3D slice by slice along the third voxel axis) and the npz/HDF5 arrays of the readers
(``image``, (H, W) or (D, H, W) in [0, 1]). The checkpoint alone says how to read them (its ``meta``).

Outputs, in the input's geometry, under ``DIR`` mirroring the input folder:

* ``<name>_labels.png`` (uint8 class indices, the photo's H x W), ``<name>_labels.nii[.gz]`` (the input's
  shape, affine and header, uint8) or ``<name>_labels.npz`` (array ``label``, the input array's shape);
* ``<name>_overlay.png``: the image with one coloured outline per class (a volume: its slice with the most
  foreground);
* ``predictions.csv``: input, output, overlay, shape and the classes present, one row per input.

A volumetric checkpoint (``rwkv_unet3d_*``, ``unet3d``, ``swin_unetr3d``; docs §20) reads NIfTI and array volumes
whole, in the volume readers' array order (the voxel axes reversed), resampled to the spacing it was trained at
when the file's differs, and labels them with the sliding window of its recipe (``--mode`` and ``--overlap``
are for 2D checkpoints); the label map is written in the input's voxel grid with its affine.

Every file is written to a temporary name and renamed, so a killed run leaves no half-written output; a
rerun skips the inputs whose outputs exist. ``--mode resize`` (default) resizes to the training size and the
labels back (docs §7); ``--mode window`` slides windows of the training size over the image (large images).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image
from tqdm.auto import tqdm

from rwkvlab.data._base import DataError
from rwkvlab.engine.cpu_memory import keep_freed_memory
from rwkvlab.engine.inference import (NIFTI_SLICE_AXIS, NIFTI_SUFFIXES, Mode, input_kind, load_for_prediction,
                                      predict_image, predict_slices, predict_whole_volume, read_input, read_volume,
                                      resolve_device)
from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["find_inputs", "output_paths", "predict_files", "write_overlay", "main"]

_COLUMNS = ["input", "output", "overlay", "shape", "classes"]
# Overlays are drawn at least this many pixels on the short side, so outlines and legend stay legible.
_OVERLAY_MIN_SIDE = 256


def find_inputs(source: Path, exclude: Path | None = None) -> list[Path]:
    """The readable files of ``source``: the file itself, or every one under the folder (sorted, hidden ones and
    those under ``exclude``, the output folder, left out).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        DataError: a file of an unsupported type, or a folder without any readable file.
    """
    source = Path(source)
    if source.is_file():
        if input_kind(source) is None:
            raise DataError(f"{source}: unsupported file type; expected PNG, JPEG, TIFF, BMP, NIfTI, npz or HDF5")
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: input not found")
    skip = Path(exclude).resolve() if exclude is not None else None
    files, other = [], []
    for p in sorted(source.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(source).parts):
            continue
        if skip is not None and p.resolve().is_relative_to(skip):
            continue
        (files if input_kind(p) else other).append(p)
    if other:
        logger.warning("%s: ignoring %d file(s) of other types: %s", source, len(other),
                       ", ".join(str(p.relative_to(source)) for p in other[:10]))
    if not files:
        raise DataError(f"{source}: no input files (PNG, JPEG, TIFF, BMP, NIfTI, npz or HDF5) in this folder")
    return files


def output_paths(path: Path, root: Path, out: Path) -> tuple[Path, Path]:
    """(labels, overlay) of input ``path`` found under ``root`` (its folder, or the folder given)."""
    path = Path(path)
    rel = path.relative_to(root) if path != root else Path(path.name)
    name = rel.name
    kind = input_kind(path)
    suffix = next(s for s in NIFTI_SUFFIXES if name.lower().endswith(s)) if kind == "nifti" else Path(name).suffix
    base = name[: len(name) - len(suffix)]
    ext = {"photo": ".png", "nifti": suffix, "array": ".npz"}[kind]
    folder = Path(out) / rel.parent
    return folder / f"{base}_labels{ext}", folder / f"{base}_overlay.png"


def _save_nifti(path: Path, labels: np.ndarray, like: nib.spatialimages.SpatialImage) -> None:
    """``labels`` with ``like``'s affine and header (uint8, no intensity scaling), to ``.nii`` or ``.nii.gz``."""
    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    img = type(like)(labels, like.affine, header)
    img.header.set_slope_inter(1, 0)
    data = img.to_bytes()
    # nibabel picks the format from the file name; atomic_write's temporary name has a random suffix.
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _read_labels(path: Path) -> np.ndarray:
    """A label output written by :func:`predict_files`, for the index of a resumed run."""
    if path.suffix == ".png":
        with Image.open(path) as im:
            return np.asarray(im)
    if path.suffix == ".npz":
        with np.load(path) as f:
            return f["label"]
    return np.asarray(nib.load(path).dataobj)


def write_overlay(path: Path, image: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> None:
    """The image with one coloured outline per foreground class present and a legend, as a PNG (Agg).

    Shape:
        image (H, W, 3) uint8 or (H, W) float in [0, 1]; labels (H, W).
    """
    h, w = labels.shape
    scale = max(1.0, _OVERLAY_MIN_SIDE / min(h, w))
    fig = Figure(figsize=(w * scale / 100, h * scale / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    if image.ndim == 2:
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    colours = matplotlib.colormaps["tab10"]
    handles = []
    for c in range(1, len(class_names)):
        if (labels == c).any():
            colour = colours((c - 1) % 10)
            ax.contour(labels == c, levels=[0.5], colors=[colour], linewidths=1.2)
            handles.append(Line2D([], [], color=colour, label=class_names[c]))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.6)
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"))


def _overlay_slice(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A 2D view for the overlay: the image itself, or the slice of a volume with the most foreground."""
    if labels.ndim == 2:
        return image, labels
    area = (labels > 0).sum(axis=(1, 2))
    z = int(area.argmax()) if area.any() else len(labels) // 2
    return image[z], labels[z]


@keep_freed_memory()
def predict_files(checkpoint: Path, source: Path, out: Path, device: torch.device, batch_size: int = 4,
                  mode: Mode = "resize", overlap: float = 0.25, window: tuple[float, float] | None = None,
                  overlay: bool = True, skip_invalid: bool = False) -> pd.DataFrame:
    """Predict every input of ``source`` with ``checkpoint`` and write the outputs under ``out`` (module docstring).

    Inputs whose outputs all exist are skipped (a rerun resumes); ``out/predictions.csv`` indexes all of them.
    With ``skip_invalid``, an input that cannot be read (truncated, wrong mode, ...) is left out instead of
    stopping the run: each is named in the log and in ``out/skipped.csv`` (input, problem).

    Returns:
        the index: input, output, overlay, shape (``"HxW"`` or ``"DxHxW"``), classes present (``;``-joined).

    Raises:
        FileNotFoundError, ValueError (DataError): naming the checkpoint, input file or parameter at fault.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"--overlap must be in [0, 1), got {overlap}")
    source, out = Path(source), Path(out)
    files = find_inputs(source, exclude=out)
    root = source if source.is_dir() else source.parent
    targets = {f: output_paths(f, root, out) for f in files}
    seen: dict[Path, Path] = {}
    for f, (labels_path, _) in targets.items():
        if labels_path in seen:
            raise DataError(f"{seen[labels_path]} and {f} would both write {labels_path}; rename one of them")
        seen[labels_path] = f
    model, meta = load_for_prediction(checkpoint, device)
    volumetric = meta.get("spatial_dims") == 3
    size = tuple(meta["image_size"])
    names = list(meta["class_names"])
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for f in tqdm(files, desc="predict", unit="file"):
        labels_path, overlay_path = targets[f]
        if labels_path.is_file() and (not overlay or overlay_path.is_file()):
            labels = _read_labels(labels_path)
            logger.info("%s: outputs exist, skipped", f)
        else:
            try:
                if volumetric:
                    image, spacing, nifti = read_volume(f, meta, window)
                else:
                    image, nifti = read_input(f, meta, window)
            except DataError as e:
                if not skip_invalid:
                    raise DataError(f"{e} (--skip-invalid leaves out the inputs that cannot be read)") from e
                logger.warning("skipped %s", e)
                skipped.append({"input": str(f), "problem": str(e)})
                continue
            if volumetric:
                labels = predict_whole_volume(model, image, spacing, meta, device)
            elif image.ndim == 3 and image.dtype != np.uint8:
                labels = predict_slices(model, image, size, device, mode, batch_size, overlap)
            else:
                labels = predict_image(model, image, size, device, mode, batch_size, overlap)
            if overlay:
                write_overlay(overlay_path, *_overlay_slice(image, labels), names)
            if nifti is not None:
                if volumetric:  # back from (D, H, W) = (k, j, i) to the file's voxel axes
                    labels = labels.transpose(2, 1, 0)
                elif labels.ndim == 3:
                    labels = np.moveaxis(labels, 0, NIFTI_SLICE_AXIS)
                atomic_write(labels_path, lambda tmp: _save_nifti(tmp, labels, nifti))
            elif labels_path.suffix == ".npz":
                atomic_write(labels_path, lambda tmp: np.savez_compressed(tmp, label=labels))
            else:
                atomic_write(labels_path, lambda tmp: Image.fromarray(labels).save(tmp, format="PNG"))
        rows.append({"input": str(f), "output": str(labels_path), "overlay": str(overlay_path) if overlay else "",
                     "shape": "x".join(map(str, labels.shape)),
                     "classes": ";".join(names[c] for c in np.unique(labels))})
    index = pd.DataFrame(rows, columns=_COLUMNS)
    atomic_write(out / "predictions.csv", lambda tmp: index.to_csv(tmp, index=False))
    left_out = pd.DataFrame(skipped, columns=["input", "problem"])
    if skipped or (out / "skipped.csv").exists():
        atomic_write(out / "skipped.csv", lambda tmp: left_out.to_csv(tmp, index=False))
    logger.info("%d input(s) predicted -> %s%s", len(rows), out,
                f"; {len(skipped)} left out (cannot be read), listed in {out / 'skipped.csv'}" if skipped else "")
    return index


def _device(name: str) -> torch.device:
    """``--device`` resolved, refusing a CUDA device this machine does not have."""
    try:
        device = resolve_device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a torch device ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: no CUDA device on this machine; use --device cpu or auto")
    return device


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt or last.pt of the train stage")
    parser.add_argument("--input", type=Path, required=True, help="an input file, or a folder of them")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=4, help="slices or windows per forward pass")
    parser.add_argument("--mode", choices=("resize", "window"), default="resize",
                        help="resize to the training size and back, or slide windows of that size")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap in [0, 1) (--mode window)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                        help="map NIfTI/array intensities [LO, HI] onto [0, 1], e.g. -125 275 for CT in HU")
    parser.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True,
                        help="also write <name>_overlay.png")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave out inputs that cannot be read (named on stderr and in <out>/skipped.csv) "
                             "instead of stopping at the first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        index = predict_files(args.checkpoint, args.input, args.out, _device(args.device), args.batch_size,
                              args.mode, args.overlap, tuple(args.window) if args.window else None, args.overlay,
                              args.skip_invalid)
    except (ValueError, FileNotFoundError) as err:  # DataError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(index.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
