"""Inference, in one place for evaluation, prediction and the report: devices, trained models, label maps.

Besides the cached arrays of evaluation, this reads a user's own files for ``python -m rwkvlab.predict``:
photographs (PNG, JPEG, TIFF, BMP), NIfTI images and volumes, and the npz/HDF5 arrays of the readers, in the
intensity convention the checkpoint was trained with, and predicts them at any size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import nibabel as nib
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from rwkvlab.data._base import DataError, read_image
from rwkvlab.data.cache import resize_image, resize_label
from rwkvlab.data.loader import to_tensor
from rwkvlab.data.files import read_arrays, unit_image
from rwkvlab.engine.checkpoint import load_checkpoint
from rwkvlab.models import model_from_checkpoint, read_checkpoint
from rwkvlab.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "spatial_dims", "check_image_size", "SlidingWindow", "predict_volume_3d", "load_trained", "predict", "predict_volume",
           "read_volume", "predict_whole_volume", "PHOTO_SUFFIXES", "NIFTI_SUFFIXES", "ARRAY_SUFFIXES", "NIFTI_SLICE_AXIS", "input_kind",
           "Mode", "load_for_prediction", "read_input", "predict_image", "predict_slices"]

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
ARRAY_SUFFIXES = (".npz", ".h5", ".hdf5")
# A NIfTI volume is predicted slice by slice along its third voxel axis (axial in the usual CT/MR
# acquisition); each slice is the (first axis, second axis) array, as nibabel returns it.
NIFTI_SLICE_AXIS = 2
# Trained channel count per intensity convention of ``fit``'s meta: photographs are cached as RGB.
_CHANNELS = {"uint8": 3, "unit_float": 1}
_META_KEYS = ("dataset", "class_names", "image_size", "in_chans", "intensity")
Mode = Literal["resize", "window"]


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> the GPU when there is one, else the CPU; any other torch device string as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def spatial_dims(model: torch.nn.Module) -> int:
    """The spatial rank a model takes: 3 for the volumetric ones (docs §20), 2 for every other model of the zoo."""
    return int(getattr(model, "spatial_dims", 2))


def check_image_size(model: torch.nn.Module, size: Sequence[int], where: str) -> None:
    """Raise unless ``size`` obeys the input-size rule ``model`` declares as ``size_divisor``.

    The rule belongs to the model (16 for RWKV-UNet, 32 for Swin-UNet, the window for MaxViT encoders, the
    product of the strides along each axis for the 3D models), so the data layer prepares any positive size and
    this check runs where a model meets the data.

    Args:
        model: a model of the zoo; one without ``size_divisor`` takes any size.
        size: (H, W) for a 2D model, (D, H, W) for a 3D one.
        where: the setting or file the size comes from, for the message (e.g. ``prepare.image_size.demo``).

    Raises:
        ValueError: naming ``where``, the size, the model and its ``size_divisor``.
    """
    dims = spatial_dims(model)
    if len(size) != dims:
        raise ValueError(f"{where}: size {list(size)} has {len(size)} axes, but {type(model).__name__} takes "
                         f"{dims}D inputs")
    divisor = getattr(model, "size_divisor", 1)
    divisors = tuple(divisor) if isinstance(divisor, (tuple, list)) else (divisor,) * dims
    if any(n % d for n, d in zip(size, divisors)):
        axes = "H and W" if dims == 2 else "D, H and W"
        rule = divisor if isinstance(divisor, int) else "x".join(map(str, divisors))
        raise ValueError(f"{where}: image size {'x'.join(map(str, size))} is not a multiple of "
                         f"{type(model).__name__}'s size_divisor {divisor}; choose {axes} divisible by {rule}")


@dataclass(frozen=True)
class SlidingWindow:
    """How a volumetric model labels a whole volume (docs §20): MONAI's ``sliding_window_inference`` with windows
    of ``roi_size`` (the training patch) overlapping by ``overlap``, blended with ``mode`` weights (``gaussian``:
    a window's border counts less than its centre, as nnU-Net does), ``batch_size`` windows per forward."""

    roi_size: tuple[int, ...]
    overlap: float
    mode: Literal["gaussian", "constant"]
    batch_size: int

    @classmethod
    def of(cls, recipe: Any) -> SlidingWindow:
        """The window of a recipe (its ``patch_size`` and ``sw_*`` fields) or of a checkpoint's ``meta`` dict."""
        if isinstance(recipe, dict):
            return cls(tuple(recipe["roi_size"]), recipe["overlap"], recipe["mode"], recipe["batch_size"])
        if recipe.patch_size is None:
            raise ValueError("recipe patch_size: a volumetric model needs the training patch (D, H, W); it is "
                             "also the sliding window of validation and test")
        return cls(tuple(recipe.patch_size), recipe.sw_overlap, recipe.sw_mode, recipe.sw_batch_size)


@torch.no_grad()
def predict_volume_3d(model: torch.nn.Module, volume: np.ndarray, window: SlidingWindow,
                      device: torch.device) -> np.ndarray:
    """Label map of a whole volume by a volumetric model: sliding windows (:class:`SlidingWindow`), the softmax
    blended where windows overlap, then argmax. A volume smaller than the window is padded (MONAI) and cut back.

    Shape:
        volume (D, H, W) float in [0, 1] (or (C, D, H, W)) -> (D, H, W) uint8 labels.
    """
    # Imported here: MONAI's import-everything __init__ costs seconds, and only volumes and window mode need it.
    from monai.inferers import sliding_window_inference

    model.eval()
    x = torch.from_numpy(np.require(volume, np.float32, ("C", "W")))
    x = (x[None] if x.ndim == 3 else x)[None].to(device)
    prob = sliding_window_inference(x, window.roi_size, window.batch_size, lambda t: model(t).softmax(1),
                                    overlap=window.overlap, mode=window.mode)
    return prob.argmax(1)[0].to(torch.uint8).cpu().numpy()


def load_trained(run_dir: Path, which: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from ``run_dir/{best,last}.pt`` and load it strictly, in eval mode on ``device``."""
    path = Path(run_dir) / f"{which}.pt"
    state = load_checkpoint(path)
    if state is None:
        raise FileNotFoundError(f"{path}: no checkpoint; run the train stage first")
    return model_from_checkpoint(state, path).to(device).eval(), state


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Label maps of cached 2D images.

    Shape:
        images (N, H, W, C), uint8 or float in [0, 1], H and W obeying the model's size rule
        (:func:`check_image_size`) -> (N, H, W) uint8 labels.
    """
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model(to_tensor(images[i : i + batch_size]).to(device)).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:-1]), np.uint8)


