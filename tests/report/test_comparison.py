"""The paper's comparison tables with our runs added, the baseline complexity table and the DSC-vs-MACs chart."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rwkvlab.complexity import Complexity, model_complexity
from rwkvlab.data.readers.acdc import ACDC
from rwkvlab.data.readers.synapse import Synapse
from rwkvlab.report.comparison import (COMPARISON_TABLES, baseline_complexity_table, comparison_chart,
                                       comparison_tables, write_comparison_tables)
from rwkvlab.report.tables import paper_table


def summary(dataset, model, per_seed, kwargs=None):
    """A metrics.json of the evaluate stage from per-seed metrics: numpy mean and sample std over the seeds."""
    keys = per_seed[0].keys()
    values = {k: np.array([s[k] for s in per_seed], dtype=np.float64) for k in keys}
    return {"dataset": dataset, "model": model, "kwargs": kwargs or {}, "recipe": dataset,
            "seeds": list(range(len(per_seed))), "n_seeds": len(per_seed),
            "mean": {k: float(v.mean()) for k, v in values.items()},
            "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
            "per_seed": {str(i): s for i, s in enumerate(per_seed)}}


def cell(values):
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.2f}±{v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


BUSI_UNET = [{"dsc": 70.0, "hd95": 10.0}, {"dsc": 72.0, "hd95": 12.5}, {"dsc": 77.0, "hd95": 11.0}]
SYNAPSE_ORGANS = [c for c in Synapse.class_names if c != "background"]
# Organ j of seed i: 70 + j + i/2, so each organ's cell differs.
SYNAPSE_B = [{"dsc": 80.0 + i, "hd95": 9.0 + i,
              **{f"dsc_{c}": 70.0 + j + 0.5 * i for j, c in enumerate(SYNAPSE_ORGANS)}}
             for i in range(3)]
ACDC_T = [{"dsc": 90.123, "hd95": 2.0, "dsc_rv": 88.0, "dsc_myo": 87.0, "dsc_lv": 95.0}]
DEMO = [{"dsc": 80.0, "hd95": 15.0, "hd95_mm": 7.5, "dsc_lesion": 80.0},
        {"dsc": 82.0, "hd95": 14.0, "hd95_mm": 7.0, "dsc_lesion": 82.0}]


def runs():
    made = {"busi-unet": summary("busi", "unet", BUSI_UNET),
            "glas-unet": summary("glas", "unet", [{"dsc": 88.456, "hd95": 3.0}]),
            "busi-swin_unet": summary("busi", "swin_unet", [{"dsc": 71.0, "hd95": 20.0}]),
            "synapse-rwkv_unet_b": summary("synapse", "rwkv_unet_b", SYNAPSE_B),
            "acdc-rwkv_unet_t": summary("acdc", "rwkv_unet_t", ACDC_T),
            "goals-unet": summary("goals", "unet", [{"dsc": 90.5, "hd95": 1.0}]),
            "demo-rwkv_unet_t": summary("demo", "rwkv_unet_t", DEMO, kwargs={"mixer": "none"}),
            "demo-unet": summary("demo", "unet", [{"dsc": 75.0, "hd95": 16.0, "dsc_lesion": 75.0}])}
    return {name: (Path("reports/evaluate") / name / "metrics.json", s) for name, s in made.items()}


COMPLEXITY = {name: Complexity(params=1_000_000 * (i + 1), macs={"conv": 1.5e9 * (i + 1), "wkv": 1e9})
              for i, name in enumerate(runs())}


@pytest.fixture(scope="module")
def tables():
    return comparison_tables(runs(), COMPLEXITY)


def row(df, method):
    match = df[df["method"] == method]
    assert len(match) == 1, f"{method}: {len(match)} rows"
    return match.iloc[0]


def test_paper_rows_unchanged(tables):
    for name, spec in COMPARISON_TABLES.items():
        published = tables[name][tables[name]["source"] == "paper"].drop(columns="source").reset_index(drop=True)
        pd.testing.assert_frame_equal(published, paper_table(spec.csv))


def test_method_and_class_names_exist_in_the_paper_tables():
    for spec in COMPARISON_TABLES.values():
        methods = set(paper_table(spec.csv)["method"])
        assert set(spec.methods.values()) <= methods, spec.csv
    one = {"s": (Path("s.json"), summary("synapse", "unet", SYNAPSE_B[:1]))}
    t3 = comparison_tables(one, {"s": COMPLEXITY["busi-unet"]})
    organs = [c for c in paper_table("synapse").columns if c not in ("method", "hd95", "dsc")]
    assert [row(t3["table3"], "U-Net (this study)")[c] for c in organs] == [f"{SYNAPSE_B[0][f'dsc_{c}']:.2f}"
                                                                           for c in SYNAPSE_ORGANS]
    acdc = [c for c in ACDC.class_names if c != "background"]
    assert acdc == ["rv", "myo", "lv"] == list(paper_table("acdc").columns[2:])


def test_binary_table(tables):
    t = tables["binary"]
    names = list(t["method"])
    assert names[names.index("U-Net") + 1] == "U-Net (this study)"
    ours = row(t, "U-Net (this study)")
    assert ours["busi"] == cell([r["dsc"] for r in BUSI_UNET]) == "73.00±3.61"  # sqrt(13) = 3.606
    assert ours["glas"] == "88.46"  # one seed: the plain mean
    assert ours["cvc_clinicdb"] == ours["psvfm"] == "-"
    assert ours["params_m"] == "1.00 / 2.00" and ours["flops_g"] == "1.50 / 3.00"  # MACs, not the WKV apart
    assert ours["source"] == ("busi: reports/evaluate/busi-unet/metrics.json; "
                              "glas: reports/evaluate/glas-unet/metrics.json")
    assert names[-1] == "Swin-UNet (this study)"  # the binary table has no Swin row
    assert "RWKV-UNet-T (this study)" not in names  # its runs are on other datasets


def test_multiclass_tables(tables):
    t3 = tables["table3"]
    names = list(t3["method"])
    assert names[names.index("RWKV-UNet (ours)") + 1] == "RWKV-UNet (this study)"
    b = row(t3, "RWKV-UNet (this study)")
    assert b["dsc"] == cell([r["dsc"] for r in SYNAPSE_B]) == "81.00±1.00"
    assert b["hd95"] == cell([r["hd95"] for r in SYNAPSE_B])
    assert b["kidney_l"] == cell([r["dsc_kidney_left"] for r in SYNAPSE_B]) == "72.50±0.50"
    assert b["stomach"] == cell([r["dsc_stomach"] for r in SYNAPSE_B])
    assert b["source"] == "reports/evaluate/synapse-rwkv_unet_b/metrics.json"
    t4 = row(tables["table4"], "RWKV-UNet-T (this study)")
    assert (t4["dsc"], t4["rv"], t4["myo"], t4["lv"]) == ("90.12", "88.00", "87.00", "95.00")
    t5 = tables["table5"]
    names = list(t5["method"])
    assert names[names.index("U-Net [1]") + 1] == "U-Net (this study)"
    assert tuple(row(t5, "U-Net (this study)")[["goals_dsc", "fugc_dsc"]]) == ("90.50", "-")


def test_runs_tables(tables):
    assert {k for k in tables if k.startswith("runs_")} == {f"runs_{d}" for d in ("busi", "glas", "synapse", "acdc",
                                                                                   "goals", "demo")}
    demo = tables["runs_demo"].set_index("run")
    t = demo.loc["demo-rwkv_unet_t"]
    assert t["kwargs"] == '{"mixer": "none"}' and demo.loc["demo-unet", "kwargs"] == "{}"
    assert t["dsc"] == cell([80.0, 82.0]) and t["hd95"] == cell([15.0, 14.0]) and t["hd95_mm"] == cell([7.5, 7.0])
    assert t["dsc_lesion"] == cell([80.0, 82.0]) and demo.loc["demo-unet", "hd95_mm"] == "-"
    i = list(COMPLEXITY).index("demo-rwkv_unet_t")
    assert t["params_m"] == i + 1 and t["macs_g"] == pytest.approx(1.5 * (i + 1))
    assert t["source"] == "reports/evaluate/demo-rwkv_unet_t/metrics.json"
    assert "hd95_mm" not in tables["runs_busi"].columns and "kwargs" not in tables["runs_busi"].columns


def test_without_runs_the_paper_tables_alone():
    empty = comparison_tables({}, {})
    assert set(empty) == set(COMPARISON_TABLES)
    assert all((df["source"] == "paper").all() for df in empty.values())


def test_write(tables, tmp_path):
    write_comparison_tables(tables, tmp_path)
    text = (tmp_path / "table3.md").read_text()
    assert text.startswith("# Table 3") and "81.00±1.00" in text and "HD95 in voxels" in text
    assert (tmp_path / "runs_demo.md").read_text().startswith("# Runs on demo")
    assert (tmp_path / "binary.csv").read_text().startswith("method,busi,")


def test_bad_input_names_the_file():
    good = runs()
    path, s = good["busi-unet"]
    broken = {"busi-unet": (path, {**s, "mean": {"hd95": 1.0}})}
    with pytest.raises(ValueError, match=r"busi-unet/metrics.json: no mean\['dsc'\]"):
        comparison_tables(broken, COMPLEXITY)
    with pytest.raises(ValueError, match="but no std"):
        comparison_tables({"busi-unet": (path, {k: v for k, v in s.items() if k != "std"})}, COMPLEXITY)
    with pytest.raises(ValueError, match="not an evaluate summary"):
        comparison_tables({"busi-unet": (path, {"dsc": 70.0})}, COMPLEXITY)
    with pytest.raises(ValueError, match="two runs of unet"):
        comparison_tables({"a": good["busi-unet"], "b": (Path("b.json"), s)},
                          {"a": COMPLEXITY["busi-unet"], "b": COMPLEXITY["busi-unet"]})
    with pytest.raises(ValueError, match="no complexity for run 'busi-unet'"):
        comparison_tables({"busi-unet": good["busi-unet"]}, {})


@pytest.fixture(scope="module")
def baselines():
    return baseline_complexity_table().set_index("model")


@pytest.mark.parametrize("model", ["unet", "rwkv_unet_t"])
def test_baseline_table_matches_model_complexity(baselines, model):
    c = model_complexity(model, 256, 1)
    r = baselines.loc[model]
    assert r["params_m"] == round(c.params / 1e6, 3) and r["macs_g"] == round(c.macs_g, 3)
    paper = paper_table("binary").set_index("method").loc[{"unet": "U-Net", "rwkv_unet_t": "RWKV-UNet-T"}[model]]
    assert r["paper_params_m"] == float(paper["params_m"]) and r["paper_flops_g"] == float(paper["flops_g"])
    assert r["params_diff_%"] == pytest.approx(100 * (c.params / 1e6 / float(paper["params_m"]) - 1), abs=0.01)
    assert r["macs_diff_%"] == pytest.approx(100 * (c.macs_g / float(paper["flops_g"]) - 1), abs=0.01)


def chart_points(fig):
    """(offsets, sizes) of every bubble of the figure's one axes."""
    (ax,) = fig.axes
    return (np.concatenate([c.get_offsets() for c in ax.collections]),
            np.concatenate([np.broadcast_to(c.get_sizes(), len(c.get_offsets())) for c in ax.collections]))


