"""The volumetric path of the engine (docs §20): patch sampling, sliding-window inference, training, resuming,
evaluation per volume in mm and prediction of a NIfTI file, with a small 3D U-Net."""

import nibabel as nib
import numpy as np
import pytest
import torch

from rwkvlab.config import recipe_with_defaults
from rwkvlab.data import Prepared
from rwkvlab.data.augment import patch_transforms
from rwkvlab.data.loader import VolumePatches
from rwkvlab.engine.evaluate import evaluate_split
from rwkvlab.engine.inference import SlidingWindow, check_image_size, predict_volume_3d
from rwkvlab.engine.train import fit
from rwkvlab.models import create_model
from rwkvlab.predict import predict_files

CPU = torch.device("cpu")
SHAPE = (16, 32, 32)
PATCH = (16, 16, 16)  # MONAI's BasicUNet pools four times along every axis
KWARGS = {"features": [4, 4, 8, 8, 16, 4]}  # a small MONAI BasicUNet: seconds per epoch on one core


def _volume(rng, shape=SHAPE):
    """A box of class 1 and a smaller box of class 2 inside it, brighter than the noisy background."""
    label = np.zeros(shape, np.uint8)
    d, h, w = (rng.integers(1, n // 3) for n in shape)
    label[d : d + shape[0] // 2, h : h + shape[1] // 2, w : w + shape[2] // 2] = 1
    label[d + 1 : d + 3, h + 2 : h + 6, w + 2 : w + 6] = 2
    image = (0.2 + 0.3 * label + 0.05 * rng.standard_normal(shape)).clip(0, 1).astype(np.float32)
    return image, label


@pytest.fixture(scope="module")
def volumes():
    rng = np.random.default_rng(0)
    ids = [f"v{i}" for i in range(6)]
    vols = {v: _volume(rng) for v in ids}
    return Prepared(dataset="toy3d", description="toy volumes", class_names=("background", "outer", "inner"),
                    images=np.zeros((0, 1, 1, 1), np.float16), masks=np.zeros((0, 1, 1), np.uint8),
                    ids=np.array([], dtype=str), labelled=np.zeros(0, bool), sizes=np.zeros((0, 2), np.int64),
                    splits={s: np.zeros(0, np.int64) for s in ("train", "val", "test")},
                    volume_splits={"train": ids[:4], "val": ids[4:5], "test": ids[5:]}, volumes=vols,
                    spacings={v: (3.0, 1.5, 1.5) for v in ids})


def recipe(**kw):
    base = dict(epochs=2, batch_size=2, lr=3e-3, min_lr=1e-5, weight_decay=1e-4, ce_weight=0.5, dice_weight=1.0,
                augment="volume", patch_size=list(PATCH), patches_per_volume=2, sw_batch_size=2)
    return recipe_with_defaults(**{**base, **kw})


def test_patches_have_the_patch_size_and_hold_foreground_when_asked(volumes):
    data = VolumePatches(volumes, "train", 3, patch_transforms("none", PATCH, 1.0, seed=0))
    assert len(data) == 12
    for i in range(len(data)):
        item = data[i]
        assert tuple(item["image"].shape) == (1, *PATCH) and tuple(item["label"].shape) == (1, *PATCH)
        # a positive patch is centred on a labelled voxel (shifted inward at the border), so it holds it
        assert item["label"].max() > 0
    small = {"v0": (np.zeros((40, 40, 40), np.float32), np.zeros((40, 40, 40), np.uint8))}
    small["v0"][1][2, 2, 2] = 1
    one_voxel = Prepared(**{**volumes.__dict__, "volumes": small, "volume_splits": {"train": ["v0"]}})
    positives = VolumePatches(one_voxel, "train", 8, patch_transforms("none", PATCH, 1.0, seed=0))
    negatives = VolumePatches(one_voxel, "train", 8, patch_transforms("none", PATCH, 0.0, seed=0))
    assert all(positives[i]["label"].sum() == 1 for i in range(8))
    assert sum(int(negatives[i]["label"].sum()) for i in range(8)) < 8


def test_the_volume_augmentation_mirrors_each_axis(volumes):
    image, label = volumes.volumes["v0"]
    item = {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label.astype(np.float32))[None]}
    plain = patch_transforms("none", SHAPE, 1.0, seed=0)(dict(item))[0]["label"][0]
    mirrored = set()
    for seed in range(12):
        out = patch_transforms("volume", SHAPE, 1.0, seed=seed)(dict(item))[0]["label"][0]
        for axis in range(3):
            if torch.equal(out, plain.flip(axis)) and not torch.equal(out, plain):
                mirrored.add(axis)
    assert mirrored == {0, 1, 2}


def test_2d_recipes_are_refused_for_volumes_and_the_volume_recipe_for_2d_items():
    with pytest.raises(ValueError, match="2D recipe"):
        patch_transforms("acdc", PATCH, 0.5, seed=0)
    from rwkvlab.data.augment import train_transforms
    with pytest.raises(ValueError, match="volumetric recipe"):
        train_transforms("volume", (32, 32), seed=0)


def test_sliding_windows_without_overlap_are_the_model_on_each_tile():
    torch.manual_seed(0)
    model = create_model("unet3d", in_chans=1, num_classes=3, **KWARGS).eval()
    volume = np.random.default_rng(1).random((32, 32, 48), dtype=np.float32)
    got = predict_volume_3d(model, volume, SlidingWindow(PATCH, 0.0, "constant", 3), CPU)
    want = np.zeros(volume.shape, np.uint8)
    with torch.no_grad():
        for d, h, w in np.ndindex(2, 2, 3):
            tile = (slice(16 * d, 16 * d + 16), slice(16 * h, 16 * h + 16), slice(16 * w, 16 * w + 16))
            want[tile] = model(torch.from_numpy(volume[tile])[None, None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(got, want)


def test_size_rule_names_the_axes():
    model = create_model("unet3d", in_chans=1, num_classes=2, **KWARGS)
    check_image_size(model, (16, 32, 48), "x")
    with pytest.raises(ValueError, match="recipe patch_size: image size 8x32x32"):
        check_image_size(model, (8, 32, 32), "recipe patch_size")
    with pytest.raises(ValueError, match="2 axes"):
        check_image_size(model, (32, 32), "prepare.image_size.demo")


def test_fit_resumes_bit_for_bit_and_evaluates_per_volume_in_mm(volumes, tmp_path, one_thread):
    r = recipe(precise_bn=True)
    full = fit("unet3d", volumes, r, tmp_path / "full", seed=0, device=CPU, model_kwargs=KWARGS)
    fit("unet3d", volumes, r, tmp_path / "cut", seed=0, device=CPU, model_kwargs=KWARGS, stop_after=1)
    resumed = fit("unet3d", volumes, r, tmp_path / "cut", seed=0, device=CPU, model_kwargs=KWARGS)
    assert list(full["epoch"]) == [1, 2] and full.equals(resumed)
    a, b = (torch.load(d / "last.pt", weights_only=False) for d in (tmp_path / "full", tmp_path / "cut"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    meta = a["meta"]
    assert meta["spatial_dims"] == 3 and meta["image_size"] == list(PATCH) and meta["spacing"] == [3.0, 1.5, 1.5]
    assert meta["sliding_window"] == {"roi_size": PATCH, "overlap": 0.5, "mode": "gaussian", "batch_size": 2}

    model = create_model("unet3d", in_chans=1, num_classes=3, **KWARGS)
    model.load_state_dict(a["model"])
    per_case, preds = evaluate_split(model, volumes, "test", 2, CPU, SlidingWindow.of(r))
    assert list(per_case["case"]) == ["v5", "v5"] and per_case["hd95_mm"].notna().all()
    assert preds["v5"].shape == SHAPE
    with pytest.raises(ValueError, match="sliding window"):
        evaluate_split(model, volumes, "test", 2, CPU)


def test_predict_writes_a_nifti_label_map_with_the_input_affine(volumes, tmp_path, one_thread):
    fit("unet3d", volumes, recipe(epochs=1), tmp_path / "run", seed=0, device=CPU, model_kwargs=KWARGS)
    image, _ = volumes.volumes["v5"]
    affine = np.diag([-1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    stored = image.transpose(2, 1, 0)  # the readers' (D, H, W) is the file's voxel axes reversed
    nib.save(nib.Nifti1Image(stored, affine), tmp_path / "case.nii.gz")
    index = predict_files(tmp_path / "run" / "last.pt", tmp_path / "case.nii.gz", tmp_path / "out", CPU)
    out = nib.load(tmp_path / "out" / "case_labels.nii.gz")
    np.testing.assert_allclose(out.affine, affine)
    assert out.shape == stored.shape and index["shape"].tolist() == ["x".join(map(str, stored.shape))]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    model = create_model("unet3d", in_chans=1, num_classes=3, **KWARGS)
    model.load_state_dict(state["model"])
    want = predict_volume_3d(model, image, SlidingWindow.of(state["meta"]["sliding_window"]), CPU)
    np.testing.assert_array_equal(np.asarray(out.dataobj).transpose(2, 1, 0), want)
