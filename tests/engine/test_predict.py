"""Predict on a user's own files: label maps in the input's geometry, NIfTI affines kept, resumable, clear errors."""

import os
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from rwkvlab import predict as predict_mod
from rwkvlab.config import recipe_with_defaults
from rwkvlab.data import Prepared
from rwkvlab.engine.checkpoint import save_checkpoint
from rwkvlab.engine.inference import load_for_prediction, predict, predict_volume
from rwkvlab.engine.train import fit
from rwkvlab.models import create_model
from rwkvlab.predict import main, predict_files

SIZE = (32, 32)
CPU = torch.device("cpu")
AFFINE = np.array([[0.0, -0.8, 0.0, 12.5], [1.2, 0.0, 0.0, -40.0], [0.0, 0.0, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]])


def make_checkpoint(path, in_chans, num_classes, intensity, **replace):
    """A checkpoint in ``fit``'s format around random weights."""
    torch.manual_seed(0)
    model = create_model("rwkv_unet_t", in_chans=in_chans, num_classes=num_classes).eval()
    # Random weights favour one class everywhere; centring each class's logits on random images makes every
    # class appear, so that comparing label maps is not comparing two blank images.
    with torch.no_grad():
        model.head.bias -= model(torch.rand(2, in_chans, *SIZE)).mean((0, 2, 3))
    names = ["background", "lesion", "vessel"][:num_classes]
    state = {"model": model.state_dict(), "model_name": "rwkv_unet_t",
             "model_kwargs": {"in_chans": in_chans, "num_classes": num_classes},
             "meta": {"dataset": "toy", "class_names": names, "image_size": list(SIZE), "in_chans": in_chans,
                      "intensity": intensity}}
    state.update(replace)
    save_checkpoint(path, state)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "rgb.pt", 3, 2, "uint8")


@pytest.fixture(scope="module")
def grey_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "grey.pt", 1, 3, "unit_float")


def smooth(rng, shape):
    """Smooth random intensities in [0, 1] (structure at several scales, like an image)."""
    x = ndimage.gaussian_filter(rng.random(shape), 2)
    return (x - x.min()) / (x.max() - x.min())


