"""The study's notebooks run end to end with tiny parameters; dvc.yaml is valid."""

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# the GPU machine runs `pytest -m cuda` over tests/ without the pipeline's packages: skip, do not break collection
nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# the calls that draw a figure in the notebooks (each such cell is tagged "figure" and must output an image)
FIGURE_CALL = re.compile(r"save_figure\(|_figure\(|_curves\(|_chart\(|overlay_cases\(|\.plot\(|write_card\(")
# outputs an executed notebook may hold beyond its cells' results: progress widgets, warnings
MAX_OUTPUTS_PER_CELL = 8
# A process that executes the notebooks of a JSON list read from stdin, in turn (test_every_notebook_runs_...).
PAPERMILL_IN_TURN = """
import json, sys, papermill
for j in json.load(sys.stdin):
    papermill.execute_notebook(j["notebook"], j["out"], parameters=j["parameters"], kernel_name="python3",
                               cwd=j["cwd"], progress_bar=False)
"""

TINY = """
base: {{seed: 0, device: cpu, data_dir: data, reports_dir: reports, checkpoints_dir: data/checkpoints}}
prepare:
  datasets: {{demo: {demo}, synapse_demo: synapse_demo, busi: raw/busi, volume_demo: volume_demo}}
  image_size: {{demo: [32, 48], synapse_demo: [32, 32], busi: [32, 32]}}
  options: {{}}
  split_seeds: [0]
  card_montage: 4
pretrain:
  models: [rwkv_enc_t]
  recipe: tiny
  nproc: 1
  num_workers: 0
  digits_train_per_class: 3
  digits_val_per_class: 2
  recipes:
    tiny: {{data: digits, epochs: 1, batch_size: 16, lr: 1.0e-3, min_lr: 1.0e-5, warmup_epochs: 0, warmup_lr: 1.0e-4,
            weight_decay: 0.05, label_smoothing: 0.1, img_size: 32, crop_pct: 0.875, scale: [0.5, 1.0], hflip: 0.0,
            auto_augment: null, color_jitter: 0.4, interpolation: bilinear, drop_path: 0.05, ema_decay: 0.9,
            ema_warmup: true, clip_grad: 5.0, amp: true}}
train:
  runs:
    demo-rwkv_unet_t: {{dataset: demo, model: rwkv_unet_t, recipe: demo}}
    synapse_demo-rwkv_unet_t: {{dataset: synapse_demo, model: rwkv_unet_t, recipe: synapse_demo}}
    volume_demo-rwkv_unet3d_t: {{dataset: volume_demo, model: rwkv_unet3d_t, recipe: volume_demo,
                                kwargs: {{strides: [[1, 2, 2], 2, 2, 2]}}}}
  run_defaults: {{kwargs: {{}}, seeds: [0], init: null}}
  num_workers: 0
  nproc: 1
  recipe_defaults: {{test_checkpoint: best, augment: light, precise_bn: false, init: null, precision: fp32,
                    channels_last: false, compile: false, fused_adamw: false, clip_grad: 0.0, val_every: 0,
                    sync_bn: false, consistency_weight: 0.0, consistency_rampup: 0, unlabelled: null,
                    unlabelled_fraction: 0.0, patch_size: null, patches_per_volume: 1, foreground_fraction: 0.5,
                    sw_overlap: 0.25, sw_mode: gaussian, sw_batch_size: 4}}
  recipes:
    demo: {{epochs: 1, batch_size: 8, lr: 1.0e-3, min_lr: 1.0e-5, weight_decay: 1.0e-4, ce_weight: 0.5,
            dice_weight: 1.0, precise_bn: true}}
    synapse_demo: {{epochs: 1, batch_size: 16, lr: 1.0e-3, min_lr: 0.0, weight_decay: 1.0e-3, ce_weight: 0.5,
                    dice_weight: 0.5, test_checkpoint: last, augment: acdc}}
    volume_demo: {{epochs: 1, batch_size: 2, lr: 1.0e-3, min_lr: 1.0e-5, weight_decay: 1.0e-4, ce_weight: 0.5,
                   dice_weight: 1.0, augment: volume, precise_bn: true, patch_size: [16, 32, 32]}}
    ablate_demo: {{epochs: 1, batch_size: 8, lr: 1.0e-3, min_lr: 1.0e-5, weight_decay: 1.0e-4, ce_weight: 0.5,
                   dice_weight: 1.0}}
ablate:
  dataset: demo
  model: rwkv_unet_t
  split_seed: 0
  trained: [attn_none, attn_spatial_mix, pre_digits]
  protocols: {{scratch-100: {{recipe: ablate_demo, pretrained: false}}, pretrained-30: {{recipe: ablate_demo,
              pretrained: true}}}}
  tables: {{"2": scratch-100, "7": null, "11": pretrained-30}}
  variant_defaults: {{row: "", model: rwkv_unet_b, kwargs: {{}}, size: 224, num_classes: 9, recipe: {{}}, dataset: null,
                     protocol: null}}
  variants:
    pre_digits: {{table: "7", row: "with,30", protocol: pretrained-30}}
    attn_spatial_mix: {{table: "2", row: "RWKV Spatial-Mix (paper default)"}}
    attn_none: {{table: "2", kwargs: {{mixer: none}}}}
    skips1: {{table: "11", row: "1,with", kwargs: {{skips: 1}}}}
erf: {{variants: [attn_none, attn_spatial_mix], images: {demo}/images, size: [32, 32], n: 1, stage: -1, seed: 0,
       checkpoint: last}}
evaluate: {{batch_size: 8}}
report: {{overlay_cases: 2}}
nnunet: {{root: nnunet, datasets: {{volume_demo: {{id: 901, source: volume_demo, configuration: 3d_fullres}}}},
         runs: {{volume_demo-unet: {{dataset: volume_demo, trainer: nnUNetTrainer}}}}, epochs: 2, iterations: 5,
         folds: [0], augmentation_workers: 0}}
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
            python = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
            defs = [n for n in ast.walk(ast.parse(python)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert not defs, f"{path.name}: logic belongs in rwkvlab, not in notebook cells"
            draws = FIGURE_CALL.search(cell.source) is not None
            assert draws == ("figure" in cell.metadata.get("tags", [])), \
                f"{path.name}: a cell that draws a figure is tagged 'figure' (and only such a cell): {cell.source[:80]!r}"
        assert "%matplotlib inline" in code[1].source, f"{path.name}: figures show inline only after %matplotlib inline"
        assert code[0].source.startswith("params_file = None"), \
            f"{path.name}: params_file defaults to None (found from the notebook's folder)"


def test_dvc_pipeline_is_valid():
    out = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"synthesize", "prepare@demo", "prepare@synapse_demo", "train@demo-rwkv_unet_t",
            "evaluate@synapse_demo-rwkv_unet_t", "train@demo-swin_unet", "evaluate@demo-rwkv_unet_t-semi",
            "report", "pretrain_data", "pretrain@rwkv_enc_t", "ablate@attn_mhsa",
            "ablate@pre_digits", "ablation_tables", "erf"} <= names


def check_executed(path: Path, figures: bool = True) -> None:
    """No error; every cell tagged "figure" shows an image (``figures``); no cell floods the notebook with outputs."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{path.name}: {errors}"
        if figures and "figure" in cell.metadata.get("tags", []):
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), \
                f"{path.name}: the figure cell {cell.source[:60]!r} shows no image"
        assert len(cell.outputs) <= MAX_OUTPUTS_PER_CELL, \
            f"{path.name}: {len(cell.outputs)} outputs in {cell.source[:60]!r} (log lines or progress bars leak)"


