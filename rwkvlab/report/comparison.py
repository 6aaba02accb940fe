"""The paper's comparison tables (binary table, Tables 3-5) with the study's runs added, and Fig. 4 with baselines.

Input is one evaluation summary per training run, as the evaluate stage writes it to
``reports/evaluate/<run>/metrics.json``: ``dataset``, ``model``, ``kwargs``, ``n_seeds`` and the ``mean`` and
sample ``std`` (ddof 1) over seeds of ``dsc``, ``hd95``, ``dsc_<class>`` (and ``hd95_mm`` where the data has a
spacing). Each of our rows names the JSON its cells came from, so every number traces back to one file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
from matplotlib.figure import Figure

from rwkvlab.complexity import Complexity, model_complexity
from rwkvlab.models import model_card, model_cards
from rwkvlab.report.ablations import _number, draw_bubbles, label_bubbles
from rwkvlab.report.figures import new_figure
from rwkvlab.report.tables import PAPER_COLUMNS, paper_table, write_table

__all__ = ["COMPARISON_TABLES", "COMPARISON_NOTES", "results_table", "comparison_tables",
           "write_comparison_tables",
           "baseline_complexity_table", "comparison_chart"]

# Reader class name -> the paper CSV's column where the two are spelled differently (Synapse's kidneys).
_CLASS_COLUMNS = {"kidney_left": "kidney_l", "kidney_right": "kidney_r"}


@dataclass(frozen=True)
class ComparisonTable:
    """One of the paper's comparison tables: its key, its CSV and which dataset fills which DSC column. The
    published row of each model lives on the model's card (``ModelCard.paper_rows[key]``)."""

    key: str
    csv: str
    title: str
    datasets: dict[str, str]
    hd95: str | None = None
    per_class: bool = False  # the columns other than method, dsc and hd95 are per-class DSC
    complexity: bool = False  # params_m and flops_g columns (ours: parameters and MACs at the training size)

    @property
    def methods(self) -> dict[str, str]:
        """Registered model -> its published row in this table, for the models the paper compares here."""
        return {name: card.paper_rows[self.key] for name, card in model_cards().items() if self.key in card.paper_rows}


COMPARISON_TABLES = {table.key: table for table in (
    ComparisonTable(
        "binary", "binary", "Binary segmentation (DSC %, 256x256): the paper's table and this study",
        {d: d for d in ("busi", "cvc_clinicdb", "cvc_colondb", "kvasir_seg", "isic2017", "glas", "psvfm")},
        complexity=True),
    ComparisonTable("table3", "synapse", "Table 3: Synapse multi-organ CT (DSC %, HD95 in voxels)", {"synapse": "dsc"},
                    hd95="hd95", per_class=True),
    ComparisonTable("table4", "acdc", "Table 4: ACDC cardiac MRI (DSC %)", {"acdc": "dsc"}, per_class=True),
    ComparisonTable("table5", "goals_fugc", "Table 5: GOALS and FUGC 2025 (DSC %)",
                    {"goals": "goals_dsc", "fugc": "fugc_dsc"}),
)}

_ROWS_NOTE = ("Rows marked (this study): the mean over seeds ± the sample std (ddof 1) where a run has more than one "
              "seed, the single run's value otherwise; `source` names the metrics JSON of each cell ('paper': the "
              "published row, unchanged). '-': no run of that dataset.")
