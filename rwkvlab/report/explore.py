"""Exploring the ablations side by side (notebook ``07_explore_ablations``).

Reads what the ``ablate@<variant>`` stages left behind (history, per-case scores, test predictions,
checkpoints) and draws the variants together: validation curves on one axis, per-case DSC distributions, the
same test cases as each variant predicts them, each variant's effective receptive field, and DSC against
MACs. :func:`try_setting` trains a new setting (model keyword arguments on ``ablate.model``) with the
ablation recipe, so that it joins every comparison; its checkpoints and outputs go to one folder,
``data/adhoc/explore/<name>`` (:func:`rwkvlab.paths.adhoc_dir`: outside every stage, not versioned), and a rerun
resumes or reuses it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from rwkvlab import paths
from rwkvlab.complexity import model_complexity
from rwkvlab.config import Params
from rwkvlab.data import Prepared
from rwkvlab.engine import runs
from rwkvlab.engine.evaluate import read_evaluation
from rwkvlab.progress import Progress
from rwkvlab.report.ablations import draw_bubbles, label_bubbles
from rwkvlab.report.erf import erf_figure, erf_map, load_images, probe_model
from rwkvlab.report.figures import case_view, draw_outlines, label_points, new_figure

__all__ = ["Trained", "load_variants", "try_setting", "summary_table", "paper_tables", "curves_figure",
           "per_case_figure", "predictions_figure", "variant_erfs", "erf_grid", "dsc_vs_macs", "paper_agreement"]


@dataclass(frozen=True)
class Trained:
    """One trained and tested variant.

    Args:
        name: the variant (``ablate.variants`` key) or the tried setting's name.
        run: its run (model, keyword arguments, recipe, where its files are).
        history: one row per epoch (``val_dsc``, ``train_loss``, ...).
        metrics: test summary (``dsc``, ``hd95``, per class).
        per_case: test scores per case and class.
        predictions: test predictions by case id.
        params_m, macs_g: parameters (M) and MACs (G) at the training size.
        source: ``"ablate"`` (a pipeline stage) or ``"tried"`` (:func:`try_setting`).
    """

    name: str
    run: runs.Run
    history: pd.DataFrame
    metrics: dict[str, float]
    per_case: pd.DataFrame
    predictions: dict[str, np.ndarray]
    params_m: float
    macs_g: float
    source: str


def _complexity(run: runs.Run, data: Prepared) -> tuple[float, float]:
    c = model_complexity(run.model, data.item_size, data.num_classes, data.in_chans, **run.model_kwargs)
    return c.params / 1e6, c.macs_g


def _read(name: str, run: runs.Run, data: Prepared, source: str) -> Trained:
    metrics, per_case, predictions = read_evaluation(run.evaluation)
    return Trained(name, run, pd.read_csv(run.history), metrics, per_case, predictions, *_complexity(run, data),
                   source)


def load_variants(p: Params, names: Sequence[str] | None = None) -> dict[str, Trained]:
    """The trained ablation variants ``names`` (default ``ablate.trained``), read from their stage outputs.

    Raises:
        ValueError: a name that is not a variant of ``ablate.variants``.
        FileNotFoundError: a variant whose stage has not run (the message names ``dvc repro ablate@<variant>``).
    """
    names = list(p.ablate.trained if names is None else names)
    out: dict[str, Trained] = {}
    for name in names:
        run = runs.resolve(p, runs.Variant(name))  # raises on an unknown variant
        if not (run.evaluation / "metrics.json").is_file():
            raise FileNotFoundError(f"{run.evaluation / 'metrics.json'}: variant {name!r} is not trained and tested; "
                                    f"run `dvc repro ablate@{name}` (or add it to ablate.trained)")
        out[name] = _read(name, run, runs.load_data(p, run), "ablate")
    return out


def _setting_name(kwargs: Mapping[str, Any]) -> str:
    text = "-".join(f"{k}={v}" for k, v in sorted(kwargs.items())) or "default"
    return re.sub(r"[^A-Za-z0-9=._-]+", "_", text)


def try_setting(p: Params, model_kwargs: Mapping[str, Any], device: torch.device | str = "cpu",
                name: str | None = None, epochs: int | None = None,
                recipe_fields: Mapping[str, Any] | None = None, protocol: str = "scratch-100") -> Trained:
    """Train and test a new setting of ``ablate.model`` under an ablation protocol (``ablate.protocols``: its recipe,
    and the pretrained encoder where it is a pretrained one) on the ablation's dataset and split, as an
    ``ablate@<variant>`` stage would.

    A finished setting is read back instead of trained again, and an interrupted one resumes (its checkpoint
    records the configuration, so a changed setting starts afresh under its own name).

    Args:
        model_kwargs: keyword arguments of the model, e.g. ``{"mixer": "focused_linear", "decoder_kernel": 5}``.
        name: folder name; default derived from ``model_kwargs``.
        epochs: a shorter (or longer) budget than the recipe's; ``None`` keeps it, which compares the setting
            with the stage-trained variants at the same budget.
        recipe_fields: other recipe fields to change (``lr``, ``batch_size``, ...).
        protocol: one of ``ablate.protocols`` (``scratch-100``: Table 2's, which the demo variants compared here
            mostly use).

    Raises:
        ValueError: an unknown model keyword or recipe field.
    """
    model_kwargs = dict(model_kwargs)
    name = name or _setting_name(model_kwargs) + ("" if protocol == "scratch-100" else f"-{protocol}")
    fields = dict(recipe_fields or {}) | ({} if epochs is None else {"epochs": int(epochs)})
    run = runs.resolve(p, runs.Setting(name, model_kwargs, protocol, fields))
    data = runs.load_data(p, run)
    try:
        _complexity(run, data)  # builds the model: a bad keyword fails here, before any training
    except TypeError as e:
        raise ValueError(f"try_setting: {run.model} does not take {model_kwargs}: {e}") from e
    setting = {"model": run.model, "model_kwargs": model_kwargs, "recipe": dataclasses.asdict(run.recipe)}
    out = run.evaluation
    setting_file = out / "setting.json"
    done = (out / "metrics.json").is_file() and setting_file.is_file() and \
        json.loads(setting_file.read_text()) == json.loads(json.dumps(setting))
    if not done:
        device = torch.device(device)
        runs.train(p, run, device, data)
        runs.evaluate(p, run, device, data)
        setting_file.write_text(json.dumps(setting, indent=2) + "\n")
    return _read(name, run, data, "tried")


def summary_table(variants: Mapping[str, Trained]) -> pd.DataFrame:
    """One row per variant: its settings, test DSC and HD95, best validation DSC, parameters and MACs."""
    return pd.DataFrame([{
        "variant": name, "source": t.source, "model_kwargs": t.run.model_kwargs or "{}",
        "epochs": len(t.history), "dsc": round(t.metrics["dsc"], 2), "hd95": round(t.metrics["hd95"], 2),
        "best_val_dsc": round(float(t.history["val_dsc"].max()), 2), "params_m": round(t.params_m, 3),
        "macs_g": round(t.macs_g, 3)} for name, t in variants.items()])


def paper_tables(p: Params, variants: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The ablation tables written by the ``ablation_tables`` stage (ours beside the paper's), each cut to the
    rows of ``variants`` where it has any, else whole."""
    out = {}
    for csv in sorted(paths.ablations_dir(p).glob("table*.csv"), key=lambda f: int(f.stem[5:])):
        table = pd.read_csv(csv)
        mine = table[table["variant"].isin(variants)] if "variant" in table else table
        out[csv.stem] = mine if len(mine) else table
    return out


