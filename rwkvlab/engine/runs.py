"""Training runs as the pipeline defines them, from ``params.yaml`` alone.

A :class:`Run` is everything one training needs: dataset and split seed, model name and keyword arguments,
recipe, the encoder to start from, and where checkpoints, history and evaluation go. The train and evaluate
stages (``train@<name>``, one training per split seed of ``train.runs.<name>``), the ablation stage
(``ablate@<variant>``), the notebooks and the command line all build their run here, so the same settings
always give the same run. :func:`summarize_seeds` turns a configured run's per-seed test metrics into the
mean and sample std that the paper reports for its split-based sets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from rwkvlab import paths
from rwkvlab.config import Params, Recipe, TrainRun
from rwkvlab.io import atomic_write
from rwkvlab.data import Prepared, load_prepared
from rwkvlab.engine.evaluate import evaluate_split, write_evaluation
from rwkvlab.engine.inference import SlidingWindow, load_trained, spatial_dims
from rwkvlab.models import create_model, model_card

logger = logging.getLogger(__name__)

__all__ = ["Run", "is_volumetric", "configured_run", "train_run", "ablation_run", "pretrained_encoder", "resolve_init", "load_data",
           "under", "describe", "train", "evaluate", "summarize_seeds", "summarize", "read_summary"]


@dataclass(frozen=True)
class Run:
    """One training run.

    Args:
        name: for messages, e.g. ``demo-rwkv_unet_t/seed0`` or ``ablate/attn_mhsa``.
        dataset: the prepared dataset it trains and is evaluated on.
        split_seed: the split of ``dataset`` (``data/splits/<dataset>/seed<k>.json``).
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
    split_seed: int
    model: str
    model_kwargs: dict[str, Any]
    recipe: Recipe
    init: Path | None
    checkpoints: Path
    history: Path
    evaluation: Path


def under(run: Run, root: Path) -> Run:
    """``run`` written under ``root/<name>/seed<k>/`` (checkpoints, ``history.csv``, ``evaluation/``) instead of the
    study's folders: how the command line trains, so that an ad-hoc run never touches what a stage owns."""
    folder = root / run.name
    return dataclasses.replace(run, checkpoints=folder, history=folder / "history.csv",
                               evaluation=folder / "evaluation")


def is_volumetric(run: Run) -> bool:
    """Whether ``run`` trains a volumetric model (docs §20): its recipe samples patches (``patch_size``), which only
    a 3D model accepts."""
    return run.recipe.patch_size is not None


def resolve_init(p: Params, init: str | None) -> Path | None:
    """The file an ``init`` names: ``pretrain/<encoder model>`` is the ``encoder.pt`` of stage ``pretrain@<model>``;
    a ``.pt`` path is that file, relative to the params file (the forms are checked when params.yaml is loaded)."""
    if init is None:
        return None
    kind, _, model = init.partition("/")
    if kind == "pretrain":
        return p.base.checkpoints_dir / "pretrain" / model / "encoder.pt"
    path = Path(init)
    return path if path.is_absolute() else (p.file.parent if p.file else Path.cwd()) / path


def _with_recipe_fields(recipe: Recipe, fields: dict[str, Any], where: str) -> Recipe:
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"params.yaml: {where} has unknown recipe field(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(recipe, **fields)


def _seeded_run(p: Params, name: str, seed: int, dataset: str, model: str, kwargs: dict[str, Any],
                recipe: Recipe) -> Run:
    return Run(name=f"{name}/seed{seed}", dataset=dataset, split_seed=seed, model=model, model_kwargs=kwargs,
               recipe=recipe, init=resolve_init(p, recipe.init), checkpoints=paths.run_dir(p, name, seed),
               history=paths.train_dir(p, name, seed) / "history.csv", evaluation=paths.eval_dir(p, name, seed))


def configured_run(p: Params, name: str, seed: int) -> Run:
    """The run ``train.runs.<name>`` on split ``seed`` (one of its ``seeds``): the stages ``train@<name>`` and
    ``evaluate@<name>``."""
    configured = p.train.run(name)
    if seed not in configured.seeds:
        raise ValueError(f"params.yaml: train.runs.{name} trains on split seeds {list(configured.seeds)}, "
                         f"not on seed {seed}")
    return _seeded_run(p, name, seed, configured.dataset, configured.model, dict(configured.kwargs),
                       _configured_recipe(p, configured))


def _configured_recipe(p: Params, run: TrainRun) -> Recipe:
    """The recipe of a configured run, with the run's own ``init`` in place of the recipe's where it has one."""
    recipe = p.train.recipe(run.recipe)
    return recipe if run.init is None else dataclasses.replace(recipe, init=run.init)


