"""Result tables, with the paper's published numbers beside ours."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Mapping

import pandas as pd

from rwkvlab.io import atomic_write

__all__ = ["paper_table", "results_table", "write_table"]

# Registry name -> the method's row name in the paper's tables.
_PAPER_NAMES = {"rwkv_unet_t": "RWKV-UNet-T", "rwkv_unet_s": "RWKV-UNet-S", "rwkv_unet_b": "RWKV-UNet"}


def paper_table(name: str) -> pd.DataFrame:
    """A published table of the paper (``rwkvlab/report/paper/<name>.csv``), as strings."""
    path = resources.files("rwkvlab.report") / "paper" / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no paper table {name!r}; see rwkvlab/report/paper/README.md")
    return pd.read_csv(path, dtype=str)


def results_table(metrics: Mapping[str, Mapping[str, float]], params_m: Mapping[str, float],
                  paper: str = "binary", paper_column: str = "isic2017") -> pd.DataFrame:
    """One row per model: our DSC/HD95 and parameter count next to the paper's.

    Args:
        metrics: model -> summary of :func:`rwkvlab.engine.evaluate.summarize`.
        params_m: model -> parameters in millions (ours, counted).
        paper: paper table to quote.
        paper_column: its column holding the DSC to quote.
    """
    published = paper_table(paper).set_index("method")
    rows = []
    for model, m in metrics.items():
        ref = published.loc[_PAPER_NAMES[model]] if _PAPER_NAMES.get(model) in published.index else None
        rows.append({
            "model": model,
            "dsc": round(m["dsc"], 2),
            "hd95": round(m["hd95"], 2),
            "params_m": round(params_m[model], 2),
            f"paper_dsc_{paper_column}": None if ref is None else ref[paper_column],
            "paper_params_m": None if ref is None else ref["params_m"],
        })
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, stem: Path, title: str, notes: str = "") -> None:
    """Write ``stem.csv`` and ``stem.md`` (a titled Markdown table with notes) atomically."""
    stem = Path(stem)
    atomic_write(stem.with_suffix(".csv"), lambda p: df.to_csv(p, index=False))
    md = f"# {title}\n\n{df.to_markdown(index=False)}\n" + (f"\n{notes}\n" if notes else "")
    atomic_write(stem.with_suffix(".md"), lambda p: p.write_text(md))
