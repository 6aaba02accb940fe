"""The study's notebooks run end to end with tiny parameters; dvc.yaml is valid."""

import ast
import functools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

TINY = """
base: {{seed: 0, device: cpu, data_dir: data, reports_dir: reports, checkpoints_dir: data/checkpoints}}
prepare:
  datasets: {{demo: {demo}, synapse_demo: synapse_demo, busi: raw/busi}}
  image_size: {{demo: [32, 48], synapse_demo: [32, 32], busi: [32, 32]}}
  split_seeds: [0]
  card_montage: 4
pretrain:
  models: [rwkv_enc_t]
  recipe: tiny
  recipes:
    tiny: {{data: digits, epochs: 1, batch_size: 16, lr: 1.0e-3, min_lr: 1.0e-5, warmup_epochs: 0, warmup_lr: 1.0e-4,
            weight_decay: 0.05, label_smoothing: 0.1, img_size: 32, hflip: 0.0, auto_augment: null}}
train:
  runs:
    demo-rwkv_unet_t: {{dataset: demo, model: rwkv_unet_t, recipe: demo}}
    synapse_demo-rwkv_unet_t: {{dataset: synapse_demo, model: rwkv_unet_t, recipe: synapse_demo}}
  num_workers: 0
  recipes:
    demo: {{epochs: 1, batch_size: 8, lr: 1.0e-3, min_lr: 1.0e-5, weight_decay: 1.0e-4, ce_weight: 0.5,
            dice_weight: 1.0, precise_bn: true}}
    synapse_demo: {{epochs: 1, batch_size: 16, lr: 1.0e-3, min_lr: 0.0, weight_decay: 1.0e-3, ce_weight: 0.5,
                    dice_weight: 0.5, test_checkpoint: last, augment: acdc}}
    ablate_demo: {{epochs: 1, batch_size: 8, lr: 1.0e-3, min_lr: 1.0e-5, weight_decay: 1.0e-4, ce_weight: 0.5,
                   dice_weight: 1.0}}
ablate:
  dataset: demo
  recipe: ablate_demo
  model: rwkv_unet_t
  trained: [attn_none, attn_spatial_mix, pre_digits]
  variants:
    pre_digits: {{table: "7", row: "with,30", recipe: {{init: pretrain/rwkv_enc_t}}}}
    attn_spatial_mix: {{table: "2", row: "RWKV Spatial-Mix (paper default)"}}
    attn_none: {{table: "2", kwargs: {{mixer: none}}}}
    skips1: {{table: "11", row: "1,with", kwargs: {{skips: 1}}}}
erf: {{variants: [attn_none, attn_spatial_mix], images: {demo}/images, size: [32, 32], n: 1}}
evaluate: {{batch_size: 8}}
report: {{overlay_cases: 2}}
"""