def train_run(p: Params, dataset: str, model: str, variant: str | None = None, seed: int = 0,
              recipe: str | None = None) -> Run:
    """An ad-hoc run (the command line's ``--dataset/--model``), named ``<dataset>-<model>[-<variant>]``.

    Args:
        recipe: a recipe of ``train.recipes``; default the one named after ``dataset``.
        variant: an ablation variant whose model settings and recipe fields are applied.
        seed: the split seed, one of ``prepare.split_seeds``.

    Raises:
        ValueError: an unknown recipe, variant or seed, or a name that ``train.runs`` configures with other
            settings (the two would share, and overwrite, one checkpoint folder).
    """
    recipe = dataset if recipe is None else recipe
    run_recipe, kwargs, name = p.train.recipe(recipe), {}, f"{dataset}-{model}"
    if variant is not None:
        v = p.ablate.variant(variant)
        kwargs, name = dict(v.kwargs), f"{name}-{variant}"
        run_recipe = _with_recipe_fields(run_recipe, v.recipe, f"ablate.variants.{variant}.recipe")
        if p.ablate.protocols[p.ablate.protocol_of(variant)].pretrained and run_recipe.init is None:
            run_recipe = dataclasses.replace(run_recipe, init=pretrained_encoder(p, model, v.kwargs, variant))
    if seed not in p.prepare.split_seeds:
        raise ValueError(f"split seed {seed} is not one of prepare.split_seeds {list(p.prepare.split_seeds)}")
    if name in p.train.runs:
        c = p.train.runs[name]
        if (c.dataset, c.model, c.kwargs, _configured_recipe(p, c)) != (dataset, model, kwargs, run_recipe):
            raise ValueError(f"{name!r} is also a configured run (train.runs.{name}) with other settings; train "
                             f"that one with --run {name}, or pick another recipe or model")
    return _seeded_run(p, name, seed, dataset, model, kwargs, run_recipe)


def ablation_run(p: Params, variant: str) -> Run:
    """The run of the ablation stage ``ablate@<variant>``: the variant's settings on ``ablate.model`` (or its own
    base model), trained on ``ablate.dataset`` (or the variant's own ``dataset``) under its table's protocol
    (:meth:`rwkvlab.config.Ablate.protocol_of`): that protocol's recipe plus the variant's recipe fields, from the
    pretrained encoder of the base model's size where the protocol is a pretrained one."""
    v = p.ablate.variant(variant)
    protocol = p.ablate.protocols[p.ablate.protocol_of(variant)]
    recipe = _with_recipe_fields(p.train.recipe(protocol.recipe), v.recipe, f"ablate.variants.{variant}.recipe")
    model = p.ablate.base_model(variant)
    if protocol.pretrained and recipe.init is None:
        recipe = dataclasses.replace(recipe, init=pretrained_encoder(p, model, v.kwargs, variant))
    out = paths.ablation_dir(p, variant)
    return Run(name=f"ablate/{variant}", dataset=p.ablate.dataset_of(variant), split_seed=p.ablate.split_seed,
               model=model, model_kwargs=dict(v.kwargs), recipe=recipe, init=resolve_init(p, recipe.init),
               checkpoints=paths.ablation_run_dir(p, variant), history=out / "history.csv", evaluation=out)


def pretrained_encoder(p: Params, model: str, kwargs: dict[str, Any], variant: str) -> str | None:
    """The ``init`` of a pretrained protocol: ``pretrain/<encoder>`` for the encoder on the model's card
    (``rwkv_enc_t`` for ``rwkv_unet_t``); ``None`` for a timm encoder (Table 6), whose ImageNet weights cannot be
    downloaded here.

    Raises:
        ValueError: the model's card names no encoder, or the encoder is not one of ``pretrain.models`` (no stage
            writes its weights).
    """
    if kwargs.get("encoder", "rwkv") != "rwkv":
        return None
    encoder = model_card(model).pretrain_encoder
    if encoder is None:
        raise ValueError(f"params.yaml: variant {variant} trains under a pretrained protocol, but {model} has no "
                         f"pretraining encoder (rwkvlab.models.model_card({model!r}).pretrain_encoder)")
    if encoder not in p.pretrain.models:
        raise ValueError(f"params.yaml: variant {variant} trains under a pretrained protocol from {encoder}, which "
                         f"is not in pretrain.models {list(p.pretrain.models)}")
    return f"pretrain/{encoder}"


def load_data(p: Params, run: Run) -> Prepared:
    """The prepared dataset of ``run`` with its split applied."""
    return load_prepared(paths.cache(p, run.dataset), paths.split_file(p, run.dataset, run.split_seed))


def describe(run: Run, data: Prepared) -> str:
    """One line on what ``run`` trains: the model with its keyword arguments and parameter count for ``data``, the
    data's size, channels and classes, and the encoder it starts from. (MACs: ``python -m rwkvlab.complexity``.)"""
    from rwkvlab.engine.train import model_kwargs_for  # training's imports (MONAI) only where a run trains

    model = create_model(run.model, **model_kwargs_for(data, run.model_kwargs))
    params = sum(t.numel() for t in model.parameters())
    if spatial_dims(model) == 3:
        where = (f"{len(data.volume_splits.get('train', []))} train volumes in patches of "
                 f"{'x'.join(map(str, run.recipe.patch_size or ()))}")
    else:
        where = "x".join(map(str, data.item_size))
    return (f"{run.name}: {run.model}({run.model_kwargs or ''}), {params / 1e6:.2f}M parameters; {data.dataset} at "
            f"{where}, {data.in_chans} input channel(s), {data.num_classes} classes; init: {run.init or 'none'}")


