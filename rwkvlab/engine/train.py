"""The training loop: linear, seeded per epoch and rank, checkpointed every epoch, resumable on any number of ranks.

Seeding every epoch (global RNGs and the augmentation's own state) makes a run that was killed and
resumed produce the same weights as one that was not. The same :func:`fit` runs in a plain process
and, under ``torchrun``, as one rank of a DDP run (:mod:`rwkvlab.engine.distributed` is the only
place that knows the rank); a step is :func:`train_step`.

Data order and seeds. Epoch ``e`` on rank ``r`` of ``W`` seeds the global RNGs (drop path) and the
augmentation with ``seed + e * W + r`` (``seed + e`` in a plain process). A plain process shuffles
with torch's ``RandomSampler`` drawn right after that seeding; ``W >= 2`` ranks share
``DistributedSampler``'s permutation of ``seed + e``, which is the same for every ``W``: global step
``j`` trains on its samples ``j*B .. (j+1)*B - 1`` (``B`` = ``batch_size``, the global batch, split
``W`` ways; the last step is padded with the permutation's first samples so every rank has as many).
The checkpoint holds no per-rank state, so a run resumes on any number of ranks; the epochs after the
resume follow the order and seeds of the new ``W``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from monai.utils import set_determinism
from timm.utils import distribute_bn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from rwkvlab.config import Recipe
from rwkvlab.data.augment import train_transforms
from rwkvlab.data.cache import Prepared
from rwkvlab.data.loader import SegArrays, as_float
from rwkvlab.engine.checkpoint import git_revision, load_checkpoint, save_checkpoint
from rwkvlab.engine.distributed import barrier, broadcast_from_main, rank_world, sum_over_ranks
from rwkvlab.engine.evaluate import evaluate_split, summarize
from rwkvlab.engine.losses import seg_loss
from rwkvlab.engine.pretrain import load_pretrained_encoder
from rwkvlab.io import atomic_write
from rwkvlab.models import create_model

logger = logging.getLogger(__name__)

__all__ = ["fit", "train_step", "build_optimizer", "check_recipe", "NonFiniteLossError", "data_fingerprint",
           "model_kwargs_for"]

_HISTORY = ["epoch", "lr", "train_loss", "val_dsc"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and step and the checkpoint kept."""


def data_fingerprint(data: Prepared) -> str:
    """Hash of the prepared arrays and split, so a checkpoint is only resumed on the same data."""
    h = hashlib.sha1()
    for arr in (data.images, data.masks, data.ids, *data.splits.values()):
        h.update(np.ascontiguousarray(arr).tobytes())
    for vid in sorted(data.volumes):
        h.update(vid.encode())
        h.update(data.volumes[vid][1].tobytes())
    h.update(repr(sorted(data.volume_splits.items())).encode())
    return h.hexdigest()


def _has_val(data: Prepared) -> bool:
    return bool(len(data.splits.get("val", [])) or data.volume_splits.get("val"))


def _val_dsc(model: torch.nn.Module, data: Prepared, batch_size: int, device: torch.device) -> float:
    """Mean DSC (%) over the validation cases with the test protocol (SPEC §7); NaN without a val split."""
    if not _has_val(data):
        return float("nan")
    return summarize(evaluate_split(model, data, "val", batch_size, device)[0])["dsc"]


