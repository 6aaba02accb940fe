"""Export a trained checkpoint for use without rwkvlab (docs/export.md)::

    python -m rwkvlab.export CHECKPOINT --format onnx|torchscript|bundle --out PATH [--window LO HI] [--overwrite]

* ``onnx``: one ONNX file (opset 18), input ``image`` (N, C, H, W) or (N, C, D, H, W) float32 in [0, 1], output
  ``logits`` of the same spatial size; batch and every spatial size dynamic (multiples of the model's
  ``size_divisor``).
* ``torchscript``: the model traced with ``torch.jit.trace``, same input and output; ``torch.jit.load`` alone
  runs it.
* ``bundle``: a MONAI bundle folder (``configs/metadata.json``, ``configs/inference.json``, ``models/model.ts``,
  ``docs/README.md``) whose ``inference.json`` labels photographs (2D checkpoints) or NIfTI volumes (volumetric
  ones) as ``python -m rwkvlab.predict`` does; ``--window LO HI`` is the intensity window of its volumes.

Every format holds the model in plain PyTorch operators: under ``torch.jit.trace`` and ``torch.export`` Bi-WKV takes
its reference formula and the models' CPU kernels their PyTorch formulation.
A checkpoint with ``wkv: release`` cannot be exported. Outputs are built beside ``--out`` and renamed onto it; an
existing output is replaced only with ``--overwrite``. Errors stop with one line naming the file or option.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from rwkvlab.engine.inference import NIFTI_SUFFIXES, PHOTO_SUFFIXES, load_for_prediction, spatial_dims
from rwkvlab.io import atomic_write
from rwkvlab.models import read_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "OPSET", "load_exportable", "example_input", "export_onnx",
           "export_torchscript", "bundle_configs", "export_bundle", "export", "main"]

FORMATS = ("onnx", "torchscript", "bundle")
OPSET = 18
_AXES = {2: ("height", "width"), 3: ("depth", "height", "width")}
# verify_metadata downloads this unless --filepath names a copy: each bundle ships one (configs/metadata_schema.json)
_SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
               "meta_schema_20240725.json")
_TENSOR = {"type": "object", "required": ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range"],
           "properties": {"type": {"type": "string"}, "format": {"type": "string"},
                          "num_channels": {"type": "integer"}, "dtype": {"type": "string"},
                          "spatial_shape": {"type": "array", "items": {"type": ["string", "integer"]}},
                          "value_range": {"type": "array", "items": {"type": "number"}},
                          "is_patch_data": {"type": "boolean"}, "channel_def": {"type": "object"}}}
_IO = {"type": "object", "required": ["inputs", "outputs"],
       "properties": {k: {"type": "object", "patternProperties": {"^.+$": {"$ref": "#/$defs/tensor"}}}
                      for k in ("inputs", "outputs", "post_processed_outputs")}}
_STRINGS = ("schema", "version", "monai_version", "pytorch_version", "numpy_version", "task", "description",
            "authors", "copyright")
# MONAI's published schema (_SCHEMA_URL) condensed: the keys it requires, their types, the tensor description.
SCHEMA = {"$schema": "https://json-schema.org/draft/2019-09/schema", "$defs": {"tensor": _TENSOR, "network_io": _IO},
          "type": "object", "required": [*_STRINGS, "required_packages_version", "network_data_format"],
          "properties": {**{k: {"type": "string"} for k in _STRINGS}, "changelog": {"type": "object"},
                         "required_packages_version": {"type": "object"},
                         "network_data_format": {"$ref": "#/$defs/network_io"}}}


def load_exportable(path: Path) -> tuple[nn.Module, dict[str, Any], str]:
    """The model of a training checkpoint on the CPU in eval mode, its checked ``meta``
    (:func:`rwkvlab.engine.inference.load_for_prediction`) and its registry name.

    Raises:
        FileNotFoundError, ValueError: naming ``path``: not one of our checkpoints, or its Bi-WKV is ``release``
            (a Python loop over chunks whose count follows the token count: no dynamic sizes).
    """
    state = read_checkpoint(path)
    kwargs = state.get("model_kwargs") if isinstance(state, dict) else None
    if isinstance(kwargs, dict) and kwargs.get("wkv") == "release":
        raise ValueError(f"{path}: its model runs Bi-WKV with wkv: release, a loop whose length follows the input "
                         f"size, which cannot be exported with dynamic sizes; export a checkpoint with wkv: exact")
    model, meta = load_for_prediction(path, torch.device("cpu"))
    return model, meta, state["model_name"]


def _divisors(model: nn.Module) -> tuple[int, ...]:
    dims = spatial_dims(model)
    divisor = getattr(model, "size_divisor", 1)
    return tuple(divisor) if isinstance(divisor, (tuple, list)) else (divisor,) * dims


def example_input(model: nn.Module, in_chans: int) -> torch.Tensor:
    """The input the model is traced with: a batch of 2 and twice the size divisor along each axis, so that no size
    is 1, which ``torch.export`` would fix as a constant.

    Shape:
        (2, in_chans, 2 d_1, ..., 2 d_k), d the model's ``size_divisor`` per axis.
    """
    return torch.rand(2, in_chans, *(2 * d for d in _divisors(model)))


def export_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    """Write ``model`` as ONNX to ``path`` with torch's ``torch.export``-based exporter: batch dynamic, each
    spatial size any multiple of its divisor (a symbol such as ``16*height``), weights inside the file."""
    axes = {0: torch.export.Dim("batch", min=1)}
    for i, (name, d) in enumerate(zip(_AXES[example.dim() - 2], _divisors(model)), start=2):
        blocks = torch.export.Dim(name, min=1)
        axes[i] = blocks if d == 1 else d * blocks
    with torch.no_grad():
        torch.onnx.export(model, (example,), path, dynamo=True, dynamic_shapes=(axes,), input_names=["image"],
                          output_names=["logits"], opset_version=OPSET, external_data=False, verbose=False)


def export_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> None:
    """Write ``model`` traced by ``torch.jit.trace`` to ``path``; the trace takes every size from its input."""
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that the models' size checks become constants (they hold for the example; a size off the
        # divisor fails inside the graph with a shape mismatch), and torch that torch.jit is deprecated: but
        # torch.jit.load, the promise of this format, does not read torch.export's programs.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "`torch.jit", FutureWarning)
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))


def bundle_configs(meta: dict[str, Any], model_name: str, divisors: Sequence[int], source: str,
                   window: tuple[float, float] | None = None) -> dict[str, dict[str, Any]]:
    """``metadata.json`` and ``inference.json`` of the bundle of a checkpoint (module docstring, docs/export.md).

    Args:
        meta: the checkpoint's meta (:func:`load_exportable`).
        model_name: its registry name.
        divisors: the model's size divisor per axis.
        source: the checkpoint's path, for the changelog.
        window: the intensity window [lo, hi] of volumes, mapped onto [0, 1]; ``None``: they are in [0, 1].
    """
    from importlib.metadata import version

    import monai
    import numpy

    volumetric = meta.get("spatial_dims") == 3
    names = list(meta["class_names"])
    shape = [f"{d}*n" for d in divisors]
    chans = meta["in_chans"]
    image = {"type": "image", "format": "magnitude", "num_channels": chans, "spatial_shape": shape,
             "dtype": "float32", "value_range": [0, 1], "is_patch_data": volumetric,
             "channel_def": {str(i): c for i, c in enumerate(["red", "green", "blue"] if chans == 3 else ["image"])}}
    pred = {"type": "image", "format": "segmentation", "num_channels": len(names), "spatial_shape": shape,
            "dtype": "float32", "value_range": [], "is_patch_data": volumetric,
            "channel_def": {str(i): c for i, c in enumerate(names)}}
    kind = "NIfTI volumes" if volumetric else "photographs"
    metadata = {
        "schema": _SCHEMA_URL, "version": "0.1.0", "changelog": {"0.1.0": f"exported by rwkvlab from {source}"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__, "numpy_version": numpy.__version__,
        "required_packages_version": {p: version(p) for p in (["nibabel"] if volumetric else ["pillow", "scipy"])},
        "name": f"{model_name}_{meta['dataset']}", "task": f"Segmentation of {kind} ({meta['dataset']})",
        "description": f"{model_name} (RWKV-UNet, Jiang et al. 2025) trained by rwkvlab on {meta['dataset']}; "
                       f"labels {kind} as python -m rwkvlab.predict does, with a TorchScript model",
        "authors": "rwkvlab", "copyright": f"rwkvlab; the weights follow the licence of the {meta['dataset']} data",
        "data_type": "nibabel" if volumetric else "image", "pred_classes": ", ".join(names),
        "references": ["Jiang et al., RWKV-UNet: Improving UNet with Long-Range Cooperation for Effective Medical "
                       "Image Segmentation, 2025"],
        "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}},
    }
    config = {
        "imports": ["$import collections", "$import glob", "$import os", "$import numpy",
                    "$from scipy import ndimage", "$from PIL import Image"],
        "bundle_root": ".", "dataset_dir": "$@bundle_root + '/data'", "output_dir": "$@bundle_root + '/eval'",
        "suffixes": list(NIFTI_SUFFIXES if volumetric else PHOTO_SUFFIXES),
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*'))) "
                    "if f.lower().endswith(tuple(@suffixes))]",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": "$torch.jit.load(os.path.join(@bundle_root, 'models', 'model.ts'))",
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        # one input per forward, as predict (batching changes the logits' last bits); plain torch, no ignite
        "segment": "$torch.no_grad()(lambda d: @postprocessing({**d, 'pred': @inferer(d['image'][None].to(@device), "
                   "@network)[0].cpu()}))",
        "run": ["$collections.deque(map(@segment, @dataset), maxlen=0)"],
    }
    argmax = {"_target_": "AsDiscreted", "keys": "pred", "argmax": True, "dtype": "$torch.uint8"}
    save = {"_target_": "SaveImaged", "keys": "pred", "meta_keys": "image_meta_dict", "output_dir": "@output_dir",
            "output_postfix": "labels", "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False}
    if volumetric:
        sw = meta["sliding_window"]
        config.update({
            "window": list(window or (0.0, 1.0)),
            # predict's read_volume: the voxel axes reversed to (D, H, W), the window mapped onto [0, 1]
            "preprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader", "image_only": False},
                {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
                {"_target_": "Transposed", "keys": "image", "indices": [0, 3, 2, 1]},
                {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": "@window#0", "a_max": "@window#1",
                 "b_min": 0.0, "b_max": 1.0, "clip": True}]},
            # predict_volume_3d blends each window's softmax
            "network": "$torch.nn.Sequential(@network_def, torch.nn.Softmax(dim=1)).to(@device)",
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(sw["roi_size"]),
                        "sw_batch_size": sw["batch_size"], "overlap": sw["overlap"], "mode": sw["mode"]},
            "postprocessing": {"_target_": "Compose", "transforms": [
                argmax, {"_target_": "Transposed", "keys": "pred", "indices": [0, 3, 2, 1]},
                # a plain array: SaveImaged then takes the input's name and affine from image_meta_dict
                {"_target_": "ToNumpyd", "keys": "pred"},
                {**save, "output_ext": ".nii.gz", "writer": "NibabelWriter"}]},
        })
        return {"metadata": metadata, "inference": config}
    h, w = meta["image_size"]
    if meta["intensity"] == "uint8":  # predict's read_image and resize_image (PIL's box filter), then / 255
        read = "$lambda im: im.convert('RGB')"
        steps = [f"$lambda x: numpy.asarray(Image.fromarray(numpy.asarray(x)).resize(({w}, {h}), Image.BOX))",
                 "$lambda x: x.astype(numpy.float32) / 255"]
    else:  # predict's _read_grey (8-bit) and resize_image: order-3 spline, clipped, unless at the size already
        read = "$lambda im: im.convert('RGB').convert('L')"
        steps = ["$lambda x: numpy.asarray(x, numpy.float32) / 255",
                 f"$lambda x: x if x.shape == ({h}, {w}) else numpy.clip(ndimage.zoom(x, ({h} / x.shape[0], "
                 f"{w} / x.shape[1]), order=3), 0.0, 1.0)"]
    config.update({
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "PILReader", "reverse_indexing": False,
             "converter": read, "dtype": None, "image_only": False},
            *({"_target_": "Lambdad", "keys": "image", "func": f, "track_meta": False} for f in steps),
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": -1 if chans == 3 else "no_channel"}]},
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SimpleInferer"},
        # predict's resize_label: nearest neighbour back to the photo's size, PIL's (width, height) here
        "labels_back": "$lambda labels, size: ndimage.zoom(numpy.asarray(labels[0]), "
                       "[int(n) / m for n, m in zip(size, labels.shape[1:])], order=0)[None]",
        "postprocessing": {"_target_": "Compose", "transforms": [
            argmax,
            # PILWriter writes MONAI's (width, height) order
            {"_target_": "Transposed", "keys": "pred", "indices": [0, 2, 1]},
            {"_target_": "Lambda", "func": "$lambda d: {**d, 'pred': @labels_back(d['pred'], "
                                           "d['image_meta_dict']['spatial_shape'])}"},
            {**save, "output_ext": ".png", "writer": "PILWriter"}]},
    })
    return {"metadata": metadata, "inference": config}


def _readme(meta: dict[str, Any], model_name: str, window: tuple[float, float] | None) -> str:
    if meta.get("spatial_dims") == 3:
        shape, ext = "D, H, W", ".nii.gz"
        reads = (f"NIfTI volumes whole: the voxel axes reversed to (D, H, W), intensities "
                 f"{list(window) if window else [0, 1]} mapped onto [0, 1] (`--window [LO,HI]` on the run command for "
                 f"another window), MONAI's sliding window {meta['sliding_window']}. Give volumes at the training "
                 f"spacing {meta.get('spacing')} mm (D, H, W): unlike rwkvlab.predict, the bundle does not resample")
    else:
        shape, ext = "H, W", ".png"
        reads = (f"8-bit photographs ({', '.join(PHOTO_SUFFIXES)}) as rwkvlab.predict --mode resize: resized to the "
                 f"training size {'x'.join(map(str, meta['image_size']))}, labels back with nearest neighbour")
    return (f"# {model_name} on {meta['dataset']}\n\nExported by `python -m rwkvlab.export` (rwkvlab). "
            f"`models/model.ts` is TorchScript that `torch.jit.load` runs without rwkvlab: input "
            f"(N, {meta['in_chans']}, {shape}) float32 in [0, 1], each size a multiple of its factor in "
            f"`spatial_shape` (`configs/metadata.json`); output the logits of {', '.join(meta['class_names'])}.\n\n"
            f"`configs/inference.json` labels the files of `dataset_dir` and writes `<name>_labels{ext}` (uint8 class "
            f"indices) to `output_dir`. It reads {reads}.\n\nFrom this folder (`python -m monai.bundle` needs the "
            "package fire; `monai.bundle.run(...)` and the others run without it):\n\n```bash\n"
            "python -m monai.bundle run --config_file configs/inference.json --dataset_dir INPUTS --output_dir OUT\n"
            "python -m monai.bundle verify_metadata --meta_file configs/metadata.json "
            "--filepath configs/metadata_schema.json\n"
            "python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json "
            "--config_file configs/inference.json\n```\n")


def export_bundle(model: nn.Module, meta: dict[str, Any], model_name: str, folder: Path, source: str,
                  window: tuple[float, float] | None = None) -> None:
    """Write the MONAI bundle of a checkpoint into ``folder`` (module docstring); ``models/model.ts`` is
    :func:`export_torchscript`'s."""
    configs = bundle_configs(meta, model_name, _divisors(model), source, window)
    (folder / "configs").mkdir(parents=True)
    for name, content in {**configs, "metadata_schema": SCHEMA}.items():
        (folder / "configs" / f"{name}.json").write_text(json.dumps(content, indent=2) + "\n")
    (folder / "models").mkdir()
    export_torchscript(model, folder / "models" / "model.ts", example_input(model, meta["in_chans"]))
    (folder / "docs").mkdir()
    (folder / "docs" / "README.md").write_text(_readme(meta, model_name, window))