def _protocol_slice(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One slice as TransUNet's ``test_single_volume`` feeds it to the network (docs §7).

    The order-3 spline zoom in float32 when the slice is not at ``size``, left unclipped: at sharp edges it
    overshoots [0, 1] (to about [-0.13, 1.15] on ACDC) and TransUNet feeds those values as they are, unlike
    :func:`rwkvlab.data.cache.resize_image`, which clips for the cached training items.

    Shape:
        image (H, W) float32 -> (size[0], size[1]) float32.
    """
    h, w = image.shape
    if (h, w) == tuple(size):
        return image
    return ndimage.zoom(image, (size[0] / h, size[1] / w), order=3)


@torch.no_grad()
def predict_volume(model: torch.nn.Module, volume: np.ndarray, size: tuple[int, int],
                   device: torch.device) -> np.ndarray:
    """The volume protocol of docs §7, bit for bit TransUNet's ``test_single_volume`` (which the authors reuse).

    Each slice, in float32, is zoomed to the network ``size`` with the unclipped order-3 spline, forwarded
    alone (a batch of one slice, one channel), labelled by ``argmax(softmax(logits))`` (softmax can round
    two close logits to one value, and argmax then takes the first class, so it is kept), and the labels
    are zoomed back with nearest neighbour.

    One slice per forward because batching changes the bits: with two CPU threads, RWKV-UNet-T's logits for
    the same slice batched by 6 and alone differ (up to 3e-8), which flipped 1 of 903,168 labels at 224 x 224;
    GPU libraries also choose their convolution algorithms per batch size.

    Args:
        model: the network; put in eval mode.
        volume: the volume, slices along the first axis.
        size: (H, W) the network was trained at.
        device: where the model runs.

    Shape:
        volume (D, H, W) float in [0, 1] -> (D, H, W) uint8 labels.
    """
    model.eval()
    d, h, w = volume.shape
    volume = np.require(volume, np.float32, ("C", "W"))  # torch.from_numpy warns on read-only arrays
    out = np.zeros((d, h, w), np.uint8)
    for z in Progress(range(d), desc="slices", unit="slice"):
        x = torch.from_numpy(_protocol_slice(volume[z], size))[None, None].to(device)
        labels = model(x).softmax(1).argmax(1)[0].to(torch.uint8).cpu().numpy()
        out[z] = resize_label(labels, (h, w))
    return out


def input_kind(path: Path) -> Literal["photo", "nifti", "array"] | None:
    """What a file holds, by its suffix (case-insensitive); ``None`` for a suffix predict does not read."""
    name = Path(path).name.lower()
    for kind, suffixes in (("photo", PHOTO_SUFFIXES), ("nifti", NIFTI_SUFFIXES), ("array", ARRAY_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def load_for_prediction(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of a checkpoint of :func:`rwkvlab.engine.train.fit`, from that file alone, with its checked ``meta``.

    The file is unpickled with ``weights_only=True``: a checkpoint from elsewhere can hold tensors and plain
    values, never code.

    Returns:
        (model in eval mode on ``device``, meta: dataset, class_names, image_size [H, W] (a volumetric model's
        patch [D, H, W]), in_chans, intensity; a volumetric model's also spatial_dims, sliding_window, spacing).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming ``path``, when it is not an rwkvlab training checkpoint, its weights do not fit its
            model, or it was trained for a channel count or size that predict cannot serve.
    """
    path = Path(path)
    state = read_checkpoint(path)
    missing = [k for k in ("model", "model_name", "model_kwargs", "meta") if not isinstance(state, dict) or
               state.get(k) is None]
    if missing:
        raise ValueError(f"{path}: not an rwkvlab training checkpoint (no {', '.join(missing)}); expected a best.pt "
                         f"or last.pt written by the train stage")
    meta = state["meta"]
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: not an rwkvlab training checkpoint (meta lacks {', '.join(missing)})")
    expected = _CHANNELS.get(meta["intensity"])
    if expected is None:
        raise ValueError(f"{path}: meta intensity {meta['intensity']!r} is unknown; "
                         f"expected one of {sorted(_CHANNELS)}")
    chans = state["model_kwargs"].get("in_chans")
    if meta["in_chans"] != expected or chans != expected:
        raise ValueError(f"{path}: trained for {chans} input channel(s) with intensity {meta['intensity']!r}; "
                         f"predict reads images as RGB (3 channels, 'uint8') or grey (1 channel, 'unit_float')")
    try:
        model = model_from_checkpoint(state, path)
    except (RuntimeError, TypeError, KeyError) as e:  # unknown name or kwargs; strict loading: keys or shapes differ
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{path}: cannot rebuild {state['model_name']} {state['model_kwargs']} from it "
                         f"({first})") from e
    size = tuple(meta["image_size"])
    check_image_size(model, size, f"{path}: training size (meta image_size)")
    if spatial_dims(model) == 3 and "sliding_window" not in meta:
        raise ValueError(f"{path}: a volumetric checkpoint without meta sliding_window; train it again")
    logger.info("%s: %s for %s (%s), trained at %s, %d classes", path, state["model_name"], meta["dataset"],
                meta["intensity"], "x".join(map(str, size)), len(meta["class_names"]))
    return model.to(device).eval(), meta


