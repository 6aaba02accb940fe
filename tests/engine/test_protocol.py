"""The volume protocol (docs §7) gives TransUNet's ``test_single_volume`` bit for bit, through prepare -> evaluate.

The reference is a transcription, written here from the published steps, of TransUNet's ``test_single_volume``
and ``calculate_metric_percase`` with MedPy's ``dc`` and ``hd95``: plain NumPy, SciPy and torch, one slice per
forward, the whole-volume distance transform, on the float32 volumes read from the h5 files.
"""

import h5py
import numpy as np
import pytest
import torch
from scipy import ndimage

from fixtures.synapse import write_h5
from rwkvlab.data import load_prepared
from rwkvlab.data.readers import get_reader
from rwkvlab.data._base import DataError
from rwkvlab.data.cache import prepare, resize_image, resize_label
from rwkvlab.engine.evaluate import evaluate_split
from rwkvlab.engine.inference import predict
from rwkvlab.models import create_model

CPU = torch.device("cpu")
PATCH = (64, 64)
# case -> volume shape: non-square and downsampled, upsampled, and already at the patch size (no zoom)
VOLUMES = {"case0001": (5, 96, 80), "case0002": (4, 48, 72), "case0003": (3, 64, 64)}
NUM_CLASSES = 9  # Synapse: background and 8 organs


# ---- the transcription of TransUNet's protocol (utils.py, Apache-2.0) and of MedPy's metrics -------------------

def medpy_dc(result, reference):
    result, reference = result.astype(bool), reference.astype(bool)
    total = np.count_nonzero(result) + np.count_nonzero(reference)
    return 2.0 * np.count_nonzero(result & reference) / float(total)


def medpy_surface_distances(result, reference):
    footprint = ndimage.generate_binary_structure(result.ndim, 1)
    result_border = result ^ ndimage.binary_erosion(result, structure=footprint, iterations=1)
    reference_border = reference ^ ndimage.binary_erosion(reference, structure=footprint, iterations=1)
    return ndimage.distance_transform_edt(~reference_border)[result_border]


def medpy_hd95(result, reference):
    result, reference = result.astype(bool), reference.astype(bool)
    both = np.hstack((medpy_surface_distances(result, reference), medpy_surface_distances(reference, result)))
    return np.percentile(both, 95)


def metric_percase(pred, gt):
    pred, gt = pred.astype(np.uint8), gt.astype(np.uint8)
    if pred.sum() > 0 and gt.sum() > 0:
        return medpy_dc(pred, gt), medpy_hd95(pred, gt)
    if pred.sum() > 0:
        return 1, 0
    return 0, 0


def transunet_single_volume(image, label, net, classes, patch_size):
    """Prediction (in the label's dtype) and [(dsc, hd95)] per class 1..classes-1 of one (D, H, W) volume."""
    prediction = np.zeros_like(label)
    net.eval()
    for ind in range(image.shape[0]):
        one = image[ind, :, :]
        x, y = one.shape
        if x != patch_size[0] or y != patch_size[1]:
            one = ndimage.zoom(one, (patch_size[0] / x, patch_size[1] / y), order=3)
        inp = torch.from_numpy(one).unsqueeze(0).unsqueeze(0).float()
        with torch.no_grad():
            out = torch.argmax(torch.softmax(net(inp), dim=1), dim=1).squeeze(0).cpu().numpy()
        if x != patch_size[0] or y != patch_size[1]:
            out = ndimage.zoom(out, (x / patch_size[0], y / patch_size[1]), order=0)
        prediction[ind] = out
    return prediction, [metric_percase(prediction == c, label == c) for c in range(1, classes)]


# ---- the fixture ----------------------------------------------------------------------------------------------