@pytest.mark.slow
def test_every_notebook_runs_with_tiny_parameters(tmp_path):
    """Each notebook runs with its kernel in the project's notebooks/ folder, as JupyterLab starts it, finding
    params.yaml from there (the prepare notebook also from the root with an explicit file, as DVC runs it)."""
    pytest.importorskip("papermill")
    from rwkvlab.data.readers.synapse_demo import generate

    from rwkvlab.data.digits import write_digits
    from rwkvlab.data.readers.volume_demo import generate3d

    generate(tmp_path / "synapse_demo", seed=0)
    generate3d(tmp_path / "volume_demo", seed=0, n_cases=6, shape=(16, 32, 32))
    write_digits(tmp_path / "digits", train_per_class=3, val_per_class=2)
    (tmp_path / "raw" / "busi").mkdir(parents=True)  # an absent benchmark: reported and skipped
    params = tmp_path / "params.yaml"
    params.write_text(TINY.format(demo=ROOT / "data" / "demo"))
    (tmp_path / "notebooks").mkdir()
    executed = tmp_path / "executed"

    def job(notebook: str, out: str, cwd: Path = tmp_path / "notebooks", figures: bool = True, **parameters):
        return {"notebook": str(ROOT / f"notebooks/{notebook}.ipynb"), "out": str(executed / f"{out}.ipynb"),
                "cwd": str(cwd), "parameters": parameters, "figures": figures}

    def run(*jobs_in_turn: list[dict]) -> None:
        """Each list of jobs in turn in a process of its own, the lists side by side: papermill's cwd is a
        process-wide chdir, so two notebooks started from two threads of one process could start a kernel in the
        wrong folder."""
        procs = [subprocess.Popen([sys.executable, "-c", PAPERMILL_IN_TURN], stdin=subprocess.PIPE, text=True,
                                  stderr=subprocess.PIPE) for _ in jobs_in_turn]
        for proc, jobs in zip(procs, jobs_in_turn):
            proc.stdin.write(json.dumps(jobs))
            proc.stdin.close()
        for proc in procs:
            assert proc.wait() == 0, proc.stderr.read()[-3000:]
        for jobs in jobs_in_turn:
            for j in jobs:
                check_executed(Path(j["out"]), j["figures"])

    # the nnunet_train stage's output (a real one: tests/test_nnunet.py trains through nnU-Net itself)
    nnunet_run = tmp_path / "reports" / "nnunet" / "volume_demo-unet"
    nnunet_run.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "report" / "nnunet_metrics.json", nnunet_run / "metrics.json")
    executed.mkdir()
    run([job("01_prepare_data", "01_demo", cwd=tmp_path, params_file=str(params), dataset="demo"),
         job("01_prepare_data", "01_synapse_demo", dataset="synapse_demo"),
         job("01_prepare_data", "01_busi", figures=False, dataset="busi"),  # absent: skipped, nothing to draw
         job("01_prepare_data", "01_volume_demo", dataset="volume_demo")])
    segmentation_runs = [job(nb, f"{nb}_{name}", run=name)
                         for name in ("demo-rwkv_unet_t", "synapse_demo-rwkv_unet_t", "volume_demo-rwkv_unet3d_t")
                         for nb in ("02_train", "03_evaluate")] + [job("04_report", "04")]
    pretraining_ablations_erf = [
        job("00_pretrain", "00", model="rwkv_enc_t"),
        *(job("05_ablations", f"05_{variant}", variant=variant)
          for variant in ("attn_none", "attn_spatial_mix", "pre_digits")),
        job("05_ablation_tables", "05_tables"),
        job("06_erf", "06"),
        job("07_explore_ablations", "07", variants=None, try_kwargs={"mixer": "none", "decoder_kernel": 3}, cases=2),
    ]
    run(segmentation_runs, pretraining_ablations_erf)

    explored = nbformat.read(executed / "07.ipynb", as_version=4)
    assert sum("image/png" in o.get("data", {}) for c in explored.cells for o in c.get("outputs", [])) >= 6
    assert (tmp_path / "data/adhoc/explore/decoder_kernel=3-mixer=none/metrics.json").is_file()
    assert (tmp_path / "reports/logs/02_train_demo-rwkv_unet_t.log").read_text().count("epoch 1:") == 1
    for name in ("demo-rwkv_unet_t", "synapse_demo-rwkv_unet_t"):
        seed0 = json.loads((tmp_path / f"reports/evaluate/{name}/seeds/seed0/metrics.json").read_text())
        assert 0 <= seed0["dsc"] <= 100 and seed0["hd95"] >= 0
        summary = json.loads((tmp_path / f"reports/evaluate/{name}/metrics.json").read_text())
        assert summary["mean"] == seed0 and summary["std"] == {k: 0.0 for k in seed0} and summary["seeds"] == [0]
    volumes = json.loads((tmp_path / "data/splits/synapse_demo/seed0.json").read_text())["test"]
    per_case = (tmp_path / "reports/evaluate/synapse_demo-rwkv_unet_t/seeds/seed0/per_case.csv").read_text()
    assert all(v in per_case for v in volumes), "synapse_demo is scored per volume"
    volume_cases = pd.read_csv(tmp_path / "reports/evaluate/volume_demo-rwkv_unet3d_t/seeds/seed0/per_case.csv")
    test_volumes = json.loads((tmp_path / "data/splits/volume_demo/seed0.json").read_text())["test"]
    assert set(volume_cases["case"]) == set(test_volumes) and volume_cases["hd95_mm"].notna().all()
    for out in ["reports/comparison/runs_volume_demo.md", "reports/comparison/chart_volume_demo.png",
                "reports/figures/volume_slices_volume_demo.png", "reports/comparison/nnunet_volume_demo.md",
                "reports/figures/nnunet_volume_demo.png"]:
        assert (tmp_path / out).is_file(), out
    assert "skipped" in (tmp_path / "reports/datasets/busi/card.md").read_text()
    for out in ["data/prepared/demo/cache.h5", "data/splits/demo/seed0.json", "reports/datasets/demo/card.md",
                "reports/datasets/synapse_demo/montage.png", "reports/train/demo-rwkv_unet_t/seed0/history.csv",
                "data/checkpoints/train/demo-rwkv_unet_t/seed0/best.pt", "reports/results.md", "reports/results.csv",
                "reports/figures/overlay_synapse_demo-rwkv_unet_t.png",
                "reports/figures/training_curves.png"]:
        assert (tmp_path / out).is_file(), out
    assert "SYNTHETIC" in (tmp_path / "reports/results.md").read_text()
    results = pd.read_csv(tmp_path / "reports/results.csv")
    assert list(results["run"]) == ["demo-rwkv_unet_t", "synapse_demo-rwkv_unet_t", "volume_demo-rwkv_unet3d_t"]
    assert set(results["seeds"]) == {1}
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