def _replace_folder(out: Path, build: Callable[[Path], None]) -> None:
    """``build(tmp)`` into a new folder beside ``out``, then rename it onto ``out``, an existing ``out`` moved aside
    first and removed last, so that ``out`` never holds a partial bundle."""
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp)
        raise
    old = tmp.with_name(tmp.name + ".old")
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)


def export(checkpoint: Path, fmt: str, out: Path, overwrite: bool = False,
           window: tuple[float, float] | None = None) -> Path:
    """Export ``checkpoint`` in format ``fmt`` (:data:`FORMATS`) to ``out`` (module docstring).

    Raises:
        FileNotFoundError, ValueError: naming the checkpoint or option at fault (:func:`load_exportable`).
        FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is unknown; choose one of {', '.join(FORMATS)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists; pass --overwrite to replace it")
    if out.is_dir() and fmt != "bundle":
        raise ValueError(f"{out}: is a folder; --format {fmt} writes one file")
    model, meta, model_name = load_exportable(checkpoint)
    if window is not None and (fmt != "bundle" or meta.get("spatial_dims") != 3):
        raise ValueError("--window is the intensity window of a volumetric checkpoint's bundle")
    if window is not None and not window[1] > window[0]:
        raise ValueError(f"--window must be LO < HI, got {window[0]} {window[1]}")
    if fmt == "bundle":
        _replace_folder(out, lambda tmp: export_bundle(model, meta, model_name, tmp, str(checkpoint), window))
    else:
        writer = export_onnx if fmt == "onnx" else export_torchscript
        atomic_write(out, lambda tmp: writer(model, tmp, example_input(model, meta["in_chans"])))
    logger.info("%s: exported as %s to %s", checkpoint, fmt, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="best.pt or last.pt of the train stage")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", type=Path, required=True, help="the file (onnx, torchscript) or folder (bundle)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                        help="bundle of a volumetric checkpoint: map intensities [LO, HI] onto [0, 1], e.g. -125 275")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("onnxscript", "onnx_ir"):  # the ONNX optimiser logs every rewrite at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        export(args.checkpoint, args.format, args.out, args.overwrite, tuple(args.window) if args.window else None)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