COMPARISON_NOTES = {
    "binary": (_ROWS_NOTE + " params_m / flops_g of our rows: parameters (M) and MACs (G) of the trained model at "
               "its training size, counted by `rwkvlab.complexity` as the paper counts its FLOPs (docs §11); see "
               "the baseline complexity table for the baselines against the paper's counts."),
    "table3": (_ROWS_NOTE + " HD95 in voxels, as the paper (docs §7). Swin-UNet (this study) is MONAI SwinUNETR "
               "(2D, feature size 48, 25.14M), not Swin-Unet (27.17M): rwkvlab/models/baselines/swin_unet.py."),
    "table4": (_ROWS_NOTE + " Swin-UNet (this study) is MONAI SwinUNETR (2D, feature size 48, 25.14M), not "
               "Swin-Unet (27.17M): rwkvlab/models/baselines/swin_unet.py."),
    "table5": _ROWS_NOTE + " The paper's FUGC numbers are semi-supervised (docs §6).",
    "runs": ("One row per run: mean over seeds ± sample std (ddof 1) where it has more than one seed. HD95 in "
             "pixels (voxels for volumes), hd95_mm where the data has a spacing; params (M) and MACs (G) at the "
             "training size (`rwkvlab.complexity`)."),
}

def _class_columns(spec: ComparisonTable) -> list[str]:
    """The per-class DSC columns of a table, in the CSV's order."""
    if not spec.per_class:
        return []
    return [c for c in paper_table(spec.csv).columns if c not in ("method", "dsc", spec.hd95)]


def _summary_key(column: str) -> str:
    back = {v: k for k, v in _CLASS_COLUMNS.items()}
    return f"dsc_{back.get(column, column)}"


def _check(run: str, path: Path, summary: Any) -> None:
    expected = "an evaluate summary with dataset, model, n_seeds, mean (dsc, hd95, ...) and std"
    if not isinstance(summary, Mapping) or not all(k in summary for k in ("dataset", "model", "n_seeds", "mean")):
        raise ValueError(f"{path}: the summary of run {run!r} is not {expected}")
    if not isinstance(summary["n_seeds"], int) or summary["n_seeds"] < 1:
        raise ValueError(f"{path}: n_seeds must be an integer >= 1, got {summary['n_seeds']!r}")
    if summary["n_seeds"] > 1 and not isinstance(summary.get("std"), Mapping):
        raise ValueError(f"{path}: run {run!r} has {summary['n_seeds']} seeds but no std; expected {expected}")


def _cell(path: Path, summary: Mapping[str, Any], key: str, required: bool = True) -> str:
    """``mean±std`` (2 decimals) of ``key`` over the run's seeds, the plain mean for one seed."""
    if key not in summary["mean"]:
        if not required:
            return "-"
        raise ValueError(f"{path}: no mean[{key!r}]; the summary has {', '.join(summary['mean'])}")
    mean = float(summary["mean"][key])
    if summary["n_seeds"] == 1:
        return f"{mean:.2f}"
    if key not in summary["std"]:
        raise ValueError(f"{path}: {summary['n_seeds']} seeds but no std[{key!r}]")
    return f"{mean:.2f}±{float(summary['std'][key]):.2f}"


def _label(summary: Mapping[str, Any]) -> str:
    kwargs = summary.get("kwargs") or {}
    extra = " " + ",".join(f"{k}={v}" for k, v in sorted(kwargs.items())) if kwargs else ""
    return f"{model_card(summary['model']).label}{extra} (this study)"


def _complexity(run: str, complexity: Mapping[str, Complexity]) -> Complexity:
    if run not in complexity:
        raise ValueError(f"no complexity for run {run!r}; complexity has runs: {', '.join(sorted(complexity))}")
    return complexity[run]


