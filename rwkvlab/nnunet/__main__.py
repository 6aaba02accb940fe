"""RWKV-UNet through nnU-Net v2 on your dataset, with no hand-edited JSON (docs §24).

    eval "$(python -m rwkvlab.nnunet env)"              # nnU-Net's folders under data/adhoc/nnunet, our trainers
    python -m rwkvlab.nnunet preprocess data/volume_demo --id 901   # copy, integrity check, plan, preprocess
    python -m rwkvlab.nnunet plans 901 --model rwkv_unet3d_t        # nnUNetPlans_rwkv_unet3d_t.json (optional)
    python -m rwkvlab.nnunet commands 901 --trainer nnUNetTrainerRWKVUNetT --epochs 2 --iterations 5 [--run]

The study's stages: ``study-preprocess <nnunet.datasets name>`` and ``study-train <nnunet.runs name>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rwkvlab import config
from rwkvlab.data import DataError
from rwkvlab.io import atomic_write
from rwkvlab.nnunet import steps

SKIPPED = "SKIPPED.md"


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _kwargs(pairs: Sequence[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {pair!r}: expected key=value (JSON values, e.g. ccm=false or "
                             f"strides=[[1,2,2],2,2,2])")
        out[key] = _value(value)
    return out


def _device(p: config.Params) -> str:
    """nnU-Net's -device (cpu, cuda, mps) for params ``base.device`` (auto: the GPU when there is one)."""
    from rwkvlab.engine.inference import resolve_device

    return resolve_device(p.base.device).type


def _shell_env(p: config.Params, folders: steps.Folders) -> dict[str, str]:
    """The environment of a shell that runs nnU-Net's commands. ``augmentation_workers: 0`` is for the study's
    training only: nnU-Net's planner sets torch's threads to ``nnUNet_n_proc_DA`` and fails at 0, so a shell leaves
    0 to nnU-Net's own choice (at most the CPU count)."""
    return folders.environment(p.nnunet.augmentation_workers or None)


def _processes() -> int:
    return os.cpu_count() or 1


def _skip(folders: Sequence[Path], why: str) -> None:
    print(f"skipped: {why}")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / SKIPPED, lambda f: f.write_text(f"Skipped: {why}\n"))


def study_preprocess(p: config.Params, name: str) -> None:
    if name not in p.nnunet.datasets:
        raise SystemExit(f"nnunet.datasets has no {name!r}; datasets: {sorted(p.nnunet.datasets)}")
    entry = p.nnunet.datasets[name]
    folders = steps.study_folders(p, name)
    for folder in (folders.raw, folders.preprocessed):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        steps.import_raw(entry.source, folders, entry.id, name)
    except DataError as e:  # no dataset there: reported and skipped, as prepare does
        _skip([folders.raw, folders.preprocessed], f"nnunet.datasets.{name}: {e}")
        return
    steps.preprocess(folders, entry.id, [entry.configuration], processes=_processes())


