"""DSC and HD95 (docs §7) on hand-made masks, against answers computed independently."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from rwkvlab.engine.evaluate import evaluate_cases
from rwkvlab.metrics import _class_box, case_metrics, dice_hd95


# The whole-volume implementation before bounding boxes (rwkvlab @ 93a1e1c), frozen here as the reference
# the boxed one must match bit for bit.
def ref_surface(mask):
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, iterations=1)


def ref_directed_distances(a, b, spacing):
    dist_to_b = ndimage.distance_transform_edt(~ref_surface(b), sampling=spacing)
    return dist_to_b[ref_surface(a)]


def ref_dice_hd95(pred, gt, spacing=None):
    pred, gt = pred.astype(bool), gt.astype(bool)
    if pred.any() and gt.any():
        dsc = 2.0 * np.count_nonzero(pred & gt) / (np.count_nonzero(pred) + np.count_nonzero(gt))
        pooled = np.concatenate([ref_directed_distances(pred, gt, spacing), ref_directed_distances(gt, pred, spacing)])
        return float(dsc), float(np.percentile(pooled, 95))
    if pred.any():
        return 1.0, 0.0
    return 0.0, 0.0


def ref_case_metrics(pred, gt, num_classes, spacing=None):
    return np.array([ref_dice_hd95(pred == c, gt == c, spacing) for c in range(1, num_classes)], dtype=np.float64)


def brute_surface(mask):
    """Foreground pixels/voxels with a face neighbour that is background or outside the array."""
    out = np.zeros_like(mask, dtype=bool)
    for idx in zip(*np.nonzero(mask)):
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            nb = list(idx)
            nb[axis] += step
            if not 0 <= nb[axis] < mask.shape[axis] or not mask[tuple(nb)]:
                out[idx] = True
    return out


def brute_hd95(pred, gt, spacing=None):
    a, b = np.argwhere(brute_surface(pred)), np.argwhere(brute_surface(gt))
    scale = np.ones(pred.ndim) if spacing is None else np.asarray(spacing)
    d = np.sqrt((((a[:, None, :] - b[None, :, :]) * scale) ** 2).sum(-1))
    return np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)


def test_two_pixels_three_apart():
    pred, gt = np.zeros((7, 9), bool), np.zeros((7, 9), bool)
    pred[2, 5], gt[2, 2] = True, True
    assert dice_hd95(pred, gt) == (0.0, 3.0)


def test_identical_squares():
    m = np.zeros((10, 10), bool)
    m[2:6, 3:8] = True
    assert dice_hd95(m, m) == (1.0, 0.0)


def test_shifted_square_by_hand():
    # gt: 4x4 square at rows/cols 2..5; pred: the same shifted right by 2 columns.
    gt, pred = np.zeros((10, 12), bool), np.zeros((10, 12), bool)
    gt[2:6, 2:6] = True
    pred[2:6, 4:8] = True
    dsc, hd = dice_hd95(pred, gt)
    assert dsc == pytest.approx(2 * 8 / 32)
    # Each square's surface is its 12-pixel ring. The ring pixels in the two far columns are 2
    # from the other ring (4 of 12 per direction, 8 of the 24 pooled), the rest 0 or 1: the
    # 95th percentile is 2; a max-of-directed-percentiles HD95 would agree here only by chance.
    assert hd == pytest.approx(2.0)
    assert hd == pytest.approx(brute_hd95(pred, gt))


@pytest.mark.parametrize("shape", [(20, 24), (6, 9, 11)])
def test_random_blobs_against_brute_force(shape):
    rng = np.random.default_rng(3)
    for _ in range(5):
        gt = rng.random(shape) > 0.7
        pred = rng.random(shape) > 0.6
        dsc, hd = dice_hd95(pred, gt)
        assert dsc == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))
        assert hd == pytest.approx(brute_hd95(pred, gt))


def test_spacing_scales_distances():
    pred, gt = np.zeros((5, 9), bool), np.zeros((5, 9), bool)
    pred[2, 6], gt[2, 2] = True, True
    assert dice_hd95(pred, gt, spacing=(1.0, 0.5)) == (0.0, 2.0)


def test_empty_case_rules():
    some, none = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    some[1:3, 1:3] = True
    assert dice_hd95(some, none) == (1.0, 0.0)  # predicted, ground truth empty
    assert dice_hd95(none, some) == (0.0, 0.0)  # nothing predicted
    assert dice_hd95(none, none) == (0.0, 0.0)


def test_case_metrics_per_class():
    gt = np.zeros((8, 8), np.uint8)
    gt[1:4, 1:4] = 1
    gt[5:7, 5:7] = 2
    pred = gt.copy()
    pred[5:7, 5:7] = 0  # class 2 missed entirely
    out = case_metrics(pred, gt, num_classes=3)
    np.testing.assert_allclose(out, [[1.0, 0.0], [0.0, 0.0]])


def blob(shape, centre, radii):
    """Boolean ellipsoid (or ellipse), clipped by the array's edges."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((x - c) / r) ** 2 for x, c, r in zip(grid, centre, radii)) <= 1


