"""HD95 in mm beside HD95 in voxels, per-class summary keys, and the model-declared size rule."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from rwkvlab.data import Prepared
from rwkvlab.engine.evaluate import evaluate_cases, evaluate_split, summarize, write_evaluation
from rwkvlab.engine.inference import check_image_size
from rwkvlab.metrics import case_metrics
from rwkvlab.models import create_model

NAMES = ("background", "organ_a", "organ_b")
SPACING = (2.5, 0.7, 1.1)  # anisotropic, as CT and MR volumes are


def brute_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    """Pooled 95th percentile of every surface voxel's distance to the other surface, all pairs, float64."""
    cross = ndimage.generate_binary_structure(pred.ndim, 1)
    surfaces = [np.argwhere(m & ~ndimage.binary_erosion(m, cross)) * np.asarray(spacing, np.float64)
                for m in (pred, gt)]
    pairs = np.sqrt(((surfaces[0][:, None, :] - surfaces[1][None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([pairs.min(1), pairs.min(0)]), 95))


def volumes(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Label volumes (D, H, W) with two overlapping, shifted boxes per class: every class in every case."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n):
        pred, gt = np.zeros((2, 7, 9, 11), np.uint8)
        for c in (1, 2):
            for labels in (pred, gt):
                z, y, x = rng.integers(0, 3), rng.integers(0, 4), rng.integers(0, 5)
                labels[z : z + rng.integers(2, 5), y : y + rng.integers(2, 5), x : x + rng.integers(2, 6)] = c
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def test_hd95_mm_matches_brute_force_and_voxels_stay_the_paper_bits():
    preds, gts = volumes(3)
    table = evaluate_cases(preds, gts, ["a", "b", "c"], NAMES, [SPACING, None, SPACING], workers=1)
    assert list(table.columns) == ["case", "class", "dsc", "hd95", "hd95_mm"]
    for (i, cid), (c, name) in itertools.product(enumerate("abc"), enumerate(NAMES[1:], start=1)):
        row = table[(table["case"] == cid) & (table["class"] == name)].iloc[0]
        voxels = case_metrics(preds[i], gts[i], len(NAMES))[c - 1]
        assert (row["dsc"], row["hd95"]) == tuple(voxels)  # bit for bit, spacing or not
        if cid == "b":
            assert np.isnan(row["hd95_mm"])
        else:
            assert row["hd95_mm"] == case_metrics(preds[i], gts[i], len(NAMES), SPACING)[c - 1, 1]
            pred_c, gt_c = preds[i] == c, gts[i] == c
            assert row["hd95_mm"] == pytest.approx(brute_hd95(pred_c, gt_c, SPACING), rel=1e-12)
            assert row["hd95"] == pytest.approx(brute_hd95(pred_c, gt_c, (1, 1, 1)), rel=1e-12)
    assert (table["hd95_mm"].dropna() != table["hd95"][table["hd95_mm"].notna()]).any()


def test_isotropic_spacing_scales_hd95():
    preds, gts = volumes(4, seed=1)
    table = evaluate_cases(preds, gts, list("abcd"), NAMES, [(0.8, 0.8, 0.8)] * 4, workers=2)
    np.testing.assert_allclose(table["hd95_mm"], table["hd95"] * 0.8, rtol=1e-12)
    assert (table["hd95"] > 0).sum() >= 4


def test_spacings_must_match_the_cases():
    preds, gts = volumes(2)
    with pytest.raises(ValueError, match=r"evaluate_cases: spacings must hold one spacing \(or None\) per case, "
                                         r"got 1 for 2 cases"):
        evaluate_cases(preds, gts, ["a", "b"], NAMES, [SPACING])


def test_summary_keeps_its_keys_and_adds_per_class_hd95_and_mm():
    preds, gts = volumes(3, seed=2)
    table = evaluate_cases(preds, gts, list("abc"), NAMES, [SPACING] * 3, workers=1)
    summary = summarize(table)
    # the summary's former formula, before HD95 in mm existed
    per_class = table.groupby("class", sort=False)[["dsc", "hd95"]].mean()
    former = {"dsc": float(per_class["dsc"].mean() * 100), "hd95": float(per_class["hd95"].mean()),
              **{f"dsc_{c}": float(v * 100) for c, v in per_class["dsc"].items()}}
    assert {k: summary[k] for k in former} == former
    for name in NAMES[1:]:
        rows = table[table["class"] == name]
        assert summary[f"hd95_{name}"] == pytest.approx(np.mean(rows["hd95"].to_numpy()), rel=1e-15)
        assert summary[f"hd95_mm_{name}"] == pytest.approx(np.mean(rows["hd95_mm"].to_numpy()), rel=1e-15)
    assert summary["hd95_mm"] == pytest.approx(np.mean([summary[f"hd95_mm_{n}"] for n in NAMES[1:]]), rel=1e-15)
    assert list(summary)[: len(former)] == list(former)

    partial = evaluate_cases(preds, gts, list("abc"), NAMES, [SPACING, None, SPACING], workers=1)
    assert not any(k.startswith("hd95_mm") for k in summarize(partial))  # one volume lacks a spacing
    without = summarize(table.drop(columns="hd95_mm"))  # a per_case.csv written before hd95_mm
    assert without == {k: v for k, v in summary.items() if not k.startswith("hd95_mm")}


class Threshold(torch.nn.Module):
    """Class 1 where the single channel exceeds 0.5; declares a size rule like the zoo's models."""

    size_divisor = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_evaluate_split_scores_volumes_with_their_spacing(tmp_path):
    rng = np.random.default_rng(3)
    vols = {}
    for vid in ("v1", "v2"):
        label = np.zeros((3, 16, 24), np.uint8)
        label[:, 3:10, 4:15] = 1
        image = np.where(label == 1, 0.8, 0.2) + rng.uniform(-0.1, 0.1, label.shape)
        image[1, 12, 20] = 0.9  # a false positive far from the box
        vols[vid] = (image.astype(np.float32), label)
    data = Prepared(dataset="toyvol", description="toy volumes", class_names=("background", "box"),
                    images=np.zeros((0, 16, 24, 1), np.float16), masks=np.zeros((0, 16, 24), np.uint8),
                    ids=np.zeros(0, str), labelled=np.zeros(0, bool), sizes=np.zeros((0, 2), np.int64),
                    volume_splits={"test": ["v1", "v2"]}, volumes=vols, spacings={"v1": SPACING, "v2": SPACING})
    per_case, preds = evaluate_split(Threshold(), data, "test", 2, torch.device("cpu"))
    for vid, (image, label) in vols.items():
        np.testing.assert_array_equal(preds[vid], image > 0.5)
        row = per_case[per_case["case"] == vid].iloc[0]
        assert row["hd95"] == pytest.approx(brute_hd95(image > 0.5, label == 1, (1, 1, 1)), rel=1e-12)
        assert row["hd95_mm"] == pytest.approx(brute_hd95(image > 0.5, label == 1, SPACING), rel=1e-12)
    summary = write_evaluation(tmp_path, per_case, preds)
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary
    assert summary["hd95_mm"] == pytest.approx(per_case["hd95_mm"].mean(), rel=1e-15) and "hd95_box" in summary
    assert pd.read_csv(tmp_path / "per_case.csv").columns.tolist() == ["case", "class", "dsc", "hd95", "hd95_mm"]

    data.spacings = {"v1": SPACING}  # a volume without a spacing: no mean in mm
    summary = summarize(evaluate_split(Threshold(), data, "test", 2, torch.device("cpu"))[0])
    assert "hd95_mm" not in summary and "hd95_box" in summary

    data.images = np.zeros((0, 12, 24, 1), np.float16)  # prepared at a size the model cannot take
    with pytest.raises(ValueError, match=r"^prepare.image_size.toyvol: image size 12x24 is not a multiple of "
                                         r"Threshold's size_divisor 8"):
        evaluate_split(Threshold(), data, "test", 2, torch.device("cpu"))


@pytest.mark.parametrize("name, divisor", [("rwkv_unet_t", 16), ("swin_unet", 32)])
def test_check_image_size_names_where_and_the_rule(name, divisor, one_thread):
    model = create_model(name, num_classes=2, in_chans=1)
    assert model.size_divisor == divisor
    check_image_size(model, (2 * divisor, 3 * divisor), "prepare.image_size.demo")
    with pytest.raises(ValueError, match=rf"^prepare.image_size.demo: image size 96x120 is not a multiple of "
                                         rf"\w+'s size_divisor {divisor}; choose H and W divisible by {divisor}$"):
        check_image_size(model, (96, 120), "prepare.image_size.demo")
    check_image_size(torch.nn.Identity(), (7, 5), "anywhere")  # no declared rule: any size