def test_notebooks_are_thin_and_stripped():
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell must be tagged parameters"
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), f"{path.name}: no title"
        for cell in code:
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: commit notebooks without outputs"
            defs = [n for n in ast.walk(ast.parse(cell.source)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert not defs, f"{path.name}: logic belongs in rwkvlab, not in notebook cells"


def test_dvc_pipeline_is_valid():
    out = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"synthesize", "prepare@demo", "prepare@synapse_demo", "train@demo-rwkv_unet_t",
            "evaluate@synapse_demo-rwkv_unet_t", "train@demo-swin_unet", "evaluate@demo-rwkv_unet_t-semi",
            "report", "pretrain_data", "pretrain@rwkv_enc_t", "ablate@attn_mhsa",
            "ablate@pre_digits", "ablation_tables", "erf"} <= names


@pytest.mark.slow
def test_every_notebook_runs_with_tiny_parameters(tmp_path):
    papermill = pytest.importorskip("papermill")
    from rwkvlab.data.readers.synapse_demo import generate

    from rwkvlab.data.digits import write_digits

    generate(tmp_path / "synapse_demo", seed=0)
    write_digits(tmp_path / "digits", train_per_class=3, val_per_class=2)
    (tmp_path / "raw" / "busi").mkdir(parents=True)  # an absent benchmark: reported and skipped
    params = tmp_path / "params.yaml"
    params.write_text(TINY.format(demo=ROOT / "data" / "demo"))
    run = functools.partial(papermill.execute_notebook, kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    for dataset in ("demo", "synapse_demo", "busi"):
        run(str(ROOT / "notebooks/01_prepare_data.ipynb"), str(tmp_path / f"01_{dataset}.ipynb"),
            parameters={"params_file": str(params), "dataset": dataset})

    def segmentation_runs():
        for name in ("demo-rwkv_unet_t", "synapse_demo-rwkv_unet_t"):
            for nb in ("02_train", "03_evaluate"):
                run(str(ROOT / f"notebooks/{nb}.ipynb"), str(tmp_path / f"{nb}_{name}.ipynb"),
                    parameters={"params_file": str(params), "run": name})
        run(str(ROOT / "notebooks/04_report.ipynb"), str(tmp_path / "04.ipynb"), parameters={"params_file": str(params)})

    def pretraining_ablations_erf():
        run(str(ROOT / "notebooks/00_pretrain.ipynb"), str(tmp_path / "00.ipynb"),
            parameters={"params_file": str(params), "model": "rwkv_enc_t"})
        for variant in ("attn_none", "attn_spatial_mix", "pre_digits"):
            run(str(ROOT / "notebooks/05_ablations.ipynb"), str(tmp_path / f"05_{variant}.ipynb"),
                parameters={"params_file": str(params), "variant": variant})
        run(str(ROOT / "notebooks/05_ablation_tables.ipynb"), str(tmp_path / "05_tables.ipynb"),
            parameters={"params_file": str(params)})
        run(str(ROOT / "notebooks/06_erf.ipynb"), str(tmp_path / "06.ipynb"), parameters={"params_file": str(params)})

    # The two branches of the DAG share only the prepared data: run them side by side (kernel start-up dominates).
    with ThreadPoolExecutor(2) as pool:
        for branch in [pool.submit(segmentation_runs), pool.submit(pretraining_ablations_erf)]:
            branch.result()

    for name in ("demo-rwkv_unet_t", "synapse_demo-rwkv_unet_t"):
        seed0 = json.loads((tmp_path / f"reports/evaluate/{name}/seeds/seed0/metrics.json").read_text())
        assert 0 <= seed0["dsc"] <= 100 and seed0["hd95"] >= 0
        summary = json.loads((tmp_path / f"reports/evaluate/{name}/metrics.json").read_text())
        assert summary["mean"] == seed0 and summary["std"] == {k: 0.0 for k in seed0} and summary["seeds"] == [0]
    volumes = json.loads((tmp_path / "data/splits/synapse_demo/seed0.json").read_text())["test"]
    per_case = (tmp_path / "reports/evaluate/synapse_demo-rwkv_unet_t/seeds/seed0/per_case.csv").read_text()
    assert all(v in per_case for v in volumes), "synapse_demo is scored per volume"
    assert "skipped" in (tmp_path / "reports/datasets/busi/card.md").read_text()
    for out in ["data/prepared/demo/cache.h5", "data/splits/demo/seed0.json", "reports/datasets/demo/card.md",
                "reports/datasets/synapse_demo/montage.png", "reports/train/demo-rwkv_unet_t/seed0/history.csv",
                "data/checkpoints/train/demo-rwkv_unet_t/seed0/best.pt", "reports/results.md", "reports/results.csv",
                "reports/figures/overlay_synapse_demo-rwkv_unet_t.png",
                "reports/figures/training_curves.png"]:
        assert (tmp_path / out).is_file(), out
    assert "SYNTHETIC" in (tmp_path / "reports/results.md").read_text()
    results = pd.read_csv(tmp_path / "reports/results.csv")
    assert list(results["run"]) == ["demo-rwkv_unet_t", "synapse_demo-rwkv_unet_t"] and set(results["seeds"]) == {1}
    assert results["source"].str.endswith("metrics.json").all()
    for out in ["binary", "table3", "table4", "table5", "runs_demo", "runs_synapse_demo", "baseline_complexity"]:
        assert (tmp_path / f"reports/comparison/{out}.md").is_file(), out
    assert (tmp_path / "reports/comparison/chart_synapse_demo.png").is_file()
    runs_demo = pd.read_csv(tmp_path / "reports/comparison/runs_demo.csv")
    assert runs_demo["dsc"].round(2).tolist() == [round(json.loads(
        (tmp_path / "reports/evaluate/demo-rwkv_unet_t/metrics.json").read_text())["mean"]["dsc"], 2)]
    for out in ["reports/ablate/attn_none/metrics.json", "reports/ablations/table2.md", "reports/ablations/table11.md",
                "reports/ablations/complexity.csv", "reports/ablations/bubble_chart.png", "reports/erf/area_ratio.md",
                "data/checkpoints/ablate/attn_spatial_mix/last.pt", "data/checkpoints/pretrain/rwkv_enc_t/encoder.pt",
                "reports/pretrain/rwkv_enc_t/metrics.json", "reports/ablations/table7.md"]:
        assert (tmp_path / out).is_file(), out
    table2 = (tmp_path / "reports/ablations/table2.csv").read_text()
    assert "attn_none" in table2 and "78.14" in table2  # ours beside the paper's spatial-mix row
