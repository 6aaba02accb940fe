"""The ablation tables of the paper (Tables 2, 6-13) with our numbers beside the published ones, and Fig. 4.

Each variant of ``params.ablate.variants`` names its table and its row there; this module finds the row in
the paper's CSV (``rwkvlab/report/paper/``), lays out one table per paper table (our DSC, HD95, parameters and
MACs beside the paper's) and draws the DSC-vs-MACs bubble chart. Complexity comes for every variant, trained or
not; accuracy for the trained ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rwkvlab.complexity import Row, paper_rows
from rwkvlab.report.figures import label_points, new_figure
from rwkvlab.report.tables import paper_table, write_table

__all__ = ["PaperTable", "PAPER_TABLES", "PROTOCOL_MARK", "TABLE_NOTES", "paper_row", "variant_rows", "ablation_setting", "ablation_tables",
           "write_ablation_tables", "draw_bubbles", "label_bubbles", "bubble_chart"]


@dataclass(frozen=True)
class PaperTable:
    """Where a paper table lives and which of its columns are keys, DSC, HD95 and FLOPs."""

    csv: str | None
    title: str
    keys: int = 1
    dsc: str = "dsc"
    hd95: str | None = "hd95"
    flops: str | None = "flops_g"
    other_datasets: tuple[tuple[str, str], ...] = ()  # (dataset, its DSC column): a second benchmark's column


PAPER_TABLES = {
    "2": PaperTable("ablation_attention", "Table 2: token mixer of the GLSP blocks"),
    "6": PaperTable("encoder_comparison", "Table 6: other encoders, same decoder and CCM"),
    "7": PaperTable("ablation_pretraining", "Table 7: encoder pretraining", keys=2, flops=None),
    "8": PaperTable("ablation_decoder_kernel", "Table 8: decoder depthwise kernel", dsc="synapse_dsc",
                    hd95="synapse_hd95", other_datasets=(("acdc", "acdc_dsc"),)),
    "9": PaperTable("ablation_shallow_attention", "Table 9: spatial mix also in stages 1-2 (RWKV-UNet-S)"),
    "10": PaperTable("ablation_channel_mix", "Table 10: Channel Mix after the spatial mix in GLSP"),
    "11": PaperTable("ablation_skips_ccm", "Table 11: skip connections x CCM", keys=2),
    "12": PaperTable(None, "Table 12: CCM hidden rate (no numbers printed)"),
    "13": PaperTable("synapse_512", "Table 13: 512x512 input", hd95=None, flops="flops"),
    "14": PaperTable(None, "Table 14 (beyond the paper): WKV initialisation x norm placement"),
}


# Short marks of the protocols in the bubble chart's labels.
PROTOCOL_MARK = {"scratch-100": "S100", "scratch-30": "S30", "pretrained-30": "P30"}

# Why some rows cannot match the paper's FLOPs; the numbers are in each table's rel_diff column.
TABLE_NOTES = {
    "complexity": (
        "MACs as the paper counts them (docs §11, `rwkvlab/complexity/`): conv and linear weights x output "
        "positions, BatchNorm 4 per element, bilinear nn.Upsample 11 per output element, softmax-attention products "
        "at 2 per MAC; LayerNorms, functional interpolation, the Bi-WKV recurrence, selective scans (and the x/dt "
        "projections feeding them) and linear-attention products are not part of the figure: wkv_macs_g reports "
        "them apart. rel_diff = ours / paper - 1. See the notes of tables 6 and 11 for the rows that do not match."),
    "6": (
        "Encoders from timm (features_only, no weights): their four deepest levels are stages 1-4 and the RWKV-UNet "
        "decoder and CCM take their widths from feature_info. No rule of the encoders' channels reproduces the "
        "paper's FLOPs within 3%: ConvNeXt-S and MaxViT-S give the decoder identical channels (96-768 at 1/4-1/32), "
        "yet the paper's figures exceed what the encoders cost by about 33G and 6G. Rows enc_*: CCM at the "
        "shallowest width (as in RWKV-UNet); rows enc_*_ccm_own: the closest rule we found, CCM mixing each stage "
        "at its own width (ccm_width: own), counted only. Their rel_diff columns are the residuals. The accuracy "
        "columns are the paper's only (the timm encoders cannot be trained from ImageNet weights here)."),
    "11": (
        "CCM mixes all three encoder stages whatever the number of skips kept (ccm_over: all), which is what the "
        "paper's FLOPs imply (1 skip + CCM 10.96G, 2 skips + CCM 11.04G, against 9.33G and 9.41G without): each "
        "kept skip carries the context of the dropped stages. skips1_ccm_kept and skips2_ccm_kept mix only the "
        "kept skips (ccm_over: kept; with one skip there is then no cross-scale fusion at all); the paper has no "
        "such rows. Every row of the paper is within 1.1% of its FLOPs."),
    "12": "The paper prints no numbers for Table 12: rate 2 is best, 1 clearly worse, 3 and 4 give no gain.",
    "14": ("Not in the paper (docs §17). wkv_init: release = decay = first = 0 and mu = 0.5 (the authors' release: "
           "every spatial mix is a position-blind global pooling at init), vrwkv = Vision-RWKV's graded decay, first "
           "and token-shift ratios. norm: post = x + LN(mix(x)) (the release), pre = x + mix(LN(x)) (the paper's "
           "equations). Each setting from scratch (scratch-100) and from the pretrained encoder (pretrained-30, "
           "whose weights replace the initial decay/first/mu). One split seed per row in this study (its time "
           "budget); over the three splits (docs §17: python -m rwkvlab.train --variant <row> --seed 0 1 2) the "
           "demo's spread across splits is larger than the gaps between these rows."),
    "7": ("Demo form of Table 7: pre_digits starts from the encoder pretrained by the pretrain stage on MNIST "
          "digits (not ImageNet-1K); pre_none from scratch, same epochs."),
}


def _number(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().rstrip("G")
    try:
        return float(text)
    except ValueError:
        return None


def paper_row(table: str, row: str, dataset: str | None = None) -> dict[str, float | None]:
    """The paper's DSC, HD95 and FLOPs of ``row`` in ``table`` (keys joined by commas, e.g. ``"1,with"``); for a
    ``dataset`` of the table's second benchmark (Table 8: ``acdc``), that benchmark's DSC and no HD95.

    Raises:
        ValueError: an unknown table or a row the table does not have (the message lists its rows).
    """
    if table not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {table!r}; known: {', '.join(PAPER_TABLES)}")
    spec = PAPER_TABLES[table]
    if spec.csv is None or not row:
        return {"dsc": None, "hd95": None, "flops_g": None}
    df = paper_table(spec.csv)
    keys = df.iloc[:, : spec.keys].astype(str).agg(",".join, axis=1)
    match = df[keys == row]
    if match.empty:
        raise ValueError(f"paper table {table} ({spec.csv}.csv) has no row {row!r}; rows: {', '.join(keys)}")
    found = match.iloc[0]
    other = dict(spec.other_datasets).get(dataset)
    return {"dsc": _number(found[other or spec.dsc]), "hd95": _number(found[spec.hd95]) if spec.hd95 and not other
            else None, "flops_g": _number(found[spec.flops]) if spec.flops else None}


def ablation_tables(ablate: Any, complexity: pd.DataFrame,
                    metrics: Mapping[str, Mapping[str, float]]) -> dict[str, pd.DataFrame]:
    """One table per paper table: each of its variants with its protocol and dataset, our DSC/HD95 (if trained),
    parameters and MACs, beside the paper's DSC, HD95 and FLOPs.

    Args:
        ablate: the ``ablate`` section (:class:`rwkvlab.config.Ablate`): variants, protocols, datasets.
        complexity: :func:`rwkvlab.complexity.complexity_table` over (at least) these variants.
        metrics: trained variant -> the summary of its evaluation (``dsc``, ``hd95``).
    """
    counted = complexity.set_index("variant")
    tables: dict[str, list[dict]] = {}
    for name, v in ablate.variants.items():
        paper = paper_row(v.table, v.row, v.dataset)
        c = counted.loc[name] if name in counted.index else None
        m = metrics.get(name, {})
        tables.setdefault(v.table, []).append({
            "variant": name, "paper_row": v.row or "-", "protocol": ablate.protocol_of(name),
            "dataset": ablate.dataset_of(name),
            "dsc": round(m["dsc"], 2) if "dsc" in m else None, "hd95": round(m["hd95"], 2) if "hd95" in m else None,
            "paper_dsc": paper["dsc"], "paper_hd95": paper["hd95"],
            "params_m": None if c is None else c["params_m"], "macs_g": None if c is None else c["macs_g"],
            "paper_flops_g": paper["flops_g"],
            "rel_diff_%": None if c is None or paper["flops_g"] is None else round(100 * (c["macs_g"] / paper["flops_g"] - 1), 2),
        })
    return {t: pd.DataFrame(rows) for t, rows in sorted(tables.items(), key=lambda kv: int(kv[0]))}


def ablation_setting(ablate: Any) -> str:
    """The line under every ablation table that says what ours are: base model, dataset, the protocols and their
    recipes, the trained variants, the variants that share a run (:meth:`rwkvlab.config.Ablate.trained_as`) and
    those trained on their own dataset."""
    shared = ", ".join(f"{v} = {t}" for v in ablate.variants if (t := ablate.trained_as(v)) not in (None, v))
    own = ", ".join(f"{v} on {ablate.dataset_of(v)}" for v in ablate.trained if ablate.dataset_of(v) != ablate.dataset)
    protocols = "; ".join(f"{name}: recipe {p.recipe}{', from the pretrained encoder' if p.pretrained else ''}"
                          for name, p in ablate.protocols.items())
    return (f"Ours: {ablate.model or 'each variant on its paper base model'} trained on {ablate.dataset} under the "
            f"protocol of its row ({protocols}) (trained: {', '.join(ablate.trained)}"
            f"{'; the same run: ' + shared if shared else ''}{'; on their own dataset: ' + own if own else ''}); "
            f"paper: RWKV-UNet-B on Synapse, protocols as rwkvlab/report/paper/README.md lists them.")


def write_ablation_tables(tables: Mapping[str, pd.DataFrame], out_dir: Path, notes: Mapping[str, str],
                          setting: str) -> None:
    """Write ``out_dir/table<N>.{md,csv}`` for each table, titled as the paper's, with ``notes`` per table."""
    for table, df in tables.items():
        note = (f"{setting}\n\nOurs: DSC in %, HD95 in pixels; params in M and MACs in G counted by "
                f"`python -m rwkvlab.complexity` at the paper's input size and classes. Paper columns as published. "
                + notes.get(table, ""))
        write_table(df, Path(out_dir) / f"table{table}", PAPER_TABLES[table].title, notes=note)