def _paper_rows(spec: ComparisonTable, runs: Mapping[str, tuple[Path, Mapping[str, Any]]],
                complexity: Mapping[str, Complexity]) -> pd.DataFrame:
    """The published table with one row per (model, kwargs) of our runs on its datasets, after the published row
    of the same method (at the end where the paper has none)."""
    published = paper_table(spec.csv)
    ours: dict[tuple[str, str], dict[str, Any]] = {}
    where: dict[tuple[tuple[str, str], str], Path] = {}
    for run, (path, s) in runs.items():
        if s["dataset"] not in spec.datasets:
            continue
        key = (s["model"], json.dumps(s.get("kwargs") or {}, sort_keys=True))
        if (key, s["dataset"]) in where:
            raise ValueError(f"two runs of {s['model']} {key[1]} on {s['dataset']}: {where[(key, s['dataset'])]} "
                             f"and {path}; pass one of them")
        where[(key, s["dataset"])] = path
        row = ours.setdefault(key, {"method": _label(s), **{c: "-" for c in published.columns if c != "method"},
                                    "_sources": [], "_complexity": []})
        row[spec.datasets[s["dataset"]]] = _cell(path, s, "dsc")
        if spec.hd95:
            row[spec.hd95] = _cell(path, s, "hd95")
        for column in _class_columns(spec):
            row[column] = _cell(path, s, _summary_key(column))
        row["_sources"].append(f"{s['dataset']}: {path}" if len(spec.datasets) > 1 else str(path))
        row["_complexity"].append(_complexity(run, complexity))
    rows = [dict(r, source="paper") for r in published.to_dict("records")]
    for (model, _), row in ours.items():
        counts = row.pop("_complexity")
        if spec.complexity:
            # One value per distinct count: runs of one model at other sizes or channels count differently.
            row["params_m"] = " / ".join(dict.fromkeys(f"{c.params / 1e6:.2f}" for c in counts))
            row["flops_g"] = " / ".join(dict.fromkeys(f"{c.macs_g:.2f}" for c in counts))
        row["source"] = "; ".join(row.pop("_sources"))
        names = [r["method"] for r in rows]
        anchor = spec.methods.get(model)
        if anchor in names:
            at = names.index(anchor) + 1
            while at < len(rows) and rows[at]["source"] != "paper":
                at += 1
            rows.insert(at, row)
        else:
            rows.append(row)
    return pd.DataFrame(rows, columns=[*published.columns, "source"])


def _runs_table(runs: list[tuple[str, Path, Mapping[str, Any]]], complexity: Mapping[str, Complexity]) -> pd.DataFrame:
    """Our runs of one dataset: DSC, HD95 (and in mm), per-class DSC, parameters and MACs, source."""
    classes = list(dict.fromkeys(k for _, _, s in runs for k in s["mean"] if k.startswith("dsc_")))
    with_mm = any("hd95_mm" in s["mean"] for _, _, s in runs)
    with_kwargs = any(s.get("kwargs") for _, _, s in runs)
    rows = []
    for run, path, s in runs:
        c = _complexity(run, complexity)
        row = {"run": run, "model": s["model"]}
        if with_kwargs:
            row["kwargs"] = json.dumps(s.get("kwargs") or {}, sort_keys=True)
        row |= {"seeds": s["n_seeds"], "dsc": _cell(path, s, "dsc"), "hd95": _cell(path, s, "hd95")}
        if with_mm:
            row["hd95_mm"] = _cell(path, s, "hd95_mm", required=False)
        row |= {k: _cell(path, s, k, required=False) for k in classes}
        row |= {"params_m": round(c.params / 1e6, 2), "macs_g": round(c.macs_g, 3), "source": str(path)}
        rows.append(row)
    return pd.DataFrame(rows)


def _validated(summaries: Mapping[str, tuple[Path, Mapping[str, Any]]]) -> dict[str, tuple[Path, Mapping[str, Any]]]:
    out = {}
    for run, entry in summaries.items():
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise ValueError(f"summaries[{run!r}] must be (path of metrics.json, summary dict), "
                             f"got {type(entry).__name__}")
        path, summary = Path(entry[0]), entry[1]
        _check(run, path, summary)
        out[run] = (path, summary)
    return out