def test_chart_binary_dataset_has_the_paper_points():
    fig = comparison_chart(runs(), COMPLEXITY, "busi")
    xy, sizes = chart_points(fig)
    published = paper_table("binary")
    assert len(xy) == 2 + len(published)  # two runs on BUSI and every published row
    paper = {(float(f), float(d.split("±")[0])) for f, d in zip(published["flops_g"], published["busi"])}
    assert paper <= {tuple(p) for p in xy}
    i = list(COMPLEXITY).index("busi-unet")
    assert (1.5 * (i + 1), 73.0) in {tuple(p) for p in xy} and sizes[0] == 30 + 25 * (i + 1)
    assert sorted(sizes[2:]) == pytest.approx(sorted(30 + 25 * published["params_m"].astype(float)))


def test_chart_other_dataset_has_ours_only():
    xy, _ = chart_points(comparison_chart(runs(), COMPLEXITY, "synapse"))
    assert len(xy) == 1  # Table 3 prints no parameters or FLOPs
    with pytest.raises(ValueError, match="no run of dataset 'kvasir_seg'; datasets with runs: acdc, busi"):
        comparison_chart(runs(), COMPLEXITY, "kvasir_seg")


def test_chart_names_the_run_where_one_model_is_trained_two_ways():
    made = runs()
    made["demo-rwkv_unet_t-semi"] = (Path("reports/evaluate/demo-rwkv_unet_t-semi/metrics.json"),
                                     summary("demo", "rwkv_unet_t", DEMO, kwargs={"mixer": "none"}))
    complexity = {**COMPLEXITY, "demo-rwkv_unet_t-semi": COMPLEXITY["demo-rwkv_unet_t"]}
    (ax,) = comparison_chart(made, complexity, "demo").axes
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["RWKV-UNet-T mixer=none (demo-rwkv_unet_t)", "RWKV-UNet-T mixer=none (demo-rwkv_unet_t-semi)",
                     "U-Net"]
