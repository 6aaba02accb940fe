"""Command line for training, the same run as the train stage (``rwkvlab.engine.runs.train_run``)::

    python -m rwkvlab.train --dataset NAME --model NAME [--variant V] [--params params.yaml]
        [--set key=value ...] [--nproc N] [--no-evaluate]
    torchrun --nproc_per_node=N -m rwkvlab.train ...      # DDP: N processes (gloo on CPU, nccl on CUDA)

``--set`` replaces a dotted key of the params file (the value is read as YAML), e.g.
``--set train.recipes.demo.epochs=2 --set train.recipes.demo.precision=bf16``; ``--variant`` applies an
ablation variant's model settings and recipe fields. Without ``torchrun``, ``--nproc`` (default
``train.nproc``) above 1 starts ``torchrun --nproc_per_node=N -m rwkvlab.train`` itself. After training,
the checkpoint the recipe names is scored on the test split (``runs.evaluate``) and its summary printed as
JSON; ``--no-evaluate`` only trains (the train stage: evaluation is the evaluate stage's).
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

from rwkvlab import config
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


def _run(p: config.Params, dataset: str, model: str, variant: str | None) -> runs.Run:
    if model not in list_models():
        raise ValueError(f"--model: unknown model {model!r}; registered: {', '.join(list_models())}")
    if dataset not in p.train.recipes:
        raise ValueError(f"--dataset: no recipe train.recipes.{dataset} in the params file; "
                         f"datasets with a recipe: {', '.join(sorted(p.train.recipes))}")
    return runs.train_run(p, dataset, model, variant)


def launch(params_file: str | Path, dataset: str, model: str, variant: str | None = None,
           overrides: dict[str, Any] | None = None, nproc: int | None = None,
           data: Prepared | None = None) -> pd.DataFrame:
    """Train the run ``runs.train_run`` builds: in this process, or under ``torchrun`` when ``nproc > 1``.

    This is the train stage's decision (notebook 02) and the command line's; ``nproc`` defaults to
    ``train.nproc``. Always resumes from the run's ``last.pt`` (written under the same configuration).
    ``data``, the run's prepared dataset if already loaded, saves reading it again in this process.

    Returns:
        the history (one row per epoch).

    Raises:
        ValueError: an unknown dataset, model, variant or params key, ``nproc`` above the devices present, or a
            recipe that cannot run on them (:func:`rwkvlab.engine.train.check_recipe`).
        subprocess.CalledProcessError: the ``torchrun`` processes failed (their messages are on stderr).
    """
    overrides = dict(overrides or {})
    p = config.load(params_file, **overrides)
    run = _run(p, dataset, model, variant)
    device = resolve_device(p.base.device)
    name, nproc = ("train.nproc", p.train.nproc) if nproc is None else ("--nproc", nproc)
    check_nproc(nproc, device, name)
    check_recipe(run.recipe, nproc, device)
    if nproc == 1:
        return runs.train(p, run, device, data)
    args = ["--params", str(params_file), "--dataset", dataset, "--model", model, "--no-evaluate",
            *(["--variant", variant] if variant else []),
            *(a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}"))]
    cmd = torchrun_command(nproc, "rwkvlab.train", args)
    logger.info("launching %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return pd.read_csv(run.history)


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
    parser.add_argument("--dataset", required=True, help="a prepared dataset with a recipe train.recipes.<dataset>")
    parser.add_argument("--model", required=True, help="a registered model, e.g. rwkv_unet_t")
    parser.add_argument("--variant", help="an ablation variant (ablate.variants) applied to the model")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="replace a dotted params key, the value read as YAML (repeatable)")
    parser.add_argument("--nproc", type=int, help="DDP processes on this node (default: train.nproc)")
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True,
                        help="score the test split after training")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        overrides = parse_overrides(args.set)
        if under_torchrun():
            p = config.load(args.params, **overrides)
            if not _train_as_rank(p, _run(p, args.dataset, args.model, args.variant)):
                return 0
        else:
            launch(args.params, args.dataset, args.model, args.variant, overrides, args.nproc)
            p = config.load(args.params, **overrides)
        if args.evaluate:
            run = _run(p, args.dataset, args.model, args.variant)
            summary = runs.evaluate(p, run, resolve_device(p.base.device))[0]
            print(json.dumps({"run": run.name, "checkpoint": run.recipe.test_checkpoint, **summary}, indent=2))
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
