"""Export: ONNX and TorchScript give our logits at sizes other than the traced one, a MONAI bundle labels files
exactly as predict does, and bad inputs stop with one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from monai.bundle import run, verify_metadata, verify_net_in_out
from PIL import Image

from engine.test_predict import make_checkpoint
from rwkvlab.data.readers.volume_demo import CLASS_NAMES, generate3d
from rwkvlab.engine.checkpoint import save_checkpoint
from rwkvlab.export import main
from rwkvlab.models import create_model, load_model
from rwkvlab.predict import predict_files

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
PATCH = [8, 32, 32]  # the 3D model's training patch and sliding window; its size divisor is (8, 16, 16)
KWARGS_3D = {"in_chans": 1, "num_classes": len(CLASS_NAMES), "strides": [[1, 2, 2], 2, 2, 2], "depths": [1, 1, 2, 2]}
SIZES = {"2d": [(1, 3, 64, 64), (2, 3, 96, 128)], "3d": [(1, 1, 8, 32, 32), (2, 1, 16, 32, 48)]}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """{"2d" and "grey": RWKV-UNet-T on RGB or grey photographs (predict's test checkpoints), "3d": a small
    volumetric RWKV-UNet-T for the CT-like demo volumes, its class logits centred as make_checkpoint does}."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = create_model("rwkv_unet3d_t", **KWARGS_3D).eval()
    with torch.no_grad():
        model.head.bias -= model(torch.rand(2, 1, *PATCH)).mean((0, 2, 3, 4))
    meta = {"dataset": "volume_demo", "class_names": list(CLASS_NAMES), "image_size": PATCH, "in_chans": 1,
            "intensity": "unit_float", "spatial_dims": 3, "spacing": [3.0, 1.5, 1.5],
            "sliding_window": {"roi_size": PATCH, "overlap": 0.5, "mode": "gaussian", "batch_size": 2}}
    save_checkpoint(folder / "vol.pt", {"model": model.state_dict(), "model_name": "rwkv_unet3d_t",
                                        "model_kwargs": KWARGS_3D, "meta": meta})
    return {"2d": make_checkpoint(folder / "rgb.pt", 3, 2, "uint8"), "3d": folder / "vol.pt",
            "grey": make_checkpoint(folder / "grey.pt", 1, 3, "unit_float")}


def rel_l2(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_onnx_gives_our_logits_at_two_sizes(ckpts, tmp_path, dims):
    out = tmp_path / "model.onnx"
    assert main([str(ckpts[dims]), "--format", "onnx", "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    (image,), (logits,) = session.get_inputs(), session.get_outputs()
    assert (image.name, logits.name) == ("image", "logits")
    assert all(isinstance(n, str) for i, n in enumerate(image.shape) if i != 1), image.shape  # symbolic sizes
    model = load_model(ckpts[dims])
    for shape in SIZES[dims]:
        x = torch.rand(shape)
        with torch.no_grad():
            want = model(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == want.shape and rel_l2(got, want) <= 1e-4, shape


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_torchscript_gives_our_logits_at_two_sizes(ckpts, tmp_path, dims):
    out = tmp_path / "model.ts"
    assert main([str(ckpts[dims]), "--format", "torchscript", "--out", str(out)]) == 0
    traced, model = torch.jit.load(str(out)), load_model(ckpts[dims])
    for shape in SIZES[dims]:
        x = torch.rand(shape)
        with torch.no_grad():
            want, got = model(x).numpy(), traced(x).numpy()
        assert got.shape == want.shape and rel_l2(got, want) <= 1e-4, shape
    # another process runs it with torch alone: no custom op or Python call of rwkvlab inside
    code = ("import sys, torch; y = torch.jit.load(sys.argv[1])(torch.rand(1, *map(int, sys.argv[2:]))); "
            "assert y.shape[2:] == torch.Size(map(int, sys.argv[3:])); "
            "assert not [m for m in sys.modules if m.startswith('rwkvlab')]")
    subprocess.run([sys.executable, "-c", code, str(out), *map(str, SIZES[dims][1][1:])], check=True, cwd=tmp_path,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_same_labels(got, want, name):
    """The bundle's labels are predict's, up to near-ties: the traced graph runs PyTorch's convolutions and the
    reference Bi-WKV, predict rwkvlab's CPU kernels, and logits ~1e-6 apart flip a voxel whose two best classes tie
    (1 of 36,864 in the demo volume on one CPU, none on another). A wrong preprocessing or window moves thousands."""
    assert got.shape == want.shape, name
    assert np.count_nonzero(got != want) <= max(1, got.size // 10_000), (name, np.count_nonzero(got != want))


def bundle(ckpt, out, *extra):
    """Export and verify a bundle as its docs/README.md says, with MONAI's functions behind ``python -m
    monai.bundle`` (whose command line needs the package fire)."""
    assert main([str(ckpt), "--format", "bundle", "--out", str(out), *extra]) == 0
    configs = out / "configs"
    verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(configs / "metadata_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), bundle_root=str(out))
    return json.loads((configs / "metadata.json").read_text())


@pytest.mark.parametrize("which", ["2d", "grey"])
def test_bundle_labels_the_demo_photos_as_predict(ckpts, tmp_path, which):
    meta = bundle(ckpts[which], tmp_path / "bundle")
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == ["16*n", "16*n"]
    photos = ROOT / "data" / "demo" / "images"
    run(config_file=str(tmp_path / "bundle" / "configs" / "inference.json"), bundle_root=str(tmp_path / "bundle"),
        dataset_dir=str(photos), output_dir=str(tmp_path / "bundle_out"))
    predict_files(ckpts[which], photos, tmp_path / "predict_out", CPU, overlay=False)
    names = sorted(p.name for p in (tmp_path / "predict_out").glob("*_labels.png"))
    assert len(names) == len(list(photos.glob("*.jpg"))) == 36
    assert sorted(p.name for p in (tmp_path / "bundle_out").iterdir()) == names
    seen = set()
    for name in names:
        want, got = (np.asarray(Image.open(tmp_path / d / name)) for d in ("predict_out", "bundle_out"))
        assert_same_labels(got, want, name)
        seen |= set(np.unique(want).tolist())
    assert len(seen) > 1  # not two blank maps


def test_bundle_labels_a_demo_volume_as_predict(ckpts, tmp_path):
    meta = bundle(ckpts["3d"], tmp_path / "bundle", "--window", "-125", "275")
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == len(CLASS_NAMES)
    generate3d(tmp_path / "demo", n_cases=1, shape=(16, 48, 48))
    volumes = tmp_path / "demo" / "imagesTr"
    run(config_file=str(tmp_path / "bundle" / "configs" / "inference.json"), bundle_root=str(tmp_path / "bundle"),
        dataset_dir=str(volumes), output_dir=str(tmp_path / "bundle_out"))
    predict_files(ckpts["3d"], volumes, tmp_path / "predict_out", CPU, overlay=False, window=(-125, 275))
    want, got = (nib.load(tmp_path / d / "demo_001_0000_labels.nii.gz") for d in ("predict_out", "bundle_out"))
    assert_same_labels(np.asarray(got.dataobj), np.asarray(want.dataobj), "demo_001")
    np.testing.assert_allclose(got.affine, want.affine)
    assert len(np.unique(np.asarray(want.dataobj))) > 2


def test_bundle_replaces_an_output_only_when_asked_and_leaves_no_partial_folder(ckpts, tmp_path, capsys,
                                                                                 monkeypatch):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("an earlier export")
    assert main([str(ckpts["3d"]), "--format", "bundle", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {out}: exists; pass --overwrite to replace it"

    def failing(*args):
        raise RuntimeError("killed while tracing")

    monkeypatch.setattr("rwkvlab.export.export_torchscript", failing)
    with pytest.raises(RuntimeError, match="killed"):
        main([str(ckpts["3d"]), "--format", "bundle", "--out", str(out), "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"] and (out / "old.txt").is_file()
    monkeypatch.undo()
    assert main([str(ckpts["3d"]), "--format", "bundle", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["configs", "docs", "models"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def _garbage(path):
    path.write_bytes(b"not a checkpoint")
    return path


def _release(path):
    return make_checkpoint(path, 3, 2, "uint8", model_kwargs={"in_chans": 3, "num_classes": 2, "wkv": "release"})


@pytest.mark.parametrize("case, args, message", [
    ("garbage", ["--format", "onnx"], "garbage.pt: not a readable PyTorch checkpoint"),
    ("release", ["--format", "onnx"], "release.pt: its model runs Bi-WKV with wkv: release"),
    ("2d", ["--format", "bundle", "--window", "0", "1"], "--window is the intensity window"),
])
def test_bad_checkpoint_or_option_stops_with_one_line(ckpts, tmp_path, capsys, case, args, message):
    ckpt = {"garbage": lambda: _garbage(tmp_path / "garbage.pt"), "release": lambda: _release(tmp_path / "release.pt"),
            "2d": lambda: ckpts["2d"]}[case]()
    assert main([str(ckpt), *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_unknown_format_names_the_option(ckpts, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(ckpts["2d"]), "--format", "tflite", "--out", str(tmp_path / "m")])
    assert stop.value.code == 2 and "--format: invalid choice: 'tflite'" in capsys.readouterr().err