def adversarial_cases():
    """(pred, gt, num_classes) label maps where a box that is too small would change the bits."""
    shape = (9, 30, 26)
    cases = {}
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    gt[blob(shape, (0, 0, 0), (4, 9, 7))] = 1  # touches three faces of the volume
    pred[blob(shape, (1, 2, 0), (4, 8, 8))] = 1
    gt[blob(shape, (8, 29, 25), (3, 6, 6))] = 2  # the opposite corner
    pred[blob(shape, (8, 28, 25), (2, 7, 5))] = 2
    gt[:, 12:15, :] = 3  # a slab spanning the volume: its box is the whole of two axes
    pred[:, 13:17, 3:] = 3
    cases["touching the border"] = (pred, gt, 4)
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    pred[blob(shape, (4, 10, 10), (2, 4, 4))] = 1  # only predicted
    gt[blob(shape, (4, 20, 15), (2, 4, 4))] = 2  # only in the ground truth
    cases["a class only in pred, another only in gt, one absent"] = (pred, gt, 4)
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    gt[blob(shape, (1, 2, 2), (1, 2, 2))] = 1
    pred[blob(shape, (7, 27, 23), (1, 2, 2))] = 1  # far apart: the box spans the volume
    gt[blob(shape, (4, 15, 13), (3, 6, 6))] = 2
    pred[blob(shape, (4, 15, 13), (3, 6, 6))] = 2
    pred[0, 29, 0] = 2  # a one-voxel false positive in a corner
    gt[5, 3, 20] = 3  # one voxel each, apart
    pred[2, 20, 4] = 3
    cases["far-apart blobs and single voxels"] = (pred, gt, 4)
    full = np.ones(shape, np.uint8)
    cases["a class filling the volume"] = (full, full * (np.arange(shape[2]) < 20), 2)
    rng = np.random.default_rng(7)
    gt = ndimage.median_filter(rng.integers(0, 5, shape), size=3).astype(np.uint8)
    pred = np.where(rng.random(shape) < 0.1, rng.integers(0, 5, shape), gt).astype(np.uint8)
    cases["random label noise"] = (pred, gt, 5)
    return cases


# Spacings with ties in exact arithmetic that round apart in floats: 3 x 0.1 != 0.3, 7 x 0.1 != 0.7.
SPACINGS = [None, (1.0, 1.0, 1.0), (3.0, 0.71, 0.71), (0.1, 0.3, 0.7), (2.5, 0.76, 0.91)]


@pytest.mark.parametrize("spacing", SPACINGS, ids=str)
@pytest.mark.parametrize("name", list(adversarial_cases()))
def test_boxed_metrics_bit_identical_to_whole_volume(name, spacing):
    pred, gt, num_classes = adversarial_cases()[name]
    out = case_metrics(pred, gt, num_classes, spacing)
    ref = ref_case_metrics(pred, gt, num_classes, spacing)
    assert out.shape == (num_classes - 1, 2)
    assert out.tobytes() == ref.tobytes(), f"{name}: {out} != {ref}"
    for c in range(1, num_classes):
        assert dice_hd95(pred == c, gt == c, spacing) == ref_dice_hd95(pred == c, gt == c, spacing)


