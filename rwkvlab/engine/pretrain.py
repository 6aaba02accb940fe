"""Supervised pretraining of an encoder with its classification head on an ImageFolder tree (docs §13).

The paper's ImageNet recipe (docs §6, last paragraph) assembled from timm's parts: transforms with
RandAugment, label-smoothing cross-entropy, AdamW without decay on norms and biases, cosine with
warm-up per epoch, EMA of the weights, gradient clipping, AMP on CUDA, drop path. Run under
``torchrun`` it trains with DDP (one process per device, a distributed sampler, metrics summed over
ranks, rank 0 the only writer); in a plain process the same function trains alone.

Epoch ``e`` on rank ``r`` of ``W`` seeds the global RNGs with ``seed + e * W + r`` and the sampler
shuffles with ``seed + e`` (the same global order for any ``W``), so a run killed and resumed ends
with the weights of one that was not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from timm.data import create_transform
from timm.loss import LabelSmoothingCrossEntropy
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, accuracy, dispatch_clip_grad, random_seed
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from rwkvlab.config import Params, PretrainRecipe
from rwkvlab.data._base import DataError
from rwkvlab.engine import loop
from rwkvlab.engine.cpu_memory import keep_freed_memory
from rwkvlab.engine.distributed import rank_world, sum_over_ranks, torchrun_command
from rwkvlab.engine.loop import Task, average_batchnorm, run_epochs, wrap_ddp
from rwkvlab.io import atomic_write
from rwkvlab.models import create_model

logger = logging.getLogger(__name__)

__all__ = ["check_image_folder", "create_transforms", "build_model", "build_optimizer", "pretrain", "launch",
           "run_dirs", "with_overrides"]

HISTORY = ["epoch", "lr", "train_loss", "val_top1", "val_top5", "val_ema_top1", "val_ema_top5", "seconds"]
# The encoder sees images in [0, 1] as in segmentation (docs §1: no ImageNet normalisation), so the
# transferred weights meet the input scale they were trained on.
_MEAN, _STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def check_image_folder(root: Path) -> dict[str, dict[str, int]]:
    """Check an ImageFolder tree ``root/{train,val}/<class>/<image>`` before anything runs.

    Returns:
        images per class for each split, ``{"train": {class: n}, "val": {class: n}}``.

    Raises:
        DataError: naming the folder: no ``train/`` or ``val/``, a split without class folders, class
            folders without images, or val classes that differ from the train classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: pretraining data folder not found "
                        "(expected ROOT/train/<class>/<image>, ROOT/val/<class>/<image>)")
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DataError(f"{folder}: missing; an ImageFolder tree has {split}/<class>/<image> under {root}")
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        if not classes:
            raise DataError(f"{folder}: no class folders (expected {split}/<class>/<image>)")
        counts[split] = {c: sum(f.suffix.lower() in IMG_EXTENSIONS for f in (folder / c).iterdir()) for c in classes}
        empty = [c for c, n in counts[split].items() if n == 0]
        if empty:
            raise DataError(f"{folder}: class folder(s) without images ({', '.join(IMG_EXTENSIONS)}): "
                            f"{', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''}",
                            [f"{folder / c}: no images" for c in empty])
    train, val = set(counts["train"]), set(counts["val"])
    extra, lacking = sorted(val - train), sorted(train - val)
    if extra or lacking:
        raise DataError(f"{root / 'val'}: classes differ from {root / 'train'}: only in val {extra[:10]}, "
                        f"only in train {lacking[:10]}")
    return counts


def create_transforms(recipe: PretrainRecipe) -> tuple[Any, Any]:
    """timm's training (random resized crop, flip, RandAugment, colour jitter) and evaluation transforms.

    Shape:
        PIL image of any size -> (3, img_size, img_size) float tensor in [0, 1] (before RandAugment's ops).
    """
    train = create_transform(recipe.img_size, is_training=True, scale=recipe.scale, hflip=recipe.hflip,
                             color_jitter=recipe.color_jitter, auto_augment=recipe.auto_augment,
                             interpolation=recipe.interpolation, mean=_MEAN, std=_STD)
    val = create_transform(recipe.img_size, is_training=False, crop_pct=recipe.crop_pct,
                           interpolation=recipe.interpolation, mean=_MEAN, std=_STD)
    return train, val


