"""Training runs as the pipeline defines them, from ``params.yaml`` alone.

A :class:`Run` is everything one training needs: dataset, model name and keyword arguments, recipe, the
encoder to start from, and where checkpoints, history and evaluation go. The train stage
(``train@<dataset>-<model>``), the ablation stage (``ablate@<variant>``), the notebooks and the command line
all build their run here, so the same settings always give the same run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rwkvlab import paths
from rwkvlab.config import Params, Recipe
from rwkvlab.data import Prepared, load_prepared
from rwkvlab.engine.evaluate import evaluate_split, write_evaluation
from rwkvlab.engine.inference import load_trained
from rwkvlab.engine.train import fit

logger = logging.getLogger(__name__)

__all__ = ["Run", "train_run", "ablation_run", "resolve_init", "train", "evaluate"]


@dataclass(frozen=True)
class Run:
    """One training run.

    Args:
        name: for messages, e.g. ``demo/rwkv_unet_t`` or ``ablate/attn_mhsa``.
        dataset: the prepared dataset it trains and is evaluated on.
        model: a registered model name.
        model_kwargs: its keyword arguments besides channels and classes.
        recipe: the training recipe.
        init: the ``encoder.pt`` to start the encoder from, or ``None``.
        checkpoints: folder of ``last.pt`` / ``best.pt``.
        history: the ``history.csv`` written during training.
        evaluation: folder of ``metrics.json``, ``per_case.csv`` and ``predictions.npz``.
    """

    name: str
    dataset: str
    model: str
    model_kwargs: dict[str, Any]
    recipe: Recipe
    init: Path | None
    checkpoints: Path
    history: Path
    evaluation: Path


def resolve_init(p: Params, init: str | None) -> Path | None:
    """The file a recipe's ``init`` names: ``pretrain/<encoder model>`` is the pretrain stage's ``encoder.pt``."""
    if init is None:
        return None
    kind, _, model = init.partition("/")
    if kind != "pretrain" or not model:
        raise ValueError(f"params.yaml: recipe field init must be 'pretrain/<encoder model>' (e.g. pretrain/rwkv_enc_t) "
                         f"or null; got {init!r}")
    return p.base.checkpoints_dir / "pretrain" / model / "encoder.pt"


def _with_recipe_fields(recipe: Recipe, fields: dict[str, Any], where: str) -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"params.yaml: {where} has unknown recipe field(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(recipe, **fields)


def train_run(p: Params, dataset: str, model: str, variant: str | None = None) -> Run:
    """The run of the train stage ``train@<dataset>-<model>``; ``variant`` applies an ablation variant's model
    settings and recipe fields to it (``<model>-<variant>`` in the output paths)."""
    recipe, kwargs, tag = p.train.recipe(dataset), {}, model
    if variant is not None:
        v = p.ablate.variant(variant)
        kwargs, tag = dict(v.kwargs), f"{model}-{variant}"
        recipe = _with_recipe_fields(recipe, v.recipe, f"ablate.variants.{variant}.recipe")
    return Run(name=f"{dataset}/{tag}", dataset=dataset, model=model, model_kwargs=kwargs, recipe=recipe,
               init=resolve_init(p, recipe.init), checkpoints=paths.run_dir(p, dataset, tag),
               history=paths.train_dir(p, dataset, tag) / "history.csv", evaluation=paths.eval_dir(p, dataset, tag))


def ablation_run(p: Params, variant: str) -> Run:
    """The run of the ablation stage ``ablate@<variant>``: the variant's settings on ``ablate.model`` (or its own
    base model), trained on ``ablate.dataset`` with ``train.recipes.<ablate.recipe>`` plus its recipe fields."""
    v = p.ablate.variant(variant)
    recipe = _with_recipe_fields(p.train.recipe(p.ablate.recipe), v.recipe, f"ablate.variants.{variant}.recipe")
    out = paths.ablation_dir(p, variant)
    return Run(name=f"ablate/{variant}", dataset=p.ablate.dataset, model=p.ablate.base_model(variant),
               model_kwargs=dict(v.kwargs), recipe=recipe, init=resolve_init(p, recipe.init),
               checkpoints=paths.ablation_run_dir(p, variant), history=out / "history.csv", evaluation=out)


def load_data(p: Params, run: Run) -> Prepared:
    """The prepared dataset of ``run`` with the training split seed applied."""
    return load_prepared(paths.cache(p, run.dataset), paths.split_file(p, run.dataset, p.train.split_seed))


def train(p: Params, run: Run, device: torch.device, data: Prepared | None = None) -> pd.DataFrame:
    """Train (or resume) ``run``; returns its history. See :func:`rwkvlab.engine.train.fit`."""
    if run.init is not None and not run.init.is_file():
        raise FileNotFoundError(f"{run.init}: no pretrained encoder for {run.name} (recipe init); run the pretrain "
                                f"stage first (dvc repro pretrain)")
    data = load_data(p, run) if data is None else data
    logger.info("%s: %s(%s) on %s", run.name, run.model, run.model_kwargs, run.dataset)
    return fit(run.model, data, run.recipe, run.checkpoints, seed=p.base.seed, device=device,
               model_kwargs=run.model_kwargs, init=run.init, num_workers=p.train.num_workers,
               history_csv=run.history)


def evaluate(p: Params, run: Run, device: torch.device,
             data: Prepared | None = None) -> tuple[dict[str, float], pd.DataFrame, dict[str, np.ndarray]]:
    """Score the test split with the checkpoint the recipe names and write ``run.evaluation``.

    Returns:
        (summary, per-case table, predictions by case id).
    """
    data = load_data(p, run) if data is None else data
    model, state = load_trained(run.checkpoints, run.recipe.test_checkpoint, device)
    logger.info("%s: %s checkpoint of epoch %d", run.name, run.recipe.test_checkpoint, state["epoch"] + 1)
    per_case, preds = evaluate_split(model, data, "test", p.evaluate.batch_size, device)
    return write_evaluation(run.evaluation, per_case, preds), per_case, preds