@pytest.mark.parametrize("spacing", [None, (0.3, 0.1), (1.5, 0.7)], ids=str)
def test_boxed_metrics_bit_identical_2d(spacing):
    rng = np.random.default_rng(11)
    for _ in range(10):
        gt = ndimage.median_filter(rng.integers(0, 4, (37, 29)), size=5).astype(np.int64)
        pred = np.roll(gt, rng.integers(-4, 5, 2), axis=(0, 1))
        pred[rng.random(pred.shape) < 0.02] = 3  # scattered false positives across the image
        out, ref = case_metrics(pred, gt, 4, spacing), ref_case_metrics(pred, gt, 4, spacing)
        assert out.tobytes() == ref.tobytes()


def test_multiclass_anisotropic_against_brute_force():
    rng = np.random.default_rng(5)
    spacing = (2.5, 0.7, 0.9)
    gt = ndimage.median_filter(rng.integers(0, 3, (6, 14, 12)), size=3)
    pred = np.where(rng.random(gt.shape) < 0.15, rng.integers(0, 3, gt.shape), gt)
    out = case_metrics(pred, gt, 3, spacing)
    for c in (1, 2):
        p, g = pred == c, gt == c
        assert out[c - 1, 0] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()))
        assert out[c - 1, 1] == pytest.approx(brute_hd95(p, g, spacing))


def test_class_box_margin_and_clipping():
    box_p = (slice(2, 5), slice(0, 3))
    box_g = (slice(4, 9), slice(6, 10))
    assert _class_box(box_p, box_g, (10, 10)) == (slice(1, 10), slice(0, 10))
    assert _class_box(None, box_g, (20, 20)) == (slice(3, 10), slice(5, 11))
    assert _class_box(None, None, (20, 20)) is None


def test_bad_input_raises():
    m = np.zeros((4, 5), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        case_metrics(m, np.zeros((5, 4), np.uint8), 2)
    with pytest.raises(ValueError, match="spacing must be 2 positive numbers"):
        dice_hd95(m, m, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="integer label map"):
        case_metrics(m.astype(np.float32), m, 2)
    with pytest.raises(ValueError, match="num_classes"):
        case_metrics(m, m, 1)


def test_evaluate_cases_parallel_matches_serial():
    rng = np.random.default_rng(2)
    shapes = [(5, 20, 18), (7, 16, 16), (4, 22, 19), (6, 18, 21), (5, 17, 17)]
    gts = [ndimage.median_filter(rng.integers(0, 3, s), size=3).astype(np.uint8) for s in shapes]
    preds = [np.where(rng.random(g.shape) < 0.1, rng.integers(0, 3, g.shape), g).astype(np.uint8) for g in gts]
    ids = ["case7", "case2", "case9", "case1", "case4"]  # not sorted: rows must keep the given order
    names = ("background", "liver", "spleen")
    spacings = [(2.0, 0.8, 0.8), None, (2.0, 0.8, 0.8), (1.5, 0.7, 0.9), None]
    serial = evaluate_cases(preds, gts, ids, names, spacings, workers=1)
    parallel = evaluate_cases(preds, gts, ids, names, spacings, workers=2)
    pd.testing.assert_frame_equal(parallel, serial, check_exact=True)
    # hd95 in voxels always, hd95 in mm where the case has a spacing (NaN compares unequal: replaced by None)
    expected = [(cid, name, *ref_case_metrics(p, g, 3)[k], None if s is None else ref_case_metrics(p, g, 3, s)[k, 1])
                for cid, p, g, s in zip(ids, preds, gts, spacings) for k, name in enumerate(names[1:])]
    assert [tuple(None if isinstance(v, float) and np.isnan(v) else v for v in r)
            for r in serial.itertuples(index=False)] == expected
    with pytest.raises(ValueError, match="workers"):
        evaluate_cases(preds, gts, ids, names, workers=0)
    with pytest.raises(ValueError, match="must match in number"):
        evaluate_cases(preds, gts[:4], ids, names)
