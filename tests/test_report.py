"""The results table quotes the paper's published numbers for the right dataset and model."""

from pathlib import Path

from rwkvlab.complexity import Complexity
from rwkvlab.report.comparison import results_table
from rwkvlab.report.tables import write_table


def _summary(dataset: str, model: str, dsc: list[float], hd95: list[float]) -> dict:
    import statistics
    std = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
    return {"dataset": dataset, "model": model, "kwargs": {}, "n_seeds": len(dsc),
            "mean": {"dsc": statistics.fmean(dsc), "hd95": statistics.fmean(hd95)},
            "std": {"dsc": std(dsc), "hd95": std(hd95)}}


def test_results_table_quotes_the_paper(tmp_path):
    summaries = {
        "busi-rwkv_unet_t": _summary("busi", "rwkv_unet_t", [70.0, 71.0, 72.5], [9.0, 10.0, 11.0]),
        "busi-unet": _summary("busi", "unet", [60.0], [20.0]),
        "synapse-rwkv_unet_b": _summary("synapse", "rwkv_unet_b", [80.0], [20.0]),
        "synapse_demo-rwkv_unet_t": _summary("synapse_demo", "rwkv_unet_t", [50.0], [10.0]),
    }
    summaries = {run: (Path(f"reports/evaluate/{run}/metrics.json"), s) for run, s in summaries.items()}
    complexity = {run: Complexity(params=3_146_000 if "rwkv_unet_t" in run else 17_125_000, macs={"conv": 1e9})
                  for run in summaries}
    table = results_table(summaries, complexity)
    rows = {r.run: r for r in table.itertuples()}
    assert rows["busi-rwkv_unet_t"].paper_dsc == "79.47±1.19"  # binary table, BUSI column
    assert rows["busi-unet"].paper_dsc == "74.90±1.08"  # a baseline's published row
    assert rows["busi-rwkv_unet_t"].dsc == "71.17±1.26"  # mean ± sample std of 70, 71, 72.5
    assert rows["synapse-rwkv_unet_b"].paper_dsc == "84.29" and rows["synapse-rwkv_unet_b"].paper_hd95 == "8.85"
    assert rows["synapse_demo-rwkv_unet_t"].paper_dsc == "-" and "SYNTHETIC" in rows["synapse_demo-rwkv_unet_t"].note
    assert rows["busi-rwkv_unet_t"].params_m == 3.15 and rows["busi-rwkv_unet_t"].macs_g == 1.0
    assert rows["busi-unet"].source == str(Path("reports/evaluate/busi-unet/metrics.json"))
    write_table(table, tmp_path / "results", "Results")
    assert "79.47±1.19" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().startswith("run,dataset,model,seeds,dsc,hd95")