def study_train(p: config.Params, run_name: str) -> None:
    if run_name not in p.nnunet.runs:
        raise SystemExit(f"nnunet.runs has no {run_name!r}; runs: {sorted(p.nnunet.runs)}")
    run = p.nnunet.runs[run_name]
    entry = p.nnunet.datasets[run.dataset]
    folders = steps.study_folders(p, run.dataset, run_name)
    reports = p.base.reports_dir / "nnunet" / run_name
    if (folders.preprocessed / SKIPPED).is_file():
        _skip([folders.results, reports], f"nnunet.runs.{run_name}: its dataset {run.dataset} was skipped")
        return
    trainer = steps.budget_trainer(run.trainer, p.nnunet.epochs, p.nnunet.iterations)
    network = _network(trainer, entry.configuration)  # an unknown trainer fails here, before nnU-Net starts
    dataset = steps.dataset_folder(entry.id, run.dataset)
    # The results folder persists (dvc.yaml) so that a killed run resumes; DVC reruns a finished one only because
    # something changed, and then it starts over. RUNNING.json tells the two apart.
    running = folders.results / "RUNNING.json"
    state = {"trainer": trainer, "seed": p.base.seed, "folds": list(p.nnunet.folds),
             "plans": hashlib.sha256((folders.preprocessed / dataset / "nnUNetPlans.json").read_bytes()).hexdigest()}
    if folders.results.exists() and (not running.is_file() or json.loads(running.read_text()) != state):
        shutil.rmtree(folders.results)
    atomic_write(running, lambda f: f.write_text(json.dumps(state) + "\n"))
    folds, seconds = [], {}
    for fold in p.nnunet.folds:
        started = time.perf_counter()
        out = steps.train(folders, entry.id, entry.configuration, trainer, fold, device=_device(p),
                          seed=p.base.seed + fold, augmentation_workers=p.nnunet.augmentation_workers)
        seconds[fold] = time.perf_counter() - started
        ours, per_case = steps.evaluate_validation(out, folders.raw / dataset)
        nnunet = json.loads((out / "validation" / "summary.json").read_text())
        fold_dir = reports / f"fold_{fold}"
        atomic_write(fold_dir / "per_case.csv", lambda f: per_case.to_csv(f, index=False))
        folds.append({"fold": fold, "ours": ours, "nnunet": {
            "dice": nnunet["foreground_mean"]["Dice"],
            **{f"dice_{c}": m["Dice"] for c, m in _by_class(nnunet, folders.raw / dataset).items()}}})
    metrics = {"run": run_name, "dataset": run.dataset, "network": network,
               "trainer": trainer, "configuration": entry.configuration,
               "epochs": p.nnunet.epochs, "iterations": p.nnunet.iterations, "seed": p.base.seed,
               **steps.complexity(folders, entry.id, entry.configuration, trainer), "folds": folds}
    atomic_write(reports / "metrics.json", lambda f: f.write_text(json.dumps(metrics, indent=2) + "\n"))
    # wall-clock seconds change from run to run: apart, so metrics.json repeats bit for bit
    atomic_write(reports / "timing.json", lambda f: f.write_text(json.dumps(
        {"seconds_per_fold": {str(k): round(v, 1) for k, v in seconds.items()},
         "note": "nnU-Net's training and its validation of the fold, wall clock"}, indent=2) + "\n"))
    running.unlink()


def _network(trainer: str, configuration: str) -> str:
    """The label of the network ``trainer`` trains (a registered model's card label, or nnU-Net's U-Net)."""
    from rwkvlab.models import model_card
    from rwkvlab.nnunet.network import model_for
    from rwkvlab.nnunet.trainers import nnUNetTrainerRWKVUNet
    from rwkvlab.nnunet.trainers import trainer as find_trainer

    cls = find_trainer(trainer)  # nnU-Net's nnUNetTrainer or one of ours, with its budget
    if not issubclass(cls, nnUNetTrainerRWKVUNet):
        return "nnU-Net U-Net"
    if cls.size is None:
        return "RWKV-UNet (the plans' network)"
    return model_card(model_for(cls.size, 2 if configuration == "2d" else 3)).label