def _read_grey(path: Path) -> np.ndarray:
    """A photograph as grey float32 (H, W) in [0, 1]: 16-bit by 1/65535, float as is, colour by PIL's luma."""
    try:
        with Image.open(path) as im:
            raw = np.asarray(im) if im.mode in ("I", "F") or im.mode.startswith("I;16") else None
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from e
    if raw is None:  # read_image validates the mode; luma of a repeated grey image is that grey exactly
        rgb = read_image(path)
        if (rgb != rgb[..., :1]).any():
            logger.warning("%s: colour image converted to grey (the checkpoint was trained on grey images)", path)
        return np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255
    if np.issubdtype(raw.dtype, np.floating):
        return unit_image(raw, path, ndim=2)
    lo, hi = int(raw.min()), int(raw.max())
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        raise DataError(f"{path}: integer image values span [{lo}, {hi}], expected 16-bit values 0..65535")
    return raw.astype(np.float32) / np.iinfo(np.uint16).max


def _unit(array: np.ndarray, path: Path, window: tuple[float, float] | None) -> np.ndarray:
    """Grey intensities of a NIfTI or array file as float32 in [0, 1], after the optional window [lo, hi]."""
    if window is not None:
        lo, hi = window
        if not hi > lo:
            raise ValueError(f"window must be LO < HI, got {lo} {hi}")
        array = (np.clip(array.astype(np.float32), lo, hi) - lo) / (hi - lo)
    try:
        return unit_image(array, path, ndim=array.ndim)
    except DataError as e:
        raise DataError(f"{e}; pass --window LO HI to scale raw intensities, e.g. --window -125 275 for CT in "
                        f"Hounsfield units (the Synapse preprocessing)") from e


