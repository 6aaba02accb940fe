"""Result tables, with the paper's published numbers beside ours."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from rwkvlab.io import atomic_write

__all__ = ["PAPER_COLUMNS", "paper_table", "write_table"]

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


def write_table(df: pd.DataFrame, stem: Path, title: str, notes: str = "") -> None:
    """Write ``stem.csv`` and ``stem.md`` (a titled Markdown table with notes) atomically."""
    stem = Path(stem)
    atomic_write(stem.with_suffix(".csv"), lambda p: df.to_csv(p, index=False))
    md = f"# {title}\n\n{df.to_markdown(index=False)}\n" + (f"\n{notes}\n" if notes else "")
    atomic_write(stem.with_suffix(".md"), lambda p: p.write_text(md))

