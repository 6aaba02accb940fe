"""Result tables, with the paper's published numbers beside ours."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from rwkvlab.io import atomic_write

__all__ = ["paper_table", "results_table", "write_table"]

# Registry name -> the method's row name in the paper's tables.
_PAPER_NAMES = {"rwkv_unet_t": "RWKV-UNet-T", "rwkv_unet_s": "RWKV-UNet-S", "rwkv_unet_b": "RWKV-UNet"}
# Dataset -> (paper table, DSC column, HD95 column or None, note). The demos quote the nearest
# benchmark for scale only.
PAPER_COLUMNS = {
    "demo": ("binary", "isic2017", None, "paper: ISIC 2017 (other images, 256x256, 300 epochs), for scale"),
    "synapse_demo": (None, None, None, "SYNTHETIC data: no paper number"),
    "synapse": ("synapse", "dsc", "hd95", ""),
    "acdc": ("acdc", "dsc", None, ""),
    "goals": ("goals_fugc", "goals_dsc", None, ""),
    "fugc": ("goals_fugc", "fugc_dsc", None, ""),
    **{d: ("binary", d, None, "") for d in ("busi", "cvc_clinicdb", "cvc_colondb", "kvasir_seg", "isic2017",
                                              "glas", "psvfm")},
}


def paper_table(name: str) -> pd.DataFrame:
    """A published table of the paper (``rwkvlab/report/paper/<name>.csv``), as strings."""
    path = resources.files("rwkvlab.report") / "paper" / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no paper table {name!r}; see rwkvlab/report/paper/README.md")
    return pd.read_csv(path, dtype=str)


def _paper_value(dataset: str, model: str, column: int) -> str:
    table, *cols, _ = PAPER_COLUMNS.get(dataset, (None, None, None, ""))
    if table is None or cols[column] is None:
        return "-"
    published = paper_table(table).set_index("method")
    published.index = published.index.str.removesuffix(" (ours)")  # the multi-class tables mark the paper's rows
    name = _PAPER_NAMES.get(model)
    return published.loc[name, cols[column]] if name in published.index else "-"


def results_table(metrics: Mapping[tuple[str, str], Mapping[str, float]],
                  complexity: Mapping[tuple[str, str], Any]) -> pd.DataFrame:
    """One row per (dataset, model): our DSC/HD95, parameters and MACs next to the paper's numbers.

    Args:
        metrics: (dataset, model) -> summary of :func:`rwkvlab.engine.evaluate.summarize`.
        complexity: (dataset, model) -> :class:`rwkvlab.complexity.Complexity` of the trained model at its
            training size (:func:`rwkvlab.complexity.trained_complexity`).
    """
    rows = []
    for (dataset, model), m in metrics.items():
        c = complexity[(dataset, model)]
        rows.append({
            "dataset": dataset, "model": model, "dsc": round(m["dsc"], 2), "hd95": round(m["hd95"], 2),
            "paper_dsc": _paper_value(dataset, model, 0), "paper_hd95": _paper_value(dataset, model, 1),
            "params_m": round(c.params / 1e6, 2), "macs_g": round(c.macs_g, 3),
            "note": PAPER_COLUMNS.get(dataset, (None, None, None, ""))[3],
        })
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, stem: Path, title: str, notes: str = "") -> None:
    """Write ``stem.csv`` and ``stem.md`` (a titled Markdown table with notes) atomically."""
    stem = Path(stem)
    atomic_write(stem.with_suffix(".csv"), lambda p: df.to_csv(p, index=False))
    md = f"# {title}\n\n{df.to_markdown(index=False)}\n" + (f"\n{notes}\n" if notes else "")
    atomic_write(stem.with_suffix(".md"), lambda p: p.write_text(md))