def read_input(path: Path, meta: dict[str, Any], window: tuple[float, float] | None = None
               ) -> tuple[np.ndarray, nib.spatialimages.SpatialImage | None]:
    """Read one input file in the checkpoint's intensity convention.

    Photographs become RGB uint8 for ``"uint8"`` checkpoints (grey repeated, 16-bit by 1/257, as the
    readers do) and grey float in [0, 1] for ``"unit_float"`` ones. NIfTI and npz/HDF5 arrays (key ``image``)
    are grey and need a ``"unit_float"`` checkpoint; their values must lie in [0, 1] unless ``window`` maps
    [lo, hi] onto it. A 3D NIfTI is returned with :data:`NIFTI_SLICE_AXIS` first.

    Args:
        path: the file.
        meta: the checkpoint's meta (:func:`load_for_prediction`).
        window: intensity window of NIfTI and array files, ``None`` to take their values as they are.

    Returns:
        (image, the NIfTI image for its affine and header or ``None``).

    Shape:
        photo -> (H, W, 3) uint8 or (H, W) float32; NIfTI and arrays -> (H, W) or (D, H, W) float32.

    Raises:
        DataError: naming ``path``: unreadable, unexpected dimensionality or intensities, or one grey channel
            for a checkpoint trained on colour photographs.
    """
    path = Path(path)
    kind = input_kind(path)
    if kind is None:
        suffixes = ", ".join(PHOTO_SUFFIXES + NIFTI_SUFFIXES + ARRAY_SUFFIXES)
        raise DataError(f"{path}: unsupported file type; expected {suffixes}")
    if kind == "photo":
        return (read_image(path) if meta["intensity"] == "uint8" else _read_grey(path)), None
    if meta["intensity"] == "uint8":
        raise DataError(f"{path}: holds one grey channel, but the checkpoint ({meta['dataset']}) was trained on "
                        f"{meta['in_chans']}-channel colour photographs")
    nifti = None
    if kind == "nifti":
        try:
            nifti = nib.load(path)
            array = np.asarray(nifti.dataobj)
        except Exception as e:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
            raise DataError(f"{path}: unreadable or truncated NIfTI ({type(e).__name__}: {e})") from e
    else:
        array = read_arrays(path, ("image",))["image"]
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: image has {array.ndim} dimensions {array.shape}; expected a 2D image (H, W) "
                        f"or a 3D volume")
    image = _unit(array.astype(np.float32, copy=False), path, window)
    if nifti is not None and image.ndim == 3:
        image = np.moveaxis(image, NIFTI_SLICE_AXIS, 0)
    return image, nifti


@torch.no_grad()
def predict_image(model: torch.nn.Module, image: np.ndarray, size: tuple[int, int], device: torch.device,
                  mode: Mode = "resize", batch_size: int = 4, overlap: float = 0.25) -> np.ndarray:
    """Label map of one 2D image of any size.

    ``resize``: the image resized to the training ``size`` (box filter for uint8 colour, order-3 spline for grey,
    as the cache was made), argmax, and the labels resized back with nearest neighbour (docs §7). ``window``:
    windows of the training size with ``overlap`` (MONAI's sliding window; smaller images are zero-padded), the
    softmax averaged where windows overlap, then argmax: the image is never rescaled.

    Shape:
        image (H, W, 3) uint8 or (H, W) float in [0, 1] -> (H, W) uint8 labels.
    """
    h, w = image.shape[:2]
    if mode == "resize":
        small = np.require(resize_image(image, size), requirements="W")  # PIL's arrays are read-only: torch warns
        return resize_label(predict(model, (small if small.ndim == 3 else small[..., None])[None], 1, device)[0],
                            (h, w))
    if mode != "window":
        raise ValueError(f"mode must be 'resize' or 'window', got {mode!r}")
    from monai.inferers import sliding_window_inference  # see predict_volume_3d

    model.eval()
    image = np.require(image, requirements="W")
    x = to_tensor((image if image.ndim == 3 else image[..., None])[None]).to(device)
    prob = sliding_window_inference(x, tuple(size), batch_size, lambda t: model(t).softmax(1), overlap=overlap,
                                    mode="constant")
    return prob.argmax(1)[0].to(torch.uint8).cpu().numpy()