def build_model(model_name: str, num_classes: int, recipe: PretrainRecipe) -> tuple[nn.Module, dict[str, Any]]:
    """The encoder with a ``num_classes`` head, and the keyword arguments that rebuild it."""
    kwargs = {"in_chans": 3, "num_classes": num_classes, "drop_path_rate": recipe.drop_path}
    return create_model(model_name, **kwargs), kwargs


def build_optimizer(model: nn.Module, recipe: PretrainRecipe) -> torch.optim.Optimizer:
    """The ImageNet recipe's AdamW: norms, biases and other 1-D parameters in a group without weight decay."""
    return loop.build_optimizer(model, recipe.lr, recipe.weight_decay, decay_norms_and_biases=False)


def run_dirs(p: Params, model: str) -> tuple[Path, Path]:
    """Checkpoints (``last.pt``, ``encoder.pt``) and reports (``history.csv``, ``metrics.json``) of ``model``."""
    return p.base.checkpoints_dir / "pretrain" / model, p.base.reports_dir / "pretrain" / model


def _fingerprint(train: ImageFolder, val: ImageFolder) -> str:
    """Hash of the class list and file names, so a checkpoint is only resumed on the same tree."""
    h = hashlib.sha1(repr(train.classes).encode())
    for ds in (train, val):
        root = Path(ds.root)
        for path, label in ds.samples:
            h.update(f"{Path(path).relative_to(root)}:{label}\n".encode())
    return h.hexdigest()


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp_dtype: torch.dtype | None
              ) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) over this rank's share of ``val``, summed over ranks."""
    model.eval()
    correct1 = correct5 = n = 0.0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        top1, top5 = accuracy(logits.float(), targets, topk=(1, 5))
        correct1 += top1.item() * len(targets) / 100
        correct5 += top5.item() * len(targets) / 100
        n += len(targets)
    correct1, correct5, n = sum_over_ranks([correct1, correct5, n], device)
    return 100 * correct1 / n, 100 * correct5 / n


