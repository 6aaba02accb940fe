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

__all__ = ["Run", "Configured", "Variant", "AdHoc", "Setting", "Selection", "resolve", "is_volumetric",
           "pretrained_encoder", "resolve_init", "load_data",
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


@dataclass(frozen=True)
class Configured:
    """A run of ``train.runs`` on one of its split seeds: the stages ``train@<name>`` and ``evaluate@<name>``."""

    name: str
    seed: int


@dataclass(frozen=True)
class Variant:
    """An ablation variant of ``ablate.variants``: the stage ``ablate@<name>``."""

    name: str


@dataclass(frozen=True)
class AdHoc:
    """A run the command line names by its parts (``--dataset/--model``), named ``<dataset>-<model>[-<variant>]``.

    Attributes:
        variant: an ablation variant whose model settings and recipe fields apply, under its protocol's recipe.
        recipe: a recipe of ``train.recipes``; default the variant's protocol recipe, else the one named after
            ``dataset``.
    """

    dataset: str
    model: str
    variant: str | None = None
    recipe: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class Setting:
    """A new setting of ``ablate.model`` tried as an ablation variant would be (``explore.try_setting``): trained on
    the ablation's dataset and split under ``protocol``, into the git-ignored ``data/adhoc/explore/<name>/``."""

    name: str
    kwargs: dict[str, Any]
    protocol: str = "scratch-100"
    recipe_fields: dict[str, Any] = dataclasses.field(default_factory=dict)


Selection = Configured | Variant | AdHoc | Setting


def resolve(p: Params, selection: Selection, out: Path | None = None) -> Run:
    """The one way a run is built: its dataset, split, model and settings, its recipe with the protocol's fields and
    pretrained init applied, and its folders from :mod:`rwkvlab.paths`, for a configured run, an ablation variant,
    an ad-hoc run or a setting; written under ``out`` (:func:`under`) when given, instead of a stage's folders.

    Raises:
        ValueError: an unknown run, variant, recipe, protocol, recipe field or seed; a seed a configured run does
            not train; an ad-hoc run named like a configured run with other settings.
    """
    if isinstance(selection, Configured):
        run = _configured(p, selection)
    elif isinstance(selection, Variant):
        run = _variant(p, selection.name)
    elif isinstance(selection, AdHoc):
        run = _adhoc(p, selection)
    elif isinstance(selection, Setting):
        run = _setting(p, selection)
    else:
        raise TypeError(f"resolve takes a Configured, Variant, AdHoc or Setting, got {type(selection).__name__}")
    return run if out is None else under(run, out)


def _recipe(p: Params, base: str, fields: Mapping[str, Any], where: str, model: str, kwargs: Mapping[str, Any],
            pretrained: bool, variant: str) -> Recipe:
    """Recipe ``base`` with ``fields`` replaced, from the model's pretrained encoder where ``pretrained`` and the
    recipe names no init of its own."""
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"params.yaml: {where} has unknown recipe field(s) {unknown}; known: {sorted(known)}")
    recipe = dataclasses.replace(p.train.recipe(base), **fields)
    if pretrained and recipe.init is None:
        recipe = dataclasses.replace(recipe, init=pretrained_encoder(p, model, dict(kwargs), variant))
    return recipe


def _seeded_run(p: Params, name: str, seed: int, dataset: str, model: str, kwargs: dict[str, Any],
                recipe: Recipe) -> Run:
    return Run(name=f"{name}/seed{seed}", dataset=dataset, split_seed=seed, model=model, model_kwargs=kwargs,
               recipe=recipe, init=resolve_init(p, recipe.init), checkpoints=paths.run_dir(p, name, seed),
               history=paths.train_dir(p, name, seed) / "history.csv", evaluation=paths.eval_dir(p, name, seed))


def _configured(p: Params, selection: Configured) -> Run:
    configured = p.train.run(selection.name)
    if selection.seed not in configured.seeds:
        raise ValueError(f"params.yaml: train.runs.{selection.name} trains on split seeds {list(configured.seeds)}, "
                         f"not on seed {selection.seed}")
    return _seeded_run(p, selection.name, selection.seed, configured.dataset, configured.model,
                       dict(configured.kwargs), _configured_recipe(p, configured))


def _configured_recipe(p: Params, run: TrainRun) -> Recipe:
    """The recipe of a configured run, with the run's own ``init`` in place of the recipe's where it has one."""
    recipe = p.train.recipe(run.recipe)
    return recipe if run.init is None else dataclasses.replace(recipe, init=run.init)


def _adhoc(p: Params, selection: AdHoc) -> Run:
    dataset, model, variant = selection.dataset, selection.model, selection.variant
    name, kwargs, fields, pretrained = f"{dataset}-{model}", {}, {}, False
    base = selection.recipe or dataset
    if variant is not None:
        v = p.ablate.variant(variant)
        protocol = p.ablate.protocols[p.ablate.protocol_of(variant)]
        name, kwargs, fields, pretrained = f"{name}-{variant}", dict(v.kwargs), v.recipe, protocol.pretrained
        base = selection.recipe or protocol.recipe
    where = f"ablate.variants.{variant}.recipe" if variant else f"train.recipes.{base}"
    recipe = _recipe(p, base, fields, where, model, kwargs, pretrained, variant or name)
    if selection.seed not in p.prepare.split_seeds:
        raise ValueError(f"split seed {selection.seed} is not one of prepare.split_seeds {list(p.prepare.split_seeds)}")
    if name in p.train.runs:
        c = p.train.runs[name]
        if (c.dataset, c.model, c.kwargs, _configured_recipe(p, c)) != (dataset, model, kwargs, recipe):
            raise ValueError(f"{name!r} is also a configured run (train.runs.{name}) with other settings; train "
                             f"that one with --run {name}, or pick another recipe or model")
    return _seeded_run(p, name, selection.seed, dataset, model, kwargs, recipe)


def _variant(p: Params, variant: str) -> Run:
    v = p.ablate.variant(variant)
    protocol = p.ablate.protocols[p.ablate.protocol_of(variant)]
    model = p.ablate.base_model(variant)
    recipe = _recipe(p, protocol.recipe, v.recipe, f"ablate.variants.{variant}.recipe", model, v.kwargs,
                     protocol.pretrained, variant)
    out = paths.ablation_dir(p, variant)
    return Run(name=f"ablate/{variant}", dataset=p.ablate.dataset_of(variant), split_seed=p.ablate.split_seed,
               model=model, model_kwargs=dict(v.kwargs), recipe=recipe, init=resolve_init(p, recipe.init),
               checkpoints=paths.ablation_run_dir(p, variant), history=out / "history.csv", evaluation=out)


def _setting(p: Params, selection: Setting) -> Run:
    if selection.protocol not in p.ablate.protocols:
        raise ValueError(f"try_setting: protocol {selection.protocol!r} is not one of ablate.protocols "
                         f"{sorted(p.ablate.protocols)}")
    protocol = p.ablate.protocols[selection.protocol]
    model = p.ablate.model or p.ablate.variant_defaults["model"]  # the paper profile has no common base model
    recipe = _recipe(p, protocol.recipe, selection.recipe_fields, "try_setting", model, selection.kwargs,
                     protocol.pretrained, selection.name)
    out = paths.adhoc_dir(p, "explore") / selection.name
    return Run(name=f"explore/{selection.name}", dataset=p.ablate.dataset, split_seed=p.ablate.split_seed,
               model=model, model_kwargs=dict(selection.kwargs), recipe=recipe, init=resolve_init(p, recipe.init),
               checkpoints=out, history=out / "history.csv", evaluation=out)


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