def _by_class(summary: dict, raw_dataset: Path) -> dict[str, dict]:
    """nnU-Net's per-label means (``mean``: label value -> metrics) by class name."""
    labels = json.loads((raw_dataset / "dataset.json").read_text())["labels"]
    names = {str(v): k for k, v in labels.items()}
    return {names[k]: v for k, v in summary["mean"].items() if k in names}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.nnunet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=None, help="params file (default: the project's params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="print the exports of nnU-Net's folders (ad-hoc, under data/adhoc/nnunet) and "
                               "nnUNet_extTrainer")
    pre = sub.add_parser("preprocess", help="copy a raw dataset into nnUNet_raw, check it, plan and preprocess")
    pre.add_argument("source", type=Path, help="a raw folder in nnU-Net v2's layout, or an MSD task folder")
    pre.add_argument("--id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    pre.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    pre.add_argument("-c", "--configurations", nargs="+", default=["2d", "3d_fullres"])
    plans = sub.add_parser("plans", help="write <plans>_<model>.json: RWKV-UNet sized from nnU-Net's own plans")
    plans.add_argument("dataset", help="nnU-Net dataset id or name (DatasetXXX_Name)")
    plans.add_argument("--model", required=True, help="a registered RWKV-UNet: rwkv_unet_t|s|b (2d), rwkv_unet3d_t|s|b")
    plans.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model keyword arguments (JSON)")
    plans.add_argument("-c", "--configurations", nargs="+", default=None,
                       help="configurations to write (default: every one of the model's rank)")
    plans.add_argument("--source-plans", default="nnUNetPlans")
    cmds = sub.add_parser("commands", help="print (or --run) nnU-Net's train and predict lines for a trainer")
    cmds.add_argument("dataset", help="nnU-Net dataset id")
    cmds.add_argument("--trainer", default="nnUNetTrainerRWKVUNetT")
    cmds.add_argument("--epochs", type=int, default=steps.NNUNET_BUDGET[0])
    cmds.add_argument("--iterations", type=int, default=steps.NNUNET_BUDGET[1])
    cmds.add_argument("-c", "--configuration", default="3d_fullres")
    cmds.add_argument("-p", "--plans", default="nnUNetPlans")
    cmds.add_argument("--fold", default="0")
    cmds.add_argument("--device", default=None, help="cpu | cuda | mps (default: params base.device)")
    cmds.add_argument("--run", action="store_true", help="run the training line (the rest need your inputs)")
    for name, what in (("study-preprocess", "nnunet.datasets"), ("study-train", "nnunet.runs")):
        stage = sub.add_parser(name, help=f"the study stage of one {what} entry")
        stage.add_argument("name")
    args = parser.parse_args(argv)
    p = config.load(args.params)
    folders = steps.adhoc_folders(p)
    try:
        if args.command == "env":
            print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in _shell_env(p, folders).items()))
        elif args.command == "preprocess":
            name = args.name or re.sub(r"[^A-Za-z0-9_-]", "_", args.source.resolve().name)
            target = steps.import_raw(args.source, folders, args.id, name)
            print(f"{target}: copied")
            out = steps.preprocess(folders, args.id, args.configurations, processes=_processes())
            print(f"{out}: planned and preprocessed ({', '.join(args.configurations)})")
        elif args.command == "plans":
            dataset_id = _dataset_id(args.dataset)
            target = steps.write_plans(folders, dataset_id, args.model, args.source_plans, args.configurations,
                                       **_kwargs(args.set))
            print(f"{target}: written; train with -tr nnUNetTrainerRWKVUNet -p {target.stem}")
        elif args.command == "commands":
            from rwkvlab.nnunet.trainers import trainer as find_trainer

            trainer = steps.budget_trainer(args.trainer, args.epochs, args.iterations)
            if trainer.startswith("nnUNetTrainerRWKVUNet") or trainer != args.trainer:
                find_trainer(trainer)  # an unknown name of ours fails here, not after nnU-Net's start-up
            device = args.device or _device(p)
            lines = steps.commands(_dataset_id(args.dataset), args.configuration, trainer, args.fold, args.plans,
                                   device)
            env = _shell_env(p, folders)
            print("\n".join([*(f"export {k}={shlex.quote(v)}" for k, v in env.items()), *lines]))
            if args.run:
                return subprocess.call(shlex.split(lines[1]), env={**os.environ, **env})
        elif args.command == "study-preprocess":
            study_preprocess(p, args.name)
        else:
            study_train(p, args.name)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _dataset_id(text: str) -> int:
    match = re.fullmatch(r"(?:Dataset)?(\d{1,3})(?:_\S*)?", text)
    if match is None:
        raise ValueError(f"dataset {text!r}: expected an nnU-Net id (901) or name (Dataset901_volume_demo)")
    return int(match[1])


if __name__ == "__main__":
    sys.exit(main())
