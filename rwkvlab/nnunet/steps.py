"""The nnU-Net path of a dataset, each step through nnU-Net's own functions (docs §24): raw folder, integrity check,
plans and preprocessing, RWKV-UNet plans, training, and our protocol on nnU-Net's validation predictions.

nnU-Net reads its folders from environment variables; :class:`Folders` sets them for one dataset, under ``data/``:
the study's under ``nnunet.root``, ad-hoc runs' under ``data/adhoc/nnunet`` (never ``$HOME``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from rwkvlab import paths
from rwkvlab.config import Params
from rwkvlab.data import DataError
from rwkvlab.io import atomic_write

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EXT_TRAINERS", "NNUNET_BUDGET", "SPLIT_SEED", "Folders", "study_folders", "adhoc_folders", "dataset_folder",
           "nnunet_name",
           "budget_trainer", "import_raw", "preprocess", "write_plans", "train", "complexity", "evaluate_validation",
           "commands"]

# the folder nnUNet_extTrainer names: nnU-Net imports its modules to find rwkvlab's trainers by name
EXT_TRAINERS = Path(__file__).resolve().parent / "ext"
# nnU-Net's own budget (epochs, iterations per epoch): trained under the trainer's own name
NNUNET_BUDGET = (1000, 250)
# nnU-Net's seed for its 5-fold split (nnUNetTrainer.do_split)
SPLIT_SEED = 12345


@dataclass(frozen=True)
class Folders:
    """nnU-Net's three folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``)."""

    raw: Path
    preprocessed: Path
    results: Path

    def environment(self, augmentation_workers: int | None = None) -> dict[str, str]:
        """The environment variables nnU-Net reads, with rwkvlab's trainers found through ``nnUNet_extTrainer``."""
        env = {"nnUNet_raw": str(self.raw.absolute()), "nnUNet_preprocessed": str(self.preprocessed.absolute()),
               "nnUNet_results": str(self.results.absolute()), "nnUNet_extTrainer": str(EXT_TRAINERS)}
        if augmentation_workers is not None:
            env["nnUNet_n_proc_DA"] = str(augmentation_workers)
        return env

    @contextlib.contextmanager
    def active(self, augmentation_workers: int | None = None) -> Iterator[None]:
        """Set :meth:`environment` in this process for the duration (nnU-Net reads it at each use)."""
        env = self.environment(augmentation_workers)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def study_folders(p: Params, dataset: str, run: str | None = None) -> Folders:
    """The study's folders of ``nnunet.datasets.<dataset>``; results per ``run``, so each stage owns its own."""
    root = p.nnunet.root / dataset
    return Folders(root / "raw", root / "preprocessed", root / "results" / run if run else root / "results")


def adhoc_folders(p: Params) -> Folders:
    """The folders of runs outside the study (git-ignored, outside every stage's deps and outs)."""
    root = paths.adhoc_dir(p, "nnunet")
    return Folders(root / "raw", root / "preprocessed", root / "results")


def dataset_folder(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name of a dataset: ``Dataset<id, 3 digits>_<name>``."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids are 1-999, got {dataset_id}")
    return f"Dataset{dataset_id:03d}_{name}"


def nnunet_name(folders: Folders, dataset_id: int) -> str:
    """nnU-Net's folder name of dataset ``dataset_id`` in ``folders`` (it looks in all three)."""
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    with folders.active():
        try:
            return convert_id_to_dataset_name(dataset_id)
        except RuntimeError as e:  # nnU-Net's "Could not find a dataset with the ID ..."
            raise FileNotFoundError(f"no nnU-Net dataset {dataset_id} in {folders.raw} or {folders.preprocessed}; "
                                    f"copy and plan it first (python -m rwkvlab.nnunet preprocess)") from e


def budget_trainer(trainer: str, epochs: int, iterations: int) -> str:
    """The trainer that trains ``trainer`` for ``epochs`` x ``iterations``: itself at nnU-Net's budget, else its
    short-budget variant (``rwkvlab.nnunet.trainers``)."""
    return trainer if (epochs, iterations) == NNUNET_BUDGET else f"{trainer}_{epochs}epochs_{iterations}iters"


