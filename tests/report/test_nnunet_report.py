"""The nnU-Net comparison table and figure (docs §24) from a run's metrics.json, as the nnunet_train stage writes it
(the fixture is the demo study's nnU-Net U-Net run)."""

import json
import shutil
from pathlib import Path

import pytest

from rwkvlab.report.nnunet import comparison_figure, comparison_table, read_runs

FIXTURE = Path(__file__).with_name("nnunet_metrics.json")


@pytest.fixture
def reports(tmp_path):
    run = tmp_path / "nnunet" / "volume_demo-unet"
    run.mkdir(parents=True)
    shutil.copy(FIXTURE, run / "metrics.json")
    (run / "timing.json").write_text(json.dumps({"seconds_per_fold": {"0": 40.0, "1": 2.5}}))
    # a second fold, its scores shifted, so the table must average over folds
    metrics = json.loads(FIXTURE.read_text())
    second = json.loads(json.dumps(metrics["folds"][0]))
    second["fold"] = 1
    second["nnunet"] = {k: v + 0.1 for k, v in second["nnunet"].items()}
    second["ours"] = {k: v + 10 for k, v in second["ours"].items()}
    metrics["folds"].append(second)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return tmp_path


def test_table_averages_folds_and_keeps_both_metrics(reports):
    runs = read_runs(reports, ["volume_demo-unet", "volume_demo-absent"])  # a skipped run has no metrics: left out
    assert len(runs) == 1
    table = comparison_table(runs)
    fold0 = json.loads(FIXTURE.read_text())["folds"][0]
    row = table.iloc[0]
    assert row["Dice nnU-Net"] == round(100 * fold0["nnunet"]["dice"] + 5, 2)
    assert row["DSC ours"] == round(fold0["ours"]["dsc"] + 5, 2)
    assert row["Dice kidney_like nnU-Net"] == round(100 * fold0["nnunet"]["dice_kidney_like"] + 5, 2)
    assert row["HD95 (mm)"] == round(fold0["ours"]["hd95_mm"] + 5, 2)
    assert row["train + validation (s)"] == 42.5 and row["folds"] == 2 and row["epochs x iterations"] == "2 x 5"
    assert row["network"] == "nnU-Net U-Net"
    assert row["params (M)"] == round(json.loads(FIXTURE.read_text())["params_m"], 2)


def test_figure_draws_both_metrics_per_class(reports):
    table = comparison_table(read_runs(reports, ["volume_demo-unet"]))
    fig = comparison_figure(table, "volume_demo")
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 5  # nnU-Net's and ours, for the mean and four classes
    assert bars[0].get_height() == pytest.approx(table.iloc[0]["Dice nnU-Net"])
    assert bars[5].get_height() == pytest.approx(table.iloc[0]["DSC ours"])