def photo_folder(folder, rng):
    """Photographs of odd sizes in four formats and modes; returns {file name: (H, W)}."""
    folder.mkdir(parents=True)
    rgb = (smooth(rng, (37, 53, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "colour.jpg", quality=90)
    Image.fromarray((smooth(rng, (100, 61)) * 255).astype(np.uint8)).save(folder / "grey.png")
    Image.fromarray((smooth(rng, (45, 70)) * 65535).astype(np.uint16)).save(folder / "deep.tif")
    (folder / "sub").mkdir()
    Image.fromarray((smooth(rng, (20, 90, 3)) * 255).astype(np.uint8)).save(folder / "sub" / "wide.bmp")
    (folder / "notes.txt").write_text("not an image")
    return {"colour.jpg": (37, 53), "grey.png": (100, 61), "deep.tif": (45, 70), "sub/wide.bmp": (20, 90)}


def labels_png(out, rel):
    name = rel.rsplit(".", 1)[0]
    with Image.open(out / f"{name}_labels.png") as im:
        return np.asarray(im)


@pytest.mark.parametrize("mode", ["resize", "window"])
@pytest.mark.parametrize("which", ["rgb", "grey"])
def test_photos_of_odd_sizes_come_back_at_their_size(rgb_ckpt, grey_ckpt, tmp_path, mode, which):
    ckpt, num_classes = (rgb_ckpt, 2) if which == "rgb" else (grey_ckpt, 3)
    sizes = photo_folder(tmp_path / "in", np.random.default_rng(1))
    index = predict_files(ckpt, tmp_path / "in", tmp_path / "out", CPU, mode=mode)
    assert len(index) == len(sizes)
    seen = set()
    for rel, (h, w) in sizes.items():
        labels = labels_png(tmp_path / "out", rel)
        assert labels.shape == (h, w) and labels.dtype == np.uint8, rel
        assert set(np.unique(labels)) <= set(range(num_classes))
        seen |= set(np.unique(labels).tolist())
        with Image.open(tmp_path / "out" / f"{rel.rsplit('.', 1)[0]}_overlay.png") as im:
            assert im.format == "PNG" and min(im.size) >= 256
    assert seen == set(range(num_classes))  # every class is predicted somewhere: the maps are not blank
    assert sorted(index["shape"]) == sorted(f"{h}x{w}" for h, w in sizes.values())
    assert not list((tmp_path / "out").rglob(".*"))


def test_at_training_size_equals_cached_predict_in_both_modes(rgb_ckpt, tmp_path):
    rng = np.random.default_rng(2)
    images = (np.stack([smooth(rng, (*SIZE, 3)) for _ in range(3)]) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / "in" / f"img{i}.png")
    model, _ = load_for_prediction(rgb_ckpt, CPU)
    expected = predict(model, images, 2, CPU)
    assert set(np.unique(expected)) == {0, 1}
    for mode in ("resize", "window"):
        predict_files(rgb_ckpt, tmp_path / "in", tmp_path / mode, CPU, mode=mode, overlay=False)
        got = np.stack([labels_png(tmp_path / mode, f"img{i}.png") for i in range(3)])
        np.testing.assert_array_equal(got, expected, err_msg=mode)


def test_window_mode_without_overlap_predicts_each_tile_alone(rgb_ckpt, tmp_path):
    image = (smooth(np.random.default_rng(3), (SIZE[0], 2 * SIZE[1], 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "wide.png")
    predict_files(rgb_ckpt, tmp_path / "wide.png", tmp_path / "out", CPU, mode="window", overlap=0.0)
    model, _ = load_for_prediction(rgb_ckpt, CPU)
    tiles = predict(model, np.stack([image[:, : SIZE[1]], image[:, SIZE[1] :]]), 2, CPU)
    np.testing.assert_array_equal(labels_png(tmp_path / "out", "wide.png"), np.concatenate(tiles, axis=1))


def test_nifti_keeps_shape_affine_and_slices_along_the_third_axis(grey_ckpt, tmp_path):
    rng = np.random.default_rng(4)
    volume = smooth(rng, (40, 27, 5)).astype(np.float32)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(volume, AFFINE), tmp_path / "in" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(volume[:, :, 2], AFFINE), tmp_path / "in" / "flat.nii")
    index = predict_files(grey_ckpt, tmp_path / "in", tmp_path / "out", CPU, batch_size=2)
    out = nib.load(tmp_path / "out" / "ct_labels.nii.gz")
    labels = np.asarray(out.dataobj)
    assert labels.shape == volume.shape and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, AFFINE)
    model, _ = load_for_prediction(grey_ckpt, CPU)
    for z in range(volume.shape[2]):  # the docs §7 protocol on each array[:, :, z]
        np.testing.assert_array_equal(labels[:, :, z], predict_volume(model, volume[None, :, :, z], SIZE, CPU)[0])
    assert len(np.unique(labels)) > 1
    flat = nib.load(tmp_path / "out" / "flat_labels.nii")
    assert flat.shape == (40, 27)
    np.testing.assert_allclose(flat.affine, AFFINE)
    np.testing.assert_array_equal(np.asarray(flat.dataobj), labels[:, :, 2])
    assert set(index["shape"]) == {"40x27x5", "40x27"}


def test_nifti_in_hounsfield_units_needs_a_window(grey_ckpt, tmp_path, capsys):
    hu = (smooth(np.random.default_rng(5), (30, 30, 3)) * 1400 - 1000).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, AFFINE), tmp_path / "hu.nii.gz")
    assert main(["--checkpoint", str(grey_ckpt), "--input", str(tmp_path / "hu.nii.gz"), "--out",
                 str(tmp_path / "a")]) == 2
    assert "--window" in capsys.readouterr().err
    predict_files(grey_ckpt, tmp_path / "hu.nii.gz", tmp_path / "b", CPU, window=(-125, 275))
    model, _ = load_for_prediction(grey_ckpt, CPU)
    unit = (np.clip(hu.astype(np.float32), -125, 275) + 125) / 400
    expected = np.moveaxis(predict_volume(model, np.moveaxis(unit, 2, 0), SIZE, CPU), 0, 2)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "b" / "hu_labels.nii.gz").dataobj), expected)


