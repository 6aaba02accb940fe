"""The results table quotes the paper's published numbers for the right dataset and model."""

from rwkvlab.complexity import Complexity
from rwkvlab.report import results_table, write_table


def test_results_table_quotes_the_paper(tmp_path):
    metrics = {("busi", "rwkv_unet_t"): {"dsc": 70.123, "hd95": 9.87}, ("synapse", "rwkv_unet_b"): {"dsc": 80.0, "hd95": 20.0},
               ("synapse_demo", "rwkv_unet_t"): {"dsc": 50.0, "hd95": 10.0}}
    complexity = {run: Complexity(params=3_146_000 if run[1] == "rwkv_unet_t" else 17_125_000, macs={"conv": 1e9})
                  for run in metrics}
    table = results_table(metrics, complexity)
    rows = {(r.dataset, r.model): r for r in table.itertuples()}
    assert rows[("busi", "rwkv_unet_t")].paper_dsc == "79.47±1.19"  # binary table, BUSI column
    assert rows[("synapse", "rwkv_unet_b")].paper_dsc == "84.29" and rows[("synapse", "rwkv_unet_b")].paper_hd95 == "8.85"
    assert rows[("synapse_demo", "rwkv_unet_t")].paper_dsc == "-" and "SYNTHETIC" in rows[("synapse_demo", "rwkv_unet_t")].note
    assert rows[("busi", "rwkv_unet_t")].dsc == 70.12 and rows[("busi", "rwkv_unet_t")].params_m == 3.15
    assert rows[("busi", "rwkv_unet_t")].macs_g == 1.0
    write_table(table, tmp_path / "results", "Results")
    assert "79.47±1.19" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().startswith("dataset,model,dsc,hd95")