def comparison_tables(summaries: Mapping[str, tuple[Path, Mapping[str, Any]]],
                      complexity: Mapping[str, Complexity]) -> dict[str, pd.DataFrame]:
    """The paper's binary table and Tables 3-5 with our runs as rows, and a table of our runs per dataset.

    Our rows follow the published row of the same method (:data:`COMPARISON_TABLES` ``methods``); their cells are
    "-" for datasets without a run, and ``source`` names each cell's metrics JSON ("paper" on published rows).
    Every dataset with runs also gets ``runs_<dataset>``: DSC, HD95 (and ``hd95_mm``), per-class DSC, parameters
    and MACs of each run, which is the only table for datasets outside the paper's (demo, synapse_demo, one's own).

    Args:
        summaries: run name -> (path of its ``metrics.json``, the summary it holds).
        complexity: run name -> :class:`rwkvlab.complexity.Complexity` of the trained model at its training size
            (:func:`rwkvlab.complexity.trained_complexity`).

    Returns:
        ``binary``, ``table3``, ``table4``, ``table5`` (always), then ``runs_<dataset>`` for each dataset with runs.

    Raises:
        ValueError: a summary without the evaluate layout, a missing key (the message names its file), two runs of
            one model and kwargs on one dataset of a paper table, or a run without complexity.
    """
    runs = _validated(summaries)
    tables = {name: _paper_rows(spec, runs, complexity) for name, spec in COMPARISON_TABLES.items()}
    by_dataset: dict[str, list[tuple[str, Path, Mapping[str, Any]]]] = {}
    for run, (path, s) in runs.items():
        by_dataset.setdefault(s["dataset"], []).append((run, path, s))
    for dataset, rows in by_dataset.items():
        tables[f"runs_{dataset}"] = _runs_table(rows, complexity)
    return tables


def _paper_value(dataset: str, model: str, which: int) -> str:
    """The paper's DSC (``which`` 0) or HD95 (1) of ``model`` on ``dataset``'s benchmark column, or "-"."""
    csv, *columns, _ = PAPER_COLUMNS.get(dataset, (None, None, None, ""))
    spec = next((t for t in COMPARISON_TABLES.values() if t.csv == csv), None)
    if spec is None or columns[which] is None or model not in spec.methods:
        return "-"
    published = paper_table(csv).set_index("method")
    return published.loc[spec.methods[model], columns[which]] if spec.methods[model] in published.index else "-"


def results_table(summaries: Mapping[str, tuple[Path, Mapping[str, Any]]],
                  complexity: Mapping[str, Complexity]) -> pd.DataFrame:
    """One row per run: DSC and HD95 (mean±std over its seeds), the paper's numbers for the same model on the
    same benchmark (the demos quote the nearest benchmark, see ``note``), parameters, MACs and the source JSON.

    Args: as :func:`comparison_tables`.
    """
    rows = []
    for run, (path, s) in _validated(summaries).items():
        c = _complexity(run, complexity)
        rows.append({
            "run": run, "dataset": s["dataset"], "model": s["model"], "seeds": s["n_seeds"],
            "dsc": _cell(path, s, "dsc"), "hd95": _cell(path, s, "hd95"),
            "paper_dsc": _paper_value(s["dataset"], s["model"], 0),
            "paper_hd95": _paper_value(s["dataset"], s["model"], 1),
            "params_m": round(c.params / 1e6, 2), "macs_g": round(c.macs_g, 3),
            "note": PAPER_COLUMNS.get(s["dataset"], (None, None, None, ""))[3], "source": str(path),
        })
    return pd.DataFrame(rows)


def write_comparison_tables(tables: Mapping[str, pd.DataFrame], out_dir: Path) -> None:
    """Write ``out_dir/<name>.{md,csv}`` for each table of :func:`comparison_tables`, titled, with its notes."""
    for name, df in tables.items():
        if name in COMPARISON_TABLES:
            title, notes = COMPARISON_TABLES[name].title, COMPARISON_NOTES[name]
        else:
            title, notes = f"Runs on {name.removeprefix('runs_')}", COMPARISON_NOTES["runs"]
        write_table(df, Path(out_dir) / name, title, notes=notes)