def train(p: Params, run: Run, device: torch.device, data: Prepared | None = None) -> pd.DataFrame:
    """Train (or resume) ``run``; returns its history. See :func:`rwkvlab.engine.train.fit`."""
    if run.init is not None and not run.init.is_file():
        hint = (f"run its pretrain stage first (dvc repro pretrain@{run.init.parent.name})"
                if run.init.name == "encoder.pt" else "convert a release encoder with python -m rwkvlab.convert")
        raise FileNotFoundError(f"{run.init}: no pretrained encoder for {run.name} (init); {hint}")
    from rwkvlab.engine.train import fit  # see describe

    data = load_data(p, run) if data is None else data
    logger.info("%s: %s(%s) on %s", run.name, run.model, run.model_kwargs, run.dataset)
    # Each split seed also draws its own initialisation and batches, as the paper's three runs do.
    return fit(run.model, data, run.recipe, run.checkpoints, seed=p.base.seed + run.split_seed, device=device,
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
    window = SlidingWindow.of(run.recipe) if spatial_dims(model) == 3 else None
    per_case, preds = evaluate_split(model, data, "test", p.evaluate.batch_size, device, window)
    return write_evaluation(run.evaluation, per_case, preds), per_case, preds


def summarize_seeds(p: Params, name: str) -> dict[str, Any]:
    """Combine the per-seed test metrics of ``train.runs.<name>`` into its summary and write it atomically to
    :func:`rwkvlab.paths.summary_file` (the evaluate stage's DVC metrics).

    Returns:
        ``{"dataset", "model", "kwargs", "recipe", "seeds", "n_seeds", "mean", "std", "per_seed"}``: ``mean`` and
        ``std`` map each metric of the per-seed ``metrics.json`` (``dsc``, ``hd95``, ``dsc_<class>``, ...) to its
        mean and sample standard deviation (ddof 1, the paper's ±; 0.0 for a single seed), ``per_seed`` maps
        ``"<seed>"`` to that seed's metrics.

    Raises:
        FileNotFoundError: a seed has not been evaluated.
        ValueError: the seeds' metric files name different metrics.
    """
    configured = p.train.run(name)
    settings = {"dataset": configured.dataset, "model": configured.model, "kwargs": dict(configured.kwargs),
                "recipe": configured.recipe}
    evaluations = {seed: paths.eval_dir(p, name, seed) for seed in configured.seeds}
    return summarize(name, evaluations, settings, paths.summary_file(p, name), "(evaluate stage, notebook 03_evaluate)")


def summarize(name: str, evaluations: Mapping[int, Path], settings: Mapping[str, Any], file: Path,
              hint: str = "") -> dict[str, Any]:
    """:func:`summarize_seeds` for any run: the ``metrics.json`` in each seed's evaluation folder (``evaluations``,
    by split seed), summarised with ``settings`` (what the run is) and written atomically to ``file``; ``hint``
    ends the message of a seed not evaluated."""
    per_seed: dict[str, dict[str, float]] = {}
    for seed, folder in evaluations.items():
        if not (folder / "metrics.json").is_file():
            raise FileNotFoundError(f"{folder / 'metrics.json'}: seed {seed} of run {name!r} is not evaluated {hint}"
                                    .rstrip())
        per_seed[str(seed)] = json.loads((folder / "metrics.json").read_text())
    seeds = list(evaluations)
    metrics = list(per_seed[str(seeds[0])])
    for seed, values in per_seed.items():
        if sorted(values) != sorted(metrics):
            raise ValueError(f"{evaluations[int(seed)] / 'metrics.json'} has metrics {sorted(values)}, "
                             f"seed {seeds[0]} has {sorted(metrics)}")
    table = np.array([[per_seed[str(s)][m] for m in metrics] for s in seeds], dtype=np.float64)
    std = table.std(axis=0, ddof=1) if len(table) > 1 else np.zeros(len(metrics))
    summary = {**settings, "seeds": seeds, "n_seeds": len(seeds),
               "mean": dict(zip(metrics, table.mean(axis=0).tolist())), "std": dict(zip(metrics, std.tolist())),
               "per_seed": per_seed}
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(file, lambda f: f.write_text(text))
    return summary


def read_summary(p: Params, name: str) -> dict[str, Any]:
    """What :func:`summarize_seeds` wrote for ``train.runs.<name>``."""
    file = paths.summary_file(p, name)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: run {name!r} has no summary; run its evaluate stage (evaluate@{name})")
    return json.loads(file.read_text())