def predict_slices(model: torch.nn.Module, volume: np.ndarray, size: tuple[int, int], device: torch.device,
                   mode: Mode = "resize", batch_size: int = 4, overlap: float = 0.25) -> np.ndarray:
    """Label volume, slice by slice: :func:`predict_volume` (docs §7) in ``resize`` mode, else windows per slice.

    Shape:
        volume (D, H, W) float in [0, 1] -> (D, H, W) uint8 labels.
    """
    if mode == "resize":
        return predict_volume(model, volume, size, device)
    return np.stack([predict_image(model, s, size, device, mode, batch_size, overlap)
                     for s in Progress(volume, desc="slices", unit="slice")])


def read_volume(path: Path, meta: dict[str, Any], window: tuple[float, float] | None = None
                ) -> tuple[np.ndarray, tuple[float, float, float] | None, nib.spatialimages.SpatialImage | None]:
    """Read one input volume for a volumetric checkpoint (docs §20): a NIfTI in the volume readers' array order
    (the voxel axes reversed to (D, H, W), :func:`rwkvlab.data.files.read_nifti`) with its spacing, or a
    (D, H, W) npz/HDF5 array (key ``image``, no spacing); intensities in [0, 1] or mapped from ``window``.

    Returns:
        (volume (D, H, W) float32, spacing in mm along (D, H, W) or ``None``, the NIfTI image or ``None``).

    Raises:
        DataError: naming ``path``: not a NIfTI or array file, not 3D, or intensities outside [0, 1].
    """
    from rwkvlab.data.files import read_nifti

    path = Path(path)
    kind = input_kind(path)
    if kind not in ("nifti", "array"):
        raise DataError(f"{path}: a volumetric checkpoint ({meta['dataset']}) reads 3D volumes: NIfTI "
                        f"({', '.join(NIFTI_SUFFIXES)}) or arrays ({', '.join(ARRAY_SUFFIXES)})")
    if kind == "nifti":
        array, spacing, _ = read_nifti(path)
        nifti = nib.load(path)
    else:
        array, spacing, nifti = read_arrays(path, ("image",))["image"], None, None
    if array.ndim != 3:
        raise DataError(f"{path}: image has shape {array.shape}; a volumetric checkpoint expects a 3D volume")
    return _unit(array.astype(np.float32, copy=False), path, window), spacing, nifti


def predict_whole_volume(model: torch.nn.Module, volume: np.ndarray, spacing: Sequence[float] | None,
                         meta: dict[str, Any], device: torch.device) -> np.ndarray:
    """Label map of a volume by a volumetric checkpoint, in the volume's own grid.

    Where the checkpoint states the spacing it was trained at (``meta["spacing"]``) and the volume has one that
    differs by more than 1%, the volume is resampled to it first (order-3 spline) and the labels are brought back
    with nearest neighbour, as nnU-Net predicts at its target spacing.

    Shape:
        volume (D, H, W) float in [0, 1] -> (D, H, W) uint8 labels.
    """
    from rwkvlab.data.files import resample_volume

    window = SlidingWindow.of(meta["sliding_window"])
    target = meta.get("spacing")
    if spacing is None or target is None or np.allclose(spacing, target, rtol=0.01):
        return predict_volume_3d(model, volume, window, device)
    resampled, _, _ = resample_volume(volume, None, spacing, target)
    labels = predict_volume_3d(model, resampled, window, device)
    back = torch.nn.functional.interpolate(torch.from_numpy(labels)[None, None].float(), size=volume.shape,
                                           mode="nearest-exact")
    return back[0, 0].to(torch.uint8).numpy()