def model_kwargs_for(data: Prepared, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every keyword argument that rebuilds the model for ``data``: its channels and classes plus ``model_kwargs``."""
    extra = dict(model_kwargs or {})
    clash = sorted({"in_chans", "num_classes"} & set(extra))
    if clash:
        raise ValueError(f"model kwargs {clash} come from the dataset ({data.dataset}); remove them")
    return {"in_chans": data.in_chans, "num_classes": data.num_classes, **extra}


def check_recipe(recipe: Recipe, world: int, device: torch.device) -> None:
    """Reject recipe settings that cannot run with ``world`` processes on ``device``.

    Raises:
        ValueError: naming the recipe field: a global batch that does not split evenly over the ranks,
            ``sync_bn`` on a backend without SyncBatchNorm (the CPU), bf16 on a GPU without it, a negative
            ``clip_grad`` or ``val_every``.
    """
    if recipe.batch_size % world:
        raise ValueError(f"recipe batch_size {recipe.batch_size} (the global batch) must be divisible by the number "
                         f"of processes ({world})")
    if recipe.sync_bn and world > 1 and device.type == "cpu":
        raise ValueError("recipe sync_bn: torch's SyncBatchNorm runs on GPUs only; set sync_bn: false on the CPU "
                         "(per-rank statistics, averaged after every epoch)")
    if recipe.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"recipe precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp32")
    if recipe.clip_grad < 0:
        raise ValueError(f"recipe clip_grad must be >= 0 (0: no clipping), got {recipe.clip_grad}")
    if recipe.val_every < 0:
        raise ValueError(f"recipe val_every must be >= 0 (0: validate once per epoch), got {recipe.val_every}")


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW with the recipe's lr and weight decay; torch's fused kernel when ``fused_adamw`` and the device has one."""
    kwargs = {"lr": recipe.lr, "weight_decay": recipe.weight_decay}
    if recipe.fused_adamw:
        try:
            return torch.optim.AdamW(model.parameters(), **kwargs, fused=True)
        except RuntimeError as err:  # no fused kernel for these parameters' device
            logger.info("fused AdamW unavailable (%s); using the default implementation", err)
    return torch.optim.AdamW(model.parameters(), **kwargs)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[torch.Tensor, torch.Tensor],
               torch.Tensor], images: torch.Tensor, labels: torch.Tensor, recipe: Recipe) -> float:
    """One optimizer step on this rank's share of the global batch; returns the loss averaged over the ranks.

    A non-finite loss (on any rank) leaves the weights as they are: no backward, no step, the value is
    returned for the caller to stop on. The gradients stay on the parameters after the step (clipped to
    ``recipe.clip_grad`` in global norm when it is positive).

    Shape:
        images (N, C, H, W) float in [0, 1], labels (N, 1, H, W) integer classes; N = batch_size / world.
    """
    if recipe.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16"):
        logits = net(images)
    loss = loss_fn(logits.float(), labels)
    value = loss.item()
    world = rank_world()[1]
    if world > 1:
        value = sum_over_ranks([value], images.device)[0] / world
    if not math.isfinite(value):
        return value
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.clip_grad > 0:
        nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_grad)
    optimizer.step()
    return value


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, epoch: int, num_workers: int,
            device: torch.device) -> DataLoader:
    """This rank's batches of ``dataset`` for ``epoch`` (the order of the module docstring)."""
    rank, world = rank_world()
    if world == 1:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False, num_workers=num_workers)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size // world, sampler=sampler, drop_last=False,
                      num_workers=num_workers, pin_memory=device.type == "cuda")