def curves_figure(variants: Mapping[str, Trained]) -> Figure:
    """Validation DSC and training loss per epoch, every variant on one axis each."""
    fig, (ax_dsc, ax_loss) = new_figure(1, 2, (11, 3.6))
    for name, t in variants.items():
        style = "--" if t.source == "tried" else "-"
        ax_dsc.plot(t.history["epoch"], t.history["val_dsc"], style, marker=".", label=name)
        ax_loss.plot(t.history["epoch"], t.history["train_loss"], style, marker=".", label=name)
    ax_dsc.set(xlabel="epoch", ylabel="validation DSC (%)", title="validation DSC")
    ax_loss.set(xlabel="epoch", ylabel="train loss (CE + Dice)", title="training loss")
    for ax in (ax_dsc, ax_loss):
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def per_case_figure(variants: Mapping[str, Trained]) -> Figure:
    """Per-case test DSC (mean over foreground classes) of every variant: box plot with each case as a dot."""
    frame = pd.concat([t.per_case.groupby("case", sort=False)["dsc"].mean().mul(100).rename("dsc").reset_index()
                       .assign(variant=name) for name, t in variants.items()], ignore_index=True)
    order = frame.groupby("variant")["dsc"].median().sort_values(ascending=False).index.tolist()
    fig, ax = new_figure(figsize=(1.2 * len(order) + 2, 3.8))
    sns.boxplot(frame, x="variant", y="dsc", order=order, ax=ax, color="0.85", fliersize=0)
    sns.stripplot(frame, x="variant", y="dsc", order=order, ax=ax, size=4, alpha=0.7, jitter=0.2)
    ax.set(xlabel="", ylabel="test DSC per case (%)", title="per-case test DSC (sorted by median)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def predictions_figure(variants: Mapping[str, Trained], data: Prepared, cases: int | Sequence[str] = 3) -> Figure:
    """The same test cases as each variant predicts them: one row per case, the image with the ground truth
    first, then each variant's prediction (red) over the ground truth (green) with its DSC.

    Args:
        cases: how many test cases (the first ones of the split), or their ids.
    """
    first = next(iter(variants.values()))
    ids = list(first.predictions)[:cases] if isinstance(cases, int) else list(cases)
    missing = [(c, n) for c in ids for n, t in variants.items() if c not in t.predictions]
    if missing:
        raise ValueError(f"predictions_figure: case {missing[0][0]!r} has no prediction from {missing[0][1]!r}; "
                         f"the variants must share the test split")
    cols = 1 + len(variants)
    fig, axes = new_figure(len(ids), cols, (2.3 * cols, 2.1 * len(ids) + 0.4), squeeze=False)
    for row, cid in enumerate(ids):
        views = [case_view(data, cid, t.predictions[cid]) for t in variants.values()]
        image, gt, _, label = views[0]
        grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if image.ndim == 2 else {}
        for col, (title, pred) in enumerate([(f"{label}\nground truth", None)] +
                                            [(n, v[2]) for n, v in zip(variants, views)]):
            ax = axes[row, col]
            ax.imshow(image, **grey)
            ax.axis("off")
            for labels, color in [(gt, "lime")] + ([] if pred is None else [(pred, "red")]):
                draw_outlines(ax, labels, color, data.num_classes)
            if pred is not None:
                scores = variants[title].per_case
                title = f"{title}\nDSC {100 * scores.loc[scores['case'] == cid, 'dsc'].mean():.1f}"
            ax.set_title(title, fontsize=7)
    fig.suptitle("the same test cases: ground truth (green), each variant's prediction (red)", fontsize=9)
    fig.tight_layout()
    return fig


def variant_erfs(p: Params, variants: Mapping[str, Trained], device: torch.device | str = "cpu",
                 images: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Each variant's effective receptive field after training (its last checkpoint), probed as the ``erf``
    stage probes (``erf.images``, ``erf.size``, ``erf.n``, ``erf.stage``; paper Fig. 3)."""
    if images is None:
        images = load_images(p.erf.images, p.erf.size, p.erf.n)
    maps = {}
    for name, t in Progress(variants.items(), total=len(variants), desc="erf maps", unit="variant"):
        model, _ = probe_model(t.run.model, t.run.model_kwargs, t.run.checkpoints / f"{p.erf.checkpoint}.pt",
                               seed=p.erf.seed, device=device)
        maps[name] = erf_map(model, images.to(device), p.erf.stage)
    return maps


def erf_grid(maps: Mapping[str, np.ndarray]) -> Figure:
    """The maps of :func:`variant_erfs` as one row of Fig. 3."""
    return erf_figure({"after training": maps})


def dsc_vs_macs(variants: Mapping[str, Trained], title: str) -> Figure:
    """Test DSC against MACs, bubble area by parameters, one labelled bubble per variant (tried settings in red)."""
    fig, ax = new_figure(figsize=(7.5, 4.6))
    labels = []
    for source, color, legend in (("ablate", "tab:blue", "ablation stages"), ("tried", "tab:red", "tried here")):
        chosen = [(t.macs_g, t.metrics["dsc"], t.params_m, n) for n, t in variants.items() if t.source == source]
        if chosen:
            labels += draw_bubbles(ax, chosen, color=color, label=legend)
    ax.set(xlabel="MACs (G, at the training size)", ylabel="test DSC (%)", title=f"{title}: DSC vs MACs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, markerscale=0.5, loc="lower right")
    fig.tight_layout()
    label_bubbles(ax, labels)
    return fig


def paper_agreement(tables: Mapping[str, pd.DataFrame], title: str) -> Figure:
    """Our test DSC against the paper's for every row of the ablation tables that has both, one labelled point per
    row, with Spearman's rank correlation: does the demo rank the variants as the paper does?"""
    rows = pd.concat([t.assign(table=name) for name, t in tables.items()], ignore_index=True)
    both = rows.dropna(subset=["dsc", "paper_dsc"]).drop_duplicates(subset=["variant", "table"])
    fig, ax = new_figure(figsize=(6.5, 4.6))
    ax.scatter(both["paper_dsc"], both["dsc"], s=40, alpha=0.6)
    rho = both["paper_dsc"].corr(both["dsc"], method="spearman") if len(both) > 2 else float("nan")
    ax.set(xlabel="paper DSC (%, Synapse)", ylabel="our test DSC (%)",
           title=f"{title}: ours vs the paper, {len(both)} rows, Spearman rho = {rho:.2f}")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    label_points(ax, [(x, y, f"{v} (T{t[5:]})") for x, y, v, t in
                      zip(both["paper_dsc"], both["dsc"], both["variant"], both["table"])])
    return fig