def sharp_volume(rng, shape):
    """Dim texture in [0, 0.1) with bright rectangles of random classes: their sharp edges make the spline
    overshoot [0, 1] on both sides; the texture's float32 values are not float16 numbers."""
    image = rng.random(shape, dtype=np.float32) * 0.1
    label = np.zeros(shape, np.float32)  # TransUNet's Synapse volumes store labels as floats
    d, h, w = shape
    for z in range(d):
        for c in rng.choice(np.arange(1, NUM_CLASSES), size=4, replace=False):
            top, left = rng.integers(0, h - 12), rng.integers(0, w - 12)
            bottom, right = top + rng.integers(6, h // 2), left + rng.integers(6, w // 2)
            image[z, top:bottom, left:right] = rng.choice([0.55, 0.8, 1.0])
            label[z, top:bottom, left:right] = c
    return image, label


def old_predict_volume(model, volume, size):
    """rwkvlab's path before this protocol: clipped spline zoom, logits argmax in batches of 4."""
    slices = np.stack([resize_image(s, size) for s in volume])[..., None]
    return np.stack([resize_label(p, volume.shape[1:]) for p in predict(model, slices, 4, CPU)])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A Synapse folder (2 training slices, the test volumes of :data:`VOLUMES`), its cache and a random model."""
    root = tmp_path_factory.mktemp("synapse")
    rng = np.random.default_rng(11)
    (root / "train_npz").mkdir()
    for k in range(2):
        image, label = sharp_volume(rng, (1, *PATCH))
        np.savez(root / "train_npz" / f"case0005_slice{k:03d}.npz", image=image[0], label=label[0])
    volumes = {cid: sharp_volume(rng, shape) for cid, shape in VOLUMES.items()}
    for cid, (image, label) in volumes.items():
        write_h5(root / "test_vol_h5" / f"{cid}.npy.h5", image=image, label=label)
    (root / "lists_Synapse").mkdir()
    (root / "lists_Synapse" / "train.txt").write_text("case0005_slice000\ncase0005_slice001\n")
    (root / "lists_Synapse" / "test_vol.txt").write_text("\n".join(VOLUMES) + "\n")
    cache = prepare(get_reader("synapse", root), PATCH, root / "prepared.h5", root / "splits", [0])

    torch.manual_seed(0)
    model = create_model("rwkv_unet_t", in_chans=1, num_classes=NUM_CLASSES).eval()
    # Random weights favour one class everywhere; centring each class's logits on the fixture's own slices
    # makes several classes appear, so that equal label maps are not two blank maps.
    slices = torch.from_numpy(np.concatenate([ndimage.zoom(im, (1, PATCH[0] / im.shape[1], PATCH[1] / im.shape[2]),
                                                           order=3) for im, _ in volumes.values()]))[:, None]
    with torch.no_grad():
        model.head.bias -= model(slices).mean((0, 2, 3))
    data = load_prepared(cache, root / "splits" / "seed0.json")
    per_case, preds = evaluate_split(model, data, "test", batch_size=4, device=CPU)
    reference = {}
    for cid in VOLUMES:
        with h5py.File(root / "test_vol_h5" / f"{cid}.npy.h5", "r") as f:
            image, label = f["image"][:], f["label"][:]
        reference[cid] = (image, label, *transunet_single_volume(image, label, model, NUM_CLASSES, PATCH))
    return {"root": root, "cache": cache, "model": model, "data": data, "per_case": per_case, "preds": preds,
            "reference": reference}


# ---- the tests ------------------------------------------------------------------------------------------------

def test_fixture_overshoots_unit_range_and_predicts_several_classes(study):
    for cid, (image, _, prediction, _) in study["reference"].items():
        if image.shape[1:] != PATCH:
            zoomed = ndimage.zoom(image[0], (PATCH[0] / image.shape[1], PATCH[1] / image.shape[2]), order=3)
            assert zoomed.min() < -0.02 and zoomed.max() > 1.02, cid
        assert len(np.unique(prediction)) >= 4, cid


def test_predictions_equal_the_transcription_voxel_for_voxel(study):
    for cid, (_, label, prediction, _) in study["reference"].items():
        ours = study["preds"][cid]
        assert ours.shape == label.shape == VOLUMES[cid] and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, prediction, err_msg=cid)


def test_per_case_metrics_equal_the_transcription_exactly(study):
    per_case = study["per_case"]
    assert len(per_case) == len(VOLUMES) * (NUM_CLASSES - 1)
    names = study["data"].class_names
    for cid, (_, _, _, metrics) in study["reference"].items():
        rows = per_case[per_case["case"] == cid].set_index("class")
        for c, (dsc, hd95) in enumerate(metrics, start=1):
            assert rows.loc[names[c], "dsc"] == dsc and rows.loc[names[c], "hd95"] == hd95, (cid, names[c])
    assert ((per_case["dsc"] > 0) & (per_case["dsc"] < 1)).sum() >= 5  # real overlaps, not only empty-case rules
    assert (per_case["hd95"] > 0).sum() >= 5


def test_the_old_clipped_float16_batched_path_differs_on_this_fixture(study):
    """Without the protocol path the equality test above fails: each cause alone changes predictions here."""
    model, clipped, halved, both = study["model"], 0, 0, 0
    for cid, (image, label, prediction, _) in study["reference"].items():
        clipped += np.count_nonzero(old_predict_volume(model, image, PATCH) != prediction)
        as_half = image.astype(np.float16).astype(np.float32)
        halved += np.count_nonzero(transunet_single_volume(as_half, label, model, NUM_CLASSES, PATCH)[0] != prediction)
        both += np.count_nonzero(old_predict_volume(model, as_half, PATCH) != prediction)
    assert clipped > 0 and halved > 0 and both > 0, (clipped, halved, both)


def test_cache_keeps_the_volumes_bit_for_bit(study):
    for cid, (image, label, _, _) in study["reference"].items():
        cached_image, cached_label = study["data"].volumes[cid]
        assert cached_image.dtype == np.float32 and cached_image.tobytes() == image.tobytes(), cid
        np.testing.assert_array_equal(cached_label, label)
    assert study["data"].images.dtype == np.float16  # the 2D training items keep their half precision


def test_a_float16_volume_cache_is_refused(study, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(study["cache"].read_bytes())
    with h5py.File(old, "a") as f:
        halved = f["volume_images"][()].astype(np.float16)
        del f["volume_images"]
        f["volume_images"] = halved
    with pytest.raises(DataError, match=r"old\.h5: volume_images are float16, expected float32.*prepare stage"):
        load_prepared(old, study["root"] / "splits" / "seed0.json")