def import_raw(source: Path, folders: Folders, dataset_id: int, name: str) -> Path:
    """Copy a raw dataset into ``nnUNet_raw`` as ``Dataset<id>_<name>``, replacing an earlier copy atomically.

    ``source`` is a folder in nnU-Net v2's raw layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``) or a Medical
    Segmentation Decathlon task (``TaskXX_Name``, 4D images), which nnU-Net's own converter splits.

    Raises:
        DataError: naming ``source`` when it has no ``dataset.json``.
    """
    source = Path(source)
    if not (source / "dataset.json").is_file():
        raise DataError(f"{source}: no dataset.json; expected a raw folder in nnU-Net v2's layout (dataset.json, "
                        f"imagesTr/, labelsTr/) or an MSD task folder (docs §24)")
    target = folders.raw / dataset_folder(dataset_id, name)
    folders.raw.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folders.raw, prefix=f".{target.name}."))
    try:
        if "modality" in json.loads((source / "dataset.json").read_text()):  # MSD's dataset.json; v2 has channel_names
            from nnunetv2.dataset_conversion.convert_MSD_dataset import convert_msd_dataset

            with Folders(staging, folders.preprocessed, folders.results).active():
                convert_msd_dataset(str(source), overwrite_target_id=dataset_id, num_processes=os.cpu_count() or 1)
            (converted,) = staging.iterdir()
            converted.rename(staging / "dataset")
        else:
            shutil.copytree(source, staging / "dataset")
        shutil.rmtree(target, ignore_errors=True)
        (staging / "dataset").rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def preprocess(folders: Folders, dataset_id: int, configurations: Sequence[str], processes: int = 1) -> Path:
    """nnU-Net's integrity check, fingerprint, plans (``nnUNetPlans``) and preprocessing, then its 5-fold split.

    The split is nnU-Net's own (its seed, its sorted case ids), written here so that training never writes into the
    preprocessed folder.

    Returns:
        the preprocessed dataset folder.

    Raises:
        DataError: nnU-Net's integrity-check message, naming the raw dataset folder.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess as nnunet_preprocess)
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    name = nnunet_name(folders, dataset_id)
    with folders.active():
        raw = folders.raw / name
        try:
            verify_dataset_integrity(str(raw), num_processes=processes)
        except (AssertionError, RuntimeError, ValueError) as e:
            raise DataError(f"{raw}: nnU-Net's integrity check failed: {e}") from e
        extract_fingerprints([dataset_id], num_processes=processes, check_dataset_integrity=False)
        plan_experiments([dataset_id])
        nnunet_preprocess([dataset_id], configurations=tuple(configurations),
                          num_processes=(processes,) * len(configurations))
    out = folders.preprocessed / name
    ending = json.loads((raw / "dataset.json").read_text())["file_ending"]
    cases = sorted(f.name[: -len(ending)] for f in (out / "gt_segmentations").glob(f"*{ending}"))
    splits = generate_crossval_split(cases, seed=SPLIT_SEED, n_splits=5)
    atomic_write(out / "splits_final.json", lambda f: f.write_text(json.dumps(splits, indent=2) + "\n"))
    return out


def write_plans(folders: Folders, dataset_id: int, model: str, source_plans: str = "nnUNetPlans",
                configurations: Sequence[str] | None = None, **kwargs: Any) -> Path:
    """Write ``<source_plans>_<model>.json`` beside nnU-Net's plans: each configuration of ``model``'s rank (or those
    named) with its architecture replaced by RWKV-UNet ``model`` (+ ``kwargs``), sized from nnU-Net's own strides and
    patch size. The preprocessing (``data_identifier``) stays nnU-Net's, so nothing is preprocessed again.

    Raises:
        FileNotFoundError: naming the plans file when the dataset is not planned yet.
        ValueError: naming the plans and configuration (see :func:`rwkvlab.nnunet.network.architecture`).
    """
    from rwkvlab.models import list_models, model_card
    from rwkvlab.nnunet.network import architecture

    if model not in list_models("rwkv_unet*"):
        raise ValueError(f"--model {model!r} is not a registered RWKV-UNet; one of "
                         f"{', '.join(list_models('rwkv_unet*'))}")

    base = folders.preprocessed / nnunet_name(folders, dataset_id)
    source = base / f"{source_plans}.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such plans; plan the dataset first (python -m rwkvlab.nnunet "
                                f"preprocess, or nnUNetv2_plan_and_preprocess -d {dataset_id})")
    plans = json.loads(source.read_text())
    rank = model_card(model).spatial_dims
    names = list(configurations or [c for c, cfg in plans["configurations"].items()
                                    if "architecture" in cfg and len(cfg["patch_size"]) == rank])
    if not names:
        raise ValueError(f"{source}: no configuration with {rank}D patches for {model}; configurations: "
                         f"{sorted(plans['configurations'])}")
    plans["plans_name"] = f"{source_plans}_{model}"
    for c in names:
        if c not in plans["configurations"] or "architecture" not in plans["configurations"][c]:
            raise ValueError(f"{source}: configuration {c!r} has no architecture of its own; one of "
                             f"{[n for n, cfg in plans['configurations'].items() if 'architecture' in cfg]}")
        config = plans["configurations"][c]
        config["architecture"] = architecture(config, model, f"{source} configuration {c!r}", **kwargs)
    target = base / f"{plans['plans_name']}.json"
    atomic_write(target, lambda f: f.write_text(json.dumps(plans, indent=2) + "\n"))
    return target


def train(folders: Folders, dataset_id: int, configuration: str, trainer: str, fold: int, plans: str = "nnUNetPlans",
          device: str = "cpu", seed: int | None = None, augmentation_workers: int | None = None) -> Path:
    """Train one fold with nnU-Net's ``run_training`` (what ``nnUNetv2_train`` calls), then its validation.

    A fold with a final checkpoint and a validation summary is done and left; a fold with a checkpoint resumes from it
    (nnU-Net's ``--c``); a final checkpoint without a summary is validated only (``--val``).

    Returns:
        the fold's output folder (``checkpoint_final.pth``, ``validation/`` with ``summary.json``, the training log).
    """
    import torch
    from nnunetv2.run.run_training import run_training
    from timm.utils import random_seed

    name = nnunet_name(folders, dataset_id)
    with folders.active(augmentation_workers):
        out = folders.results / name / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"
        final = (out / "checkpoint_final.pth").is_file()
        if final and (out / "validation" / "summary.json").is_file():
            return out
        resume = not final and any((out / f).is_file() for f in ("checkpoint_latest.pth", "checkpoint_best.pth"))
        if seed is not None:
            random_seed(seed)  # Python, NumPy and torch: nnU-Net's sampling, augmentation and initialisation
        if device == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)  # as nnUNetv2_train -device cpu
        run_training(str(dataset_id), configuration, fold, trainer, plans, continue_training=resume,
                     only_run_validation=final, device=torch.device(device))
    return out


def complexity(folders: Folders, dataset_id: int, configuration: str, trainer: str, plans: str = "nnUNetPlans"
               ) -> dict[str, float]:
    """Parameters and MACs (G) of the trainer's network on one patch of the plans, as nnU-Net builds it."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from rwkvlab.complexity import count_macs

    base = folders.preprocessed / nnunet_name(folders, dataset_id)
    with folders.active():
        manager = PlansManager(str(base / f"{plans}.json"))
        config = manager.get_configuration(configuration)
        dataset_json = json.loads((base / "dataset.json").read_text())
        channels = determine_num_input_channels(manager, config, dataset_json)
        with contextlib.redirect_stdout(None):  # nnU-Net prints where it searched
            cls = recursive_find_trainer_class_by_name(trainer)
        net = cls.build_network_architecture(manager, config, channels,
                                             manager.get_label_manager(dataset_json).num_segmentation_heads, False)
    counted = count_macs(net, (1, channels, *config.patch_size))
    # the paper's count (docs §11) and, apart, what it leaves out (the Bi-WKV recurrence)
    return {"params_m": counted.params / 1e6, "macs_g": counted.macs_g, "wkv_macs_g": counted.wkv_macs_g}


def evaluate_validation(fold_dir: Path, raw_dataset: Path) -> tuple[dict[str, float], pd.DataFrame]:
    """Our protocol (docs §7) on nnU-Net's validation predictions of one fold: per case and class DSC, HD95 in voxels
    and in mm, against the raw labels with their spacing; then :func:`rwkvlab.engine.evaluate.summarize`."""
    from rwkvlab.data.files import read_nifti
    from rwkvlab.engine.evaluate import evaluate_cases, summarize

    dataset_json = json.loads((raw_dataset / "dataset.json").read_text())
    labels = sorted(dataset_json["labels"].items(), key=lambda kv: kv[1])
    ending = dataset_json.get("file_ending", ".nii.gz")
    predictions = sorted((fold_dir / "validation").glob(f"*{ending}"))
    if not predictions:
        raise FileNotFoundError(f"{fold_dir / 'validation'}: no predictions (*{ending}); train the fold first")
    ids = [f.name[: -len(ending)] for f in predictions]
    pred, gt, spacings = [], [], []
    for case, f in zip(ids, predictions):
        pred.append(read_nifti(f)[0].astype(np.int64))
        label, spacing, _ = read_nifti(raw_dataset / "labelsTr" / f"{case}{ending}")
        gt.append(label.astype(np.int64))
        spacings.append(spacing)
    per_case = evaluate_cases(pred, gt, ids, [name for name, _ in labels], spacings, workers=1)
    return summarize(per_case), per_case


def commands(dataset_id: int, configuration: str, trainer: str, fold: int | str = 0, plans: str = "nnUNetPlans",
             device: str = "cpu") -> list[str]:
    """nnU-Net's plan-and-preprocess, train and predict lines, for the environment :meth:`Folders.environment` sets."""
    return [f"nnUNetv2_plan_and_preprocess -d {dataset_id} -c {configuration} --verify_dataset_integrity",
            f"nnUNetv2_train {dataset_id} {configuration} {fold} -tr {trainer} -p {plans} -device {device}",
            f"nnUNetv2_predict -i <images> -o <predictions> -d {dataset_id} -c {configuration} -tr {trainer} "
            f"-p {plans} -f {fold} -device {device}"]
