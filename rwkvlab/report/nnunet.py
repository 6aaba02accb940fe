"""The nnU-Net comparison (docs §24): RWKV-UNet and nnU-Net's U-Net under the same plans, preprocessing, augmentation,
budget, folds and seed, with nnU-Net's validation Dice beside our protocol's DSC and HD95 on the same predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd
from matplotlib.figure import Figure

from rwkvlab.report.figures import new_figure

__all__ = ["read_runs", "comparison_table", "comparison_figure"]


def read_runs(reports_dir: Path, names: Iterable[str]) -> list[dict]:
    """The ``metrics.json`` (+ ``timing.json`` seconds) of the nnU-Net study runs ``names``, in that order; a skipped
    run (no data: no metrics) is left out."""
    runs = []
    for name in names:
        path = Path(reports_dir) / "nnunet" / name / "metrics.json"
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())
        timing = path.with_name("timing.json")
        seconds = json.loads(timing.read_text())["seconds_per_fold"] if timing.is_file() else {}
        runs.append({**metrics, "seconds": sum(seconds.values()) if seconds else float("nan")})
    return runs


def _fold_mean(folds: list[dict], source: str, key: str) -> float:
    values = [f[source].get(key, float("nan")) for f in folds]
    return sum(values) / len(values)


def comparison_table(runs: list[dict]) -> pd.DataFrame:
    """One row per run: nnU-Net's validation Dice (%) and our DSC (%) per class and mean, our HD95 (voxels and mm),
    parameters, MACs of one patch and the wall-clock time, each the mean over the run's folds."""
    rows = []
    for r in runs:
        folds = r["folds"]
        classes = [k[len("dice_"):] for k in folds[0]["nnunet"] if k.startswith("dice_")]
        row = {"network": r["network"], "trainer": r["trainer"], "epochs x iterations": f"{r['epochs']} x {r['iterations']}",
               "folds": len(folds),
               "Dice nnU-Net": 100 * _fold_mean(folds, "nnunet", "dice"), "DSC ours": _fold_mean(folds, "ours", "dsc")}
        for c in classes:
            row[f"Dice {c} nnU-Net"] = 100 * _fold_mean(folds, "nnunet", f"dice_{c}")
            row[f"DSC {c} ours"] = _fold_mean(folds, "ours", f"dsc_{c}")
        row |= {"HD95 (voxels)": _fold_mean(folds, "ours", "hd95"), "HD95 (mm)": _fold_mean(folds, "ours", "hd95_mm"),
                "params (M)": r["params_m"], "MACs (G)": r["macs_g"], "train + validation (s)": r["seconds"]}
        rows.append(row)
    return pd.DataFrame(rows).round(2)


def comparison_figure(table: pd.DataFrame, dataset: str) -> Figure:
    """Per-class and mean DSC of each network, nnU-Net's Dice solid and ours hatched (the same predictions)."""
    classes = [c[len("Dice "):-len(" nnU-Net")] for c in table.columns if c.startswith("Dice ") and
               c.endswith(" nnU-Net") and c != "Dice nnU-Net"]
    groups = ["mean", *classes]
    fig, ax = new_figure(figsize=(1.6 + 1.3 * len(groups), 3.6))
    width = 0.8 / (2 * len(table))
    for i, (_, row) in enumerate(table.iterrows()):
        for j, (source, prefix, hatch) in enumerate((("nnU-Net", "Dice", None), ("ours", "DSC", "//"))):
            heights = [row[f"{prefix} {source}"]] + [row[f"{prefix} {c} {source}"] for c in classes]
            offset = (2 * i + j - len(table) + 0.5) * width
            ax.bar([g + offset for g in range(len(groups))], heights, width, color=f"C{i}", hatch=hatch,
                   edgecolor="white" if hatch else None, label=f"{row['network']} ({source})")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel("DSC (%)")
    ax.set_title(f"{dataset} in nnU-Net: its plans, epochs x iterations {table['epochs x iterations'].iloc[0]}, "
                 f"{table['folds'].iloc[0]} fold(s)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
