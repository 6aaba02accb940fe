"""DSC and HD95 (SPEC §7) on hand-made masks, against answers computed independently."""

import itertools

import numpy as np
import pytest

from rwkvlab.metrics import case_metrics, dice_hd95


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


def brute_hd95(pred, gt):
    a, b = np.argwhere(brute_surface(pred)), np.argwhere(brute_surface(gt))
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
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