def test_h5_and_npz_arrays_come_back_as_npz_of_their_shape(grey_ckpt, tmp_path):
    rng = np.random.default_rng(6)
    volume, image = smooth(rng, (3, 48, 36)).astype(np.float32), smooth(rng, (50, 41)).astype(np.float32)
    (tmp_path / "in").mkdir()
    with h5py.File(tmp_path / "in" / "case0001.npy.h5", "w") as f:
        f["image"] = volume
    np.savez(tmp_path / "in" / "slice.npz", image=image, label=np.zeros(image.shape, np.uint8))
    predict_files(grey_ckpt, tmp_path / "in", tmp_path / "out", CPU)
    model, _ = load_for_prediction(grey_ckpt, CPU)
    with np.load(tmp_path / "out" / "case0001.npy_labels.npz") as f:
        np.testing.assert_array_equal(f["label"], predict_volume(model, volume, SIZE, CPU))
    with np.load(tmp_path / "out" / "slice_labels.npz") as f:
        np.testing.assert_array_equal(f["label"], predict_volume(model, image[None], SIZE, CPU)[0])


def test_killed_run_leaves_no_partial_file_and_a_rerun_resumes(rgb_ckpt, tmp_path, monkeypatch):
    photo_folder(tmp_path / "in", np.random.default_rng(7))
    real_write, calls = predict_mod.atomic_write, {"n": 0}

    def dying_write(path, write):
        calls["n"] += 1
        if calls["n"] == 4:  # the label map of the second input (overlay, labels per input)
            def killed(tmp):
                write(tmp)  # the whole file sits under its temporary name when the kill comes
                raise KeyboardInterrupt
            return real_write(path, killed)
        return real_write(path, write)

    monkeypatch.setattr(predict_mod, "atomic_write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        predict_files(rgb_ckpt, tmp_path / "in", tmp_path / "out", CPU)
    monkeypatch.setattr(predict_mod, "atomic_write", real_write)
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert written == ["colour_labels.png", "colour_overlay.png", "deep_overlay.png"]  # no temp file, no index
    real_predict, predicted = predict_mod.predict_image, []
    monkeypatch.setattr(predict_mod, "predict_image", lambda m, image, *a: predicted.append(image.shape) or
                        real_predict(m, image, *a))
    index = predict_files(rgb_ckpt, tmp_path / "in", tmp_path / "out", CPU)
    assert len(predicted) == 3 and len(index) == 4  # the first input was skipped
    predict_files(rgb_ckpt, tmp_path / "in", tmp_path / "clean", CPU)
    for rel in ("colour.jpg", "deep.tif", "grey.png", "sub/wide.bmp"):
        np.testing.assert_array_equal(labels_png(tmp_path / "out", rel), labels_png(tmp_path / "clean", rel))
    assert (tmp_path / "out" / "predictions.csv").read_text() == \
        (tmp_path / "clean" / "predictions.csv").read_text().replace("clean", "out")


def test_reads_a_checkpoint_of_fit(tmp_path):
    rng = np.random.default_rng(8)
    n = 6
    masks = (rng.random((n, *SIZE)) > 0.5).astype(np.uint8)
    images = (rng.random((n, *SIZE, 3)) * 255).astype(np.uint8)
    data = Prepared(dataset="toy", description="toy", class_names=("background", "fg"), images=images, masks=masks,
                    ids=np.array([f"c{i}" for i in range(n)]), labelled=np.ones(n, bool), sizes=np.full((n, 2), 32),
                    splits={"train": np.arange(4), "val": np.arange(4, 6)})
    recipe = recipe_with_defaults(epochs=1, batch_size=4, lr=1e-3, min_lr=1e-5, weight_decay=1e-4, ce_weight=0.5, dice_weight=1.0)
    fit("rwkv_unet_t", data, recipe, tmp_path / "run", seed=0, device=CPU)
    model, meta = load_for_prediction(tmp_path / "run" / "best.pt", CPU)
    assert meta["image_size"] == list(SIZE) and meta["intensity"] == "uint8"
    Image.fromarray(images[4]).save(tmp_path / "x.png")
    predict_files(tmp_path / "run" / "best.pt", tmp_path / "x.png", tmp_path / "out", CPU)
    np.testing.assert_array_equal(labels_png(tmp_path / "out", "x.png"), predict(model, images[4:5], 1, CPU)[0])


def _garbage(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing that decodes")
    return path


BAD = {
    "not ours": lambda t, rgb, grey: (torch.save({"state_dict": {}}, t / "foreign.pt") or t / "foreign.pt",
                                       _photo(t), "foreign.pt: not an rwkvlab training checkpoint (no model"),
    "no meta": lambda t, rgb, grey: (make_checkpoint(t / "old.pt", 3, 2, "uint8", meta=None), _photo(t),
                                     "old.pt: not an rwkvlab training checkpoint (no meta)"),
    "weights of another model": lambda t, rgb, grey: (
        make_checkpoint(t / "mixed.pt", 3, 2, "uint8", model_kwargs={"in_chans": 3, "num_classes": 5}), _photo(t),
        "mixed.pt: cannot rebuild rwkv_unet_t"),
    "not a checkpoint": lambda t, rgb, grey: (_garbage(t / "junk.pt"), _photo(t), "junk.pt: not a readable PyTorch"),
    "missing checkpoint": lambda t, rgb, grey: (t / "absent.pt", _photo(t), "absent.pt: checkpoint not found"),
    "four channels": lambda t, rgb, grey: (make_checkpoint(t / "c4.pt", 4, 2, "uint8"), _photo(t),
                                           "c4.pt: trained for 4 input channel(s)"),
    "grey file, colour model": lambda t, rgb, grey: (rgb, _nifti(t, (20, 20, 2)),
                                                     "vol.nii.gz: holds one grey channel"),
    "unreadable image": lambda t, rgb, grey: (rgb, _garbage(t / "broken.png"), "broken.png: unreadable or truncated"),
    "unreadable nifti": lambda t, rgb, grey: (grey, _garbage(t / "broken.nii.gz"), "broken.nii.gz: unreadable"),
    "4D nifti": lambda t, rgb, grey: (grey, _nifti(t, (20, 20, 2, 3)), "vol.nii.gz: image has 4 dimensions"),
    "empty folder": lambda t, rgb, grey: (rgb, _folder(t), "empty: no input files"),
}


def _photo(t):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(t / "p.png")
    return t / "p.png"


def _nifti(t, shape):
    nib.save(nib.Nifti1Image(np.full(shape, 0.5, np.float32), AFFINE), t / "vol.nii.gz")
    return t / "vol.nii.gz"


def _folder(t):
    (t / "empty").mkdir()
    (t / "empty" / "readme.txt").write_text("no images here")
    return t / "empty"


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_stops_with_one_message_naming_it(rgb_ckpt, grey_ckpt, tmp_path, capsys, case):
    ckpt, source, message = BAD[case](tmp_path, rgb_ckpt, grey_ckpt)
    assert main(["--checkpoint", str(ckpt), "--input", str(source), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and message in err.split("error: ")[1] and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))


def test_main_prints_the_index_and_honours_no_overlay(rgb_ckpt, tmp_path, capsys):
    _photo(tmp_path)
    assert main(["--checkpoint", str(rgb_ckpt), "--input", str(tmp_path / "p.png"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--no-overlay", "--mode", "window"]) == 0
    assert "20x30" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "p_labels.png") as im:
        assert im.size == (30, 20)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p_labels.png", "predictions.csv"]


@pytest.mark.slow  # importing torch, timm and MONAI in a fresh process: ~5 s alone, 30 s+ on a loaded machine
def test_command_line_exits_non_zero_without_a_traceback(rgb_ckpt, tmp_path):
    bad = subprocess.run([sys.executable, "-m", "rwkvlab.predict", "--checkpoint", str(rgb_ckpt), "--input",
                          str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert bad.returncode == 2 and "nowhere: input not found" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "out").exists()


def test_skip_invalid_leaves_out_truncated_files_and_names_them(rgb_ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(src / name)
    full = (src / "a.png").read_bytes()
    (src / "b.png").write_bytes(full[: len(full) // 2])  # truncated, sorted between the two good ones
    args = ["--checkpoint", str(rgb_ckpt), "--input", str(src), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "b.png: unreadable or truncated" in err and "--skip-invalid" in err
    assert main([*args, "--skip-invalid"]) == 0
    index = (tmp_path / "out" / "predictions.csv").read_text()
    assert "a.png" in index and "c.png" in index and "b.png" not in index
    skipped = (tmp_path / "out" / "skipped.csv").read_text()
    assert "b.png" in skipped and "truncated" in skipped and "a.png" not in skipped
    assert not (tmp_path / "out" / "b_labels.png").exists()