def _amp_dtype(recipe: PretrainRecipe, device: torch.device) -> torch.dtype | None:
    if not recipe.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class _Classification(Task):
    """Encoder pretraining as the epoch loop runs it: model, EMA, AMP scaler, per-epoch schedule with warm-up."""

    def __init__(self, model_name: str, recipe: PretrainRecipe, out_dir: Path, reports_dir: Path | None, seed: int,
                 device: torch.device, num_workers: int) -> None:
        self.name, self.recipe, self.out_dir, self.reports_dir, self.device = (model_name, recipe, Path(out_dir),
                                                                               reports_dir, device)
        rank, world = rank_world()
        train_tf, val_tf = create_transforms(recipe)
        self.train_set = ImageFolder(str(Path(recipe.data) / "train"), transform=train_tf)
        val_set = ImageFolder(str(Path(recipe.data) / "val"), transform=val_tf)
        # The tree's file list stands in for its path, so a copy of the data elsewhere still resumes.
        self.fingerprint = _fingerprint(self.train_set, val_set)
        random_seed(seed)
        self.model, self.model_kwargs = build_model(model_name, len(self.train_set.classes), recipe)
        self.model.to(device)
        self.ema = ModelEmaV3(self.model, decay=recipe.ema_decay, use_warmup=recipe.ema_warmup)
        self.optimizer = build_optimizer(self.model, recipe)
        self.scheduler, _ = create_scheduler_v2(self.optimizer, sched="cosine", num_epochs=recipe.epochs,
                                                min_lr=recipe.min_lr, warmup_lr=recipe.warmup_lr,
                                                warmup_epochs=recipe.warmup_epochs)
        self.amp_dtype = _amp_dtype(recipe, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.loss_fn = LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
        self.step_count, self.best = 0, {"val_top1": -1.0}
        self.sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.loader = DataLoader(self.train_set, batch_size=recipe.batch_size // world, sampler=self.sampler,
                                 drop_last=True, num_workers=num_workers, pin_memory=device.type == "cuda",
                                 persistent_workers=num_workers > 0)
        # Each rank scores its own slice, without the padding a DistributedSampler adds; counts are summed.
        self.val_loader = DataLoader(Subset(val_set, range(rank, len(val_set), world)),
                                     batch_size=recipe.batch_size // world, num_workers=num_workers,
                                     pin_memory=device.type == "cuda")
        self.val_size = len(val_set)

    def state_dict(self) -> dict[str, Any]:
        return {"model_name": self.name, "model_kwargs": self.model_kwargs, "classes": self.train_set.classes,
                "recipe": asdict(self.recipe), "model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step_count, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.ema.module.load_state_dict(state["ema"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step_count, self.best = state["step"], state["best"]

    def begin(self, start: int) -> None:
        self.scheduler.step(start)
        self.net = wrap_ddp(self.model, self.device)
        logger.info("pretraining %s on %s: %d classes, %d train / %d val images, %d process(es), %d threads each, "
                    "AMP %s", self.name, self.recipe.data, len(self.train_set.classes), len(self.train_set),
                    self.val_size, rank_world()[1], torch.get_num_threads(), self.amp_dtype)

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self.loader)

    def batches(self, epoch: int) -> DataLoader:
        self.tic = time.perf_counter()
        self.sampler.set_epoch(epoch)
        self.net.train()
        self.lr = self.optimizer.param_groups[0]["lr"]
        return self.loader

    def step(self, epoch: int, index: int, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        images, targets = (t.to(self.device, non_blocking=True) for t in batch)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_fn(self.net(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), self.recipe.clip_grad, mode="norm")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_count += 1
        self.ema.update(self.model, step=self.step_count)
        return {"loss": loss.item(), "n": len(targets)}

    def end_epoch(self, epoch: int, steps: list[dict[str, float]]) -> dict[str, Any]:
        self.scheduler.step(epoch + 1)
        average_batchnorm(self.model, self.ema.module)
        loss_sum = seen = 0.0
        for s in steps:
            loss_sum += s["loss"] * s["n"]
            seen += s["n"]
        loss_sum, seen = sum_over_ranks([loss_sum, seen], self.device)
        top1, top5 = _evaluate(self.model, self.val_loader, self.device, self.amp_dtype)
        ema_top1, ema_top5 = _evaluate(self.ema.module, self.val_loader, self.device, self.amp_dtype)
        row = {"lr": self.lr, "train_loss": loss_sum / max(seen, 1), "val_top1": top1, "val_top5": top5,
               "val_ema_top1": ema_top1, "val_ema_top5": ema_top5, "seconds": time.perf_counter() - self.tic}
        logger.info("epoch %d: loss %.4f, val top-1 %.2f (EMA %.2f), %.1f s", epoch + 1, row["train_loss"], top1,
                    ema_top1, row["seconds"])
        return row

    best_file = "encoder.pt"

    def score(self, row: dict[str, Any]) -> float:
        return max(row["val_ema_top1"], row["val_top1"])  # the better of the EMA and the raw weights

    def on_best(self, row: dict[str, Any]) -> None:
        source = "ema" if row["val_ema_top1"] > row["val_top1"] else "model"
        prefix = "val_ema" if source == "ema" else "val"
        self.best = {"source": source, "epoch": row["epoch"], "val_top1": row[f"{prefix}_top1"],
                     "val_top5": row[f"{prefix}_top5"]}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{row['train_loss']:.4f}", "top1": f"{row['val_top1']:.2f}"}

    def best_checkpoint(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``encoder.pt``: the better weights of the best epoch, what built them, and their scores."""
        weights = (self.ema.module if self.best["source"] == "ema" else self.model).state_dict()
        keep = ("model_name", "model_kwargs", "classes", "recipe", "config", "git_revision")
        return {**{k: payload[k] for k in keep}, **self.best, "model": weights}

    def write_reports(self, history: list[dict[str, Any]], final: bool) -> None:
        _write_reports(history, self.best, self.name, self.reports_dir, final)


@keep_freed_memory()
def pretrain(model_name: str, recipe: PretrainRecipe, out_dir: Path, *, seed: int, device: torch.device,
             reports_dir: Path | None = None, num_workers: int = 0, resume: bool = True,
             stop_after: int | None = None) -> pd.DataFrame:
    """Train ``model_name`` (an encoder with a head) to classify ``recipe.data``; resume from ``out_dir/last.pt``.

    Under ``torchrun`` (an initialised process group) every rank calls this with its own device; the
    global batch ``recipe.batch_size`` is split evenly over the ranks. The epochs are
    :func:`rwkvlab.engine.loop.run_epochs` over a classification task.

    Args:
        model_name: a registered encoder with a classification head, e.g. ``rwkv_enc_t``.
        recipe: data, optimiser, schedule, augmentation and regularisation settings.
        out_dir: ``last.pt`` (every epoch: model, EMA, optimiser, scheduler, scaler, history) and
            ``encoder.pt`` (the better of model and EMA by val top-1 so far, the weights to transfer).
        seed: base seed (see the module docstring).
        device: this rank's device.
        reports_dir: ``history.csv`` (every epoch) and ``metrics.json`` (at the end), if given.
        num_workers: DataLoader workers per rank.
        resume: continue after the last completed epoch of ``out_dir/last.pt`` when it was written under the
            same model, recipe, seed and data; ``False`` starts afresh.
        stop_after: end after this many epochs of this call (to test resuming); ``None`` runs to the end.

    Returns:
        one row per epoch: epoch, lr, train_loss, val top-1/top-5 of the model and of its EMA (%), seconds.

    Raises:
        DataError: the tree is not an ImageFolder with the same classes in train and val.
        ValueError: the batch does not split evenly over the ranks, or img_size is not a multiple of 16.
    """
    world = rank_world()[1]
    if recipe.batch_size % world:
        raise ValueError(f"batch_size {recipe.batch_size} must be divisible by the number of processes ({world})")
    if recipe.img_size % 16:
        raise ValueError(f"img_size must be a multiple of 16 (the encoder downsamples by 16), got {recipe.img_size}")
    check_image_folder(recipe.data)
    task = _Classification(model_name, recipe, out_dir, reports_dir, seed, device, num_workers)
    config: dict[str, Any] = {"model": model_name, "seed": seed,
                              "recipe": {**asdict(recipe), "data": task.fingerprint}}
    history = run_epochs(task, out_dir, config, epochs=recipe.epochs, seed=seed, stop_after=stop_after,
                         resume=resume)
    return pd.DataFrame(history, columns=HISTORY)


def _write_reports(history: list[dict], best: dict[str, Any], model_name: str, reports_dir: Path | None,
                   final: bool) -> None:
    if reports_dir is None:
        return
    frame = pd.DataFrame(history, columns=HISTORY)
    atomic_write(Path(reports_dir) / "history.csv", lambda f: frame.to_csv(f, index=False))
    if final and history:
        last = history[-1]
        final = ("train_loss", "val_top1", "val_top5", "val_ema_top1", "val_ema_top5")
        metrics = {"model": model_name, "epochs": last["epoch"], "final": {k: last[k] for k in final},
                   "best": best, "seconds": float(frame["seconds"].sum())}
        atomic_write(Path(reports_dir) / "metrics.json", lambda f: f.write_text(json.dumps(metrics, indent=2) + "\n"))


def launch(p: Params, model: str, device: torch.device, nproc: int | None = None) -> pd.DataFrame:
    """Pretrain ``model`` (one of ``pretrain.models``) with the ``pretrain`` section of ``p``: in this process, or
    under ``torchrun`` when ``nproc > 1``.

    Always resumes (the stage's checkpoint folder is persistent). ``nproc`` defaults to ``pretrain.nproc``.

    Returns:
        the history (one row per epoch).
    """
    if model not in p.pretrain.models:
        raise ValueError(f"params.yaml: {model!r} is not in pretrain.models {list(p.pretrain.models)}")
    nproc = p.pretrain.nproc if nproc is None else nproc
    out_dir, reports_dir = run_dirs(p, model)
    if nproc > 1:
        cmd = torchrun_command(nproc, "rwkvlab.pretrain", ["--params", str(p.file), "--model", model,
                                                           "--device", device.type, "--resume", "--out", str(out_dir),
                                                           "--reports", str(reports_dir)])
        logger.info("launching %s", " ".join(cmd))
        subprocess.run(cmd, check=True)
        return pd.read_csv(reports_dir / "history.csv")
    return pretrain(model, p.pretrain.run_recipe(), out_dir, seed=p.base.seed, device=device,
                    reports_dir=reports_dir, num_workers=p.pretrain.num_workers)


def with_overrides(recipe: PretrainRecipe, **changes: Any) -> PretrainRecipe:
    """``recipe`` with the given fields replaced; ``None`` values keep the recipe's own."""
    return replace(recipe, **{k: v for k, v in changes.items() if v is not None})