def draw_bubbles(ax: Axes, points: Iterable[tuple[float, float, float | None, str]], marker: str = "o",
                 color: str | None = None, label: str | None = None) -> list[tuple[float, float, str, float]]:
    """One bubble per ``(x, y, params_m, text)`` on ``ax``, its area 30 + 25 x parameters (M) in points^2 so
    that size reads as model size; an unknown count (None, NaN) draws the 1M size.

    Args:
        color: one colour for all the bubbles; ``None`` gives each the next colour of the axes' cycle.
        label: the legend entry of the group (put on its first bubble).

    Returns:
        ``(x, y, text, size)`` per bubble, for :func:`rwkvlab.report.figures.label_points` once the layout is final.
    """
    labels = []
    for i, (x, y, params_m, text) in enumerate(points):
        size = 30 + 25 * (float(params_m) if pd.notna(params_m) and params_m else 1.0)
        ax.scatter(x, y, s=size, alpha=0.5, marker=marker, color=color, label=label if i == 0 else None)
        labels.append((x, y, text, size))
    return labels


def label_bubbles(ax: Axes, labels: Sequence[tuple[float, float, str, float]]) -> None:
    """Label what :func:`draw_bubbles` drew, without overlaps (after the figure's layout is final)."""
    label_points(ax, [(x, y, t) for x, y, t, _ in labels], marker_sizes=[s for *_, s in labels])