def baseline_complexity_table() -> pd.DataFrame:
    """Parameters and MACs of every registered 2D segmentation model (the baselines and RWKV-UNet T/S/B) at 256x256,
    1 class (the binary table's setting, docs §5, §14) against the paper's counts, with the relative differences and
    why a count differs (the model card's ``notes``).

    MACs are the paper's FLOPs convention (:mod:`rwkvlab.complexity`), counted on the meta device.

    Columns: ``model, build, params_m, paper_params_m, params_diff_%, macs_g, paper_flops_g, macs_diff_%, note``
    (the paper columns empty where the binary table has no row; diff = 100 (ours / paper - 1)).
    """
    published = paper_table("binary").set_index("method")
    rows = []
    for model, card in model_cards("segmentation").items():
        if card.spatial_dims != 2:
            continue
        c = model_complexity(model, 256, 1)
        name = COMPARISON_TABLES["binary"].methods.get(model)
        paper = published.loc[name] if name in published.index else None
        p_params = None if paper is None else _number(paper["params_m"])
        p_flops = None if paper is None else _number(paper["flops_g"])
        params_m, macs_g = c.params / 1e6, c.macs_g
        rows.append({
            "model": model, "build": card.build, "params_m": round(params_m, 3), "paper_params_m": p_params,
            "params_diff_%": None if p_params is None else round(100 * (params_m / p_params - 1), 2),
            "macs_g": round(macs_g, 3), "paper_flops_g": p_flops,
            "macs_diff_%": None if p_flops is None else round(100 * (macs_g / p_flops - 1), 2),
            "note": card.notes,
        })
    return pd.DataFrame(rows)


def comparison_chart(summaries: Mapping[str, tuple[Path, Mapping[str, Any]]], complexity: Mapping[str, Complexity],
                     dataset: str) -> Figure:
    """DSC against MACs for one dataset, bubble area by parameters, like the paper's Fig. 4: our runs (circles)
    and the published rows of the dataset's paper table that print parameters and FLOPs (squares; only the binary
    table does).

    Raises:
        ValueError: no run of ``dataset`` (the message lists the datasets that have runs), or a bad summary.
    """
    runs = _validated(summaries)
    mine = [(run, s) for run, (_, s) in runs.items() if s["dataset"] == dataset]
    if not mine:
        have = sorted({s["dataset"] for _, s in runs.values()})
        raise ValueError(f"no run of dataset {dataset!r}; datasets with runs: {', '.join(have) or 'none'}")
    ours = []
    labels = [_label(s).removesuffix(" (this study)") for _, s in mine]
    for (run, s), label in zip(mine, labels):
        c = _complexity(run, complexity)
        if labels.count(label) > 1:  # one model trained two ways (another recipe): the run names which
            label = f"{label} ({run})"
        ours.append((c.macs_g, float(s["mean"]["dsc"]), c.params / 1e6, label))
    table = next((spec for spec in COMPARISON_TABLES.values() if dataset in spec.datasets), None)
    paper = []
    if table is not None and table.complexity:
        for r in paper_table(table.csv).to_dict("records"):
            dsc, flops = _number(str(r[table.datasets[dataset]]).split("±")[0]), _number(r["flops_g"])
            if dsc is not None and flops is not None:
                paper.append((flops, dsc, _number(r["params_m"]), r["method"]))
    fig, ax = new_figure(figsize=(7, 4.6))
    labels = draw_bubbles(ax, ours, marker="o", color="tab:red", label="this study (MACs)")
    if paper:
        labels += draw_bubbles(ax, paper, marker="s", color="tab:blue", label=f"paper, {table.csv} table (FLOPs = MACs)")
    where = "no published complexity for this dataset" if not paper else "squares: the paper's published rows"
    ax.set(xlabel="MACs (G)", ylabel="DSC (%)",
           title=f"{dataset}: DSC vs complexity, bubble area ~ parameters ({where})")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, markerscale=0.5)
    fig.tight_layout()
    label_bubbles(ax, labels)
    return fig
