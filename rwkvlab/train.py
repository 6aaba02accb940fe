"""Command line for training, the same runs as the train stage (``rwkvlab.engine.runs``)::

    python -m rwkvlab.train --run NAME [--seed K [K ...]] [--params params.yaml] [--set key=value ...] [--nproc N]
        [--out DIR | --stage] [--no-evaluate]
    python -m rwkvlab.train --dataset NAME --model NAME [--variant V] [--recipe R] [--init I] [--seed K [K ...]] ...
    torchrun --nproc_per_node=N -m rwkvlab.train --run-name NAME ...  # DDP: N processes (gloo on CPU, nccl on CUDA)

Under ``torchrun`` spell ``--run`` as ``--run-name``: torchrun takes any ``--run...`` for its own ``--run-path``.

Everything a run writes goes under ``--out`` (default ``data/adhoc/train``, git-ignored and outside every
stage): ``<name>/seed<k>/`` holds its checkpoints, ``history.csv`` and ``evaluation/``, so a command never
changes the study. Only ``--stage`` writes the stage ``train@<name>``'s own outputs, as ``dvc repro`` does (the
train stage gives it to its ``torchrun`` processes).

``--run`` trains a configured run of ``train.runs`` (the settings of the stage ``train@<name>``): each of its split seeds in
turn, or only those of ``--seed``. ``--dataset/--model`` is an ad-hoc run named ``<dataset>-<model>[-<variant>]``
on the splits ``--seed`` (default 0) with the recipe ``--recipe`` (default: the dataset's name); ``--variant``
applies an ablation variant's model settings and recipe fields. ``--init`` starts the encoder from
``pretrain/<encoder>`` or a checkpoint file (the authors' ImageNet encoder converted by ``rwkvlab.convert``). ``--set`` replaces a dotted key of the
params file (the value is read as YAML), e.g. ``--set train.recipes.demo.epochs=2 --set
train.recipes.demo.precision=bf16``. Without ``torchrun``, ``--nproc`` (default ``train.nproc``) above 1
starts ``torchrun --nproc_per_node=N -m rwkvlab.train`` itself, one job per seed. After training, the
checkpoint the recipe names is scored on the test split (``runs.evaluate``) and printed as JSON; for more
than one seed, and for every seed of a ``--run`` (its default), the summary over them (``runs.summarize``: mean
and sample std) is written to ``<out>/<name>/metrics.json`` (with ``--stage``, ``reports/evaluate/<name>/``)
and printed instead. ``--no-evaluate`` only trains (the train stage: evaluation is the evaluate
stage's).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch.distributed as dist
import yaml

from rwkvlab import config, paths
from rwkvlab.data import Prepared
from rwkvlab.engine import runs
from rwkvlab.engine.distributed import check_nproc, init_from_env, torchrun_command, under_torchrun
from rwkvlab.engine.inference import resolve_device
from rwkvlab.engine.train import NonFiniteLossError, check_recipe
from rwkvlab.models import list_models

logger = logging.getLogger(__name__)

__all__ = ["parse_overrides", "launch", "main"]


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a.b": 1, "c": ["x", "y"]}``, each value read as YAML.

    Raises:
        ValueError: an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value (a dotted params key, e.g. train.recipes.demo.epochs=2), "
                             f"got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _run(p: config.Params, seed: int, run: str | None = None, dataset: str | None = None, model: str | None = None,
         variant: str | None = None, recipe: str | None = None, out: Path | None = None) -> runs.Run:
    """The run selected, written under ``out`` (:func:`runs.under`), or where its stage writes when ``out`` is None."""
    chosen = _selected(p, seed, run, dataset, model, variant, recipe)
    return chosen if out is None else runs.under(chosen, out)


def _selected(p: config.Params, seed: int, run: str | None, dataset: str | None, model: str | None,
              variant: str | None, recipe: str | None) -> runs.Run:
    if run is not None:
        return runs.resolve(p, runs.Configured(run, seed))
    if model not in list_models():
        raise ValueError(f"--model: unknown model {model!r}; registered: {', '.join(list_models())}")
    if recipe is not None and recipe not in p.train.recipes:
        raise ValueError(f"--recipe: no recipe train.recipes.{recipe} in the params file; recipes: "
                         f"{', '.join(sorted(p.train.recipes))}")
    if recipe is None and variant is None and dataset not in p.train.recipes:
        raise ValueError(f"--dataset: no recipe train.recipes.{dataset} in the params file (name one with --recipe); "
                         f"recipes: {', '.join(sorted(p.train.recipes))}")
    if dataset not in p.prepare.datasets:
        raise ValueError(f"--dataset: {dataset!r} is not in prepare.datasets; datasets: "
                         f"{', '.join(p.prepare.datasets)}")
    if seed not in p.prepare.split_seeds:
        raise ValueError(f"--seed: {seed} is not one of prepare.split_seeds {list(p.prepare.split_seeds)}")
    return runs.resolve(p, runs.AdHoc(dataset, model, variant, recipe, seed))


def _selection_args(seed: int, run: str | None, dataset: str | None, model: str | None, variant: str | None,
                    recipe: str | None, out: Path | None) -> list[str]:
    """The command-line arguments that select the same run, seed and folders (for the torchrun children)."""
    where = ["--stage"] if out is None else ["--out", str(out)]
    if run is not None:
        return ["--run-name", run, "--seed", str(seed), *where]
    return ["--dataset", str(dataset), "--model", str(model), "--seed", str(seed), *where,
            *(["--variant", variant] if variant else []), *(["--recipe", recipe] if recipe else [])]


def launch(p: config.Params, run: str | None = None, seed: int = 0, *, dataset: str | None = None,
           model: str | None = None, variant: str | None = None, recipe: str | None = None,
           nproc: int | None = None, data: Prepared | None = None, out: Path | None = None) -> pd.DataFrame:
    """Train one seed of a run: in this process, or under ``torchrun`` when ``nproc > 1``.

    The run is the configured ``train.runs.<run>``, or without ``run`` the ad-hoc ``dataset``/``model``/``variant``/
    ``recipe`` (:func:`runs.resolve`), on split ``seed``, written under
    ``out`` (:func:`runs.under`) or, when ``out`` is None, where the stage ``train@<run>`` writes. This is the train
    stage's decision (notebook 02) and the command line's; ``nproc`` defaults to ``train.nproc``. Always resumes
    from the run's ``last.pt`` (written under the same configuration). ``data``, the run's prepared dataset if
    already loaded, saves reading it again in this process.

    Returns:
        the history (one row per epoch).

    Raises:
        ValueError: an unknown run, seed, dataset, model, variant, recipe or params key, ``nproc`` above the
            devices present, or a recipe that cannot run on them (:func:`rwkvlab.engine.train.check_recipe`).
        subprocess.CalledProcessError: the ``torchrun`` processes failed (their messages are on stderr).
    """
    selection = (seed, run, dataset, model, variant, recipe, out)
    one = _run(p, *selection)
    device = resolve_device(p.base.device)
    name, nproc = ("train.nproc", p.train.nproc) if nproc is None else ("--nproc", nproc)
    check_nproc(nproc, device, name)
    check_recipe(one.recipe, nproc, device)
    if nproc == 1:
        return runs.train(p, one, device, data)
    args = ["--params", str(p.file), *_selection_args(*selection), "--no-evaluate",
            *(a for k, v in p.overrides.items() for a in ("--set", f"{k}={json.dumps(v)}"))]
    cmd = torchrun_command(nproc, "rwkvlab.train", args)
    logger.info("launching %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return pd.read_csv(one.history)


def _train_as_rank(p: config.Params, run: runs.Run) -> bool:
    """Train ``run`` as one rank of the ``torchrun`` job this process belongs to; whether it is rank 0."""
    device, rank, _ = init_from_env(resolve_device(p.base.device))
    logging.getLogger().setLevel(logging.INFO if rank == 0 else logging.WARNING)
    try:
        runs.train(p, run, device)
    finally:
        dist.destroy_process_group()
    return rank == 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # --run-name: the spelling torchrun lets through (it reads any --run... as an abbreviation of its --run-path)
    parser.add_argument("--run", "--run-name", dest="run", help="a configured run of train.runs (the stage train@<run>)")
    parser.add_argument("--dataset", help="ad-hoc run: a dataset of prepare.datasets")
    parser.add_argument("--model", help="ad-hoc run: a registered model, e.g. rwkv_unet_t")
    parser.add_argument("--variant", help="ad-hoc run: an ablation variant (ablate.variants) applied to the model, "
                        "under its protocol's recipe unless --recipe names another")
    parser.add_argument("--recipe", help="ad-hoc run: a recipe of train.recipes (default: the variant's protocol "
                        "recipe, else the dataset's name)")
    parser.add_argument("--init", help="encoder weights to start from, replacing the run's init: pretrain/<encoder> or "
                        "a checkpoint file (.pt), e.g. the authors' ImageNet encoder converted by rwkvlab.convert")
    parser.add_argument("--seed", type=int, nargs="+", help="split seeds, trained in turn (default: every seed of "
                        "--run; 0 for an ad-hoc run)")
    parser.add_argument("--params", type=Path, default=None,
                        help="params file; default: the project's params.yaml above the working directory")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="replace a dotted params key, the value read as YAML (repeatable)")
    parser.add_argument("--nproc", type=int, help="DDP processes on this node (default: train.nproc)")
    parser.add_argument("--out", type=Path, help="folder of the run's checkpoints, history and evaluation, "
                        "<out>/<name>/seed<k>/ (default: data/adhoc/train, outside every stage)")
    parser.add_argument("--stage", action="store_true", help="write the outputs of the stage train@<run> instead, "
                        "as dvc repro does (with --run only)")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                        help="score the test split after training")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        adhoc = {k: getattr(args, k) for k in ("dataset", "model", "variant", "recipe") if getattr(args, k)}
        if args.run is not None and adhoc:
            raise ValueError(f"--run names a configured run: give it without "
                             f"{', '.join('--' + k for k in adhoc)}")
        if args.run is None and not (args.dataset and args.model):
            raise ValueError("give --run NAME (a run of train.runs) or both --dataset and --model")
        if args.stage and (args.run is None or args.out is not None):
            raise ValueError("--stage writes the outputs of the stage train@<run>: give it with --run and without "
                             "--out")
        overrides = parse_overrides(args.set)
        if args.init is not None:  # the run's own init, where params.yaml keeps it
            where = f"train.runs.{args.run}" if args.run else f"train.recipes.{args.recipe or args.dataset}"
            # a file named on the command line is relative to the shell, not to params.yaml's folder
            init = args.init if args.init.startswith("pretrain/") else str(Path(args.init).resolve())
            overrides[f"{where}.init"] = init
        p = config.load(args.params, **overrides)
        seeds = (args.seed if args.seed is not None else
                 list(p.train.run(args.run).seeds) if args.run is not None else [0])
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"--seed: {seeds} names a seed twice")
        out = None if args.stage else (args.out or paths.adhoc_dir(p, "train")).absolute()
        chosen = [_run(p, seed, args.run, args.dataset, args.model, args.variant, args.recipe, out) for seed in seeds]
        for run in chosen:  # every seed checked above, before any trains
            if under_torchrun():
                rank0 = _train_as_rank(p, run)
            else:
                launch(p, args.run, run.split_seed, dataset=args.dataset, model=args.model,
                       variant=args.variant, recipe=args.recipe, nproc=args.nproc, out=out)
        if under_torchrun() and not rank0:
            return 0
        if args.evaluate:
            device = resolve_device(p.base.device)
            summaries = [runs.evaluate(p, run, device)[0] for run in chosen]
            every_seed = args.run is not None and args.seed is None
            if out is None and every_seed:
                print(json.dumps({"run": args.run, **runs.summarize_seeds(p, args.run)}, indent=2))
            elif out is not None and (every_seed or len(chosen) > 1):
                run = chosen[0]
                name = run.name.rpartition("/")[0]
                recipe = p.train.run(args.run).recipe if args.run else args.recipe or args.dataset
                settings = {"dataset": run.dataset, "model": run.model, "kwargs": run.model_kwargs,
                            "recipe": recipe, "variant": args.variant}
                summary = runs.summarize(name, {r.split_seed: r.evaluation for r in chosen}, settings,
                                         out / name / "metrics.json")
                print(json.dumps({"run": name, **summary}, indent=2))
            else:
                results = [{"run": run.name, "checkpoint": run.recipe.test_checkpoint, **summary}
                           for run, summary in zip(chosen, summaries)]
                print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:  # DataError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"error: the torchrun processes failed (exit status {err.returncode}); their messages are above",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