def bubble_chart(tables: Mapping[str, pd.DataFrame], title: str) -> Figure:
    """DSC against MACs, bubble area by parameters, like the paper's Fig. 4: ours (trained variants) and the
    paper's rows side by side."""
    rows = pd.concat([df.assign(table=t) for t, df in tables.items()], ignore_index=True)
    fig, (ax_ours, ax_paper) = new_figure(1, 2, (11, 4.2))
    labels = {}
    for ax, dsc, flops, label in ((ax_ours, "dsc", "macs_g", "ours (demo)"),
                                  (ax_paper, "paper_dsc", "paper_flops_g", "paper (Synapse)")):
        shown = rows.dropna(subset=[dsc, flops])
        shown = shown[shown[dsc].map(lambda x: x is not None)]
        labels[ax] = draw_bubbles(ax, [(float(r[flops]), float(r[dsc]), r["params_m"],
                                        f"{r['variant']} [{PROTOCOL_MARK.get(r.get('protocol'), '?')}]")
                                       for _, r in shown.iterrows()])
        ax.set(xlabel="MACs (G)" if flops == "macs_g" else "FLOPs (G, as published)", ylabel="DSC (%)", title=label)
        ax.grid(alpha=0.3)
    marks = ", ".join(f"[{m}] {p}" for p, m in PROTOCOL_MARK.items())
    fig.suptitle(f"{title}: DSC vs complexity (bubble area ~ parameters; protocol {marks})", fontsize=10)
    fig.tight_layout()
    for ax, drawn in labels.items():
        label_bubbles(ax, drawn)
    return fig


def variant_rows(variants: dict[str, Any], names: Iterable[str] | None = None) -> list[Row]:
    """The rows to count: the registered models, then the ablation variants (``params.ablate.variants``).

    Args:
        variants: name -> :class:`rwkvlab.config.Variant`.
        names: only these (model or variant names); ``None`` for all.
    """
    rows = paper_rows()
    for name, v in variants.items():
        flops = paper_row(v.table, v.row).get("flops_g") if v.row else None
        rows.append(Row(name, v.model, dict(v.kwargs), v.size, v.num_classes, flops))
    if names is not None:
        wanted = list(names)
        known = {r.variant for r in rows}
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(sorted(known))}")
        rows = [r for r in rows if r.variant in wanted]
    return rows