def fit(model_name: str, data: Prepared, recipe: Recipe, run_dir: Path, *, seed: int,
        device: torch.device, model_kwargs: dict[str, Any] | None = None, init: Path | None = None,
        num_workers: int = 0, history_csv: Path | None = None, stop_after: int | None = None) -> pd.DataFrame:
    """Train ``model_name`` on the ``train`` split, select on ``val``; resume from ``run_dir/last.pt``.

    Without a ``val`` split (Synapse: the paper tests the last epoch) ``best.pt`` is the last epoch. The
    checkpoints record the model's name and keyword arguments (``model_name``, ``model_kwargs``) and what
    inference needs (``meta``: image size, channels, intensity convention, class names), so
    :func:`rwkvlab.engine.inference.load_trained` rebuilds the model from the checkpoint alone.

    Under ``torchrun`` (an initialised process group) every rank calls this with its own device: DDP over
    the global batch ``recipe.batch_size``, the loss averaged over the ranks, BatchNorm statistics synced
    (``recipe.sync_bn``) or averaged after every epoch; rank 0 alone validates and writes files while the
    others wait. ``recipe.val_every`` adds validations inside the epoch (with the running statistics of
    rank 0; ``precise_bn`` recomputes them at the end of an epoch only) that may update ``best.pt``.

    Args:
        model_name: a registered model.
        data: a prepared dataset (:func:`rwkvlab.data.load_prepared`).
        recipe: optimiser, schedule, loss, precision and speed settings.
        run_dir: where ``last.pt`` (every epoch) and ``best.pt`` (best val DSC) go.
        seed: base seed (see the module docstring).
        device: where this rank trains.
        model_kwargs: keyword arguments of the model besides channels and classes (an ablation variant's switches).
        init: an ``encoder.pt`` of the pretrain stage to start the encoder from (``recipe.init`` resolved).
        num_workers: DataLoader workers per rank.
        history_csv: rewritten after every epoch with the history so far (DVC plots), if given.
        stop_after: end after this many epochs of this call (to test resuming); ``None`` runs to the end.

    Returns:
        one row per epoch: epoch, lr, train_loss (mean over the steps of the loss averaged over the ranks), val_dsc.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; ``last.pt`` keeps the last completed epoch.
        ValueError: see :func:`check_recipe`.
    """
    rank, world = rank_world()
    check_recipe(recipe, world, device)
    run_dir = Path(run_dir)
    kwargs = model_kwargs_for(data, model_kwargs)
    config: dict[str, Any] = {"model": model_name, "model_kwargs": kwargs, "recipe": asdict(recipe), "seed": seed,
                              "data": data_fingerprint(data), "init": str(init) if init else None}
    meta = {"dataset": data.dataset, "class_names": list(data.class_names), "image_size": list(data.images.shape[1:3]),
            "in_chans": data.in_chans, "intensity": "uint8" if data.images.dtype == np.uint8 else "unit_float"}
    set_determinism(seed)
    model = create_model(model_name, **kwargs)
    if init is not None:
        load_pretrained_encoder(model, init)
    if recipe.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device, memory_format=torch.channels_last if recipe.channels_last else torch.preserve_format)
    optimizer = build_optimizer(model, recipe)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs, eta_min=recipe.min_lr)
    loss_fn = seg_loss(recipe.ce_weight, recipe.dice_weight)
    start, step, best, history, validations = 0, 0, -1.0, [], []

    state = load_checkpoint(run_dir / "last.pt", config)
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best, history = state["epoch"] + 1, state["best_val_dsc"], state["history"]
        step, validations = state.get("step", 0), state.get("validations", [])
        logger.info("resuming %s from epoch %d", run_dir / "last.pt", start)
    # Per-rank BatchNorm statistics are averaged once per epoch, so no buffer is broadcast every step.
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                  forward_sync_buffers=False) if world > 1 else model
    if recipe.compile:
        net = torch.compile(net)
    logger.info("training %s on %s: %d process(es), %s%s%s", model_name, data.dataset, world, recipe.precision,
                ", channels_last" if recipe.channels_last else "", ", compiled" if recipe.compile else "")

    def payload(epoch: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step, "best_val_dsc": best,
                "history": history, "validations": validations, "model_name": model_name, "model_kwargs": kwargs,
                "meta": meta, "config": config, "git_revision": git_revision()}

    transform = train_transforms(recipe.augment, data.images.shape[1:3], seed)
    train_set = SegArrays(data, "train", transform)
    end = recipe.epochs if stop_after is None else min(recipe.epochs, start + stop_after)
    for epoch in range(start, end):
        set_determinism(seed + epoch * world + rank)
        if transform is not None:
            transform.set_random_state(seed + epoch * world + rank)
        loader = _loader(train_set, recipe.batch_size, True, seed, epoch, num_workers, device)
        net.train()
        losses = []
        for i, batch in enumerate(tqdm(loader, desc=f"{model_name} epoch {epoch + 1}/{recipe.epochs}", unit="batch",
                                       leave=False, disable=rank != 0)):
            loss = train_step(net, optimizer, loss_fn, as_float(batch["image"].to(device)),
                              batch["label"].to(device).round().long(), recipe)
            if not math.isfinite(loss):
                kept = (f"{run_dir / 'last.pt'} keeps epoch {epoch}, the last good one" if epoch > 0 else
                        "no checkpoint was written (the first epoch did not finish)")
                raise NonFiniteLossError(f"{model_name}: the training loss is {loss} at epoch {epoch + 1}, step "
                                         f"{i + 1} of {len(loader)} (optimizer step {step + 1}); stopped. {kept}")
            step += 1
            losses.append(loss)
            if recipe.val_every and step % recipe.val_every == 0 and i + 1 < len(loader) and _has_val(data):
                if rank == 0:
                    val_dsc = _val_dsc(model, data, recipe.batch_size, device)
                    validations.append({"epoch": epoch + 1, "step": step, "val_dsc": val_dsc})
                    logger.info("epoch %d, step %d: val DSC %.2f", epoch + 1, step, val_dsc)
                    if val_dsc > best:
                        best = val_dsc
                        save_checkpoint(run_dir / "best.pt", payload(epoch))
                    model.train()
                barrier()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if recipe.precise_bn:
            update_bn((as_float(b["image"].to(device)) for b in
                       _loader(SegArrays(data, "train"), recipe.batch_size, False, seed, epoch, num_workers, device)),
                      model)
        if world > 1 and not recipe.sync_bn:
            distribute_bn(model, world, reduce=True)
        val_dsc = broadcast_from_main(_val_dsc(model, data, recipe.batch_size, device) if rank == 0 else None)
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)), "val_dsc": val_dsc})
        validations.append({"epoch": epoch + 1, "step": step, "val_dsc": val_dsc})
        logger.info("epoch %d: loss %.4f, val DSC %.2f", epoch + 1, history[-1]["train_loss"], val_dsc)
        improved = math.isnan(val_dsc) or val_dsc > best
        best = val_dsc if improved else best
        if rank == 0:
            save_checkpoint(run_dir / "last.pt", payload(epoch))
            if improved:
                atomic_write(run_dir / "best.pt", lambda f: shutil.copyfile(run_dir / "last.pt", f))
            _write_history(history, history_csv)
        barrier()  # no rank starts the next epoch (or returns) before the checkpoint exists
    if rank == 0:
        _write_history(history, history_csv)  # also when resuming a finished run
    return pd.DataFrame(history, columns=_HISTORY)


def _write_history(history: list[dict], path: Path | None) -> None:
    if path is not None:
        frame = pd.DataFrame(history, columns=_HISTORY)
        atomic_write(path, lambda f: frame.to_csv(f, index=False))
