"""The training loop: linear, seeded per epoch, checkpointed every epoch, resumable.

Seeding every epoch from ``seed + epoch`` (global RNGs and the augmentation's own state) makes
a run that was killed and resumed produce the same weights as one that was not.
"""

from __future__ import annotations

import hashlib
import math
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.utils import set_determinism
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rwkvlab.config import Recipe
from rwkvlab.data.augment import train_transforms
from rwkvlab.data.cache import Prepared
from rwkvlab.data.loader import SegArrays, as_float
from rwkvlab.engine.checkpoint import git_revision, load_checkpoint, save_checkpoint
from rwkvlab.engine.evaluate import evaluate_split, summarize
from rwkvlab.engine.losses import seg_loss
from rwkvlab.io import atomic_write
from rwkvlab.models import create_model

logger = logging.getLogger(__name__)

__all__ = ["fit", "data_fingerprint", "model_kwargs_for"]

_HISTORY = ["epoch", "lr", "train_loss", "val_dsc"]


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


def _val_dsc(model: torch.nn.Module, data: Prepared, batch_size: int, device: torch.device) -> float:
    """Mean DSC (%) over the validation cases with the test protocol (SPEC §7); NaN without a val split."""
    if not len(data.splits.get("val", [])) and not data.volume_splits.get("val"):
        return float("nan")
    return summarize(evaluate_split(model, data, "val", batch_size, device)[0])["dsc"]


def model_kwargs_for(data: Prepared, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every keyword argument that rebuilds the model for ``data``: its channels and classes plus ``model_kwargs``."""
    extra = dict(model_kwargs or {})
    clash = sorted({"in_chans", "num_classes"} & set(extra))
    if clash:
        raise ValueError(f"model kwargs {clash} come from the dataset ({data.dataset}); remove them")
    return {"in_chans": data.in_chans, "num_classes": data.num_classes, **extra}


def fit(model_name: str, data: Prepared, recipe: Recipe, run_dir: Path, *, seed: int,
        device: torch.device, model_kwargs: dict[str, Any] | None = None, init: Path | None = None,
        num_workers: int = 0, history_csv: Path | None = None, stop_after: int | None = None) -> pd.DataFrame:
    """Train ``model_name`` on the ``train`` split, select on ``val``; resume from ``run_dir/last.pt``.

    Without a ``val`` split (Synapse: the paper tests the last epoch) ``best.pt`` is the last epoch. The
    checkpoints record the model's name and keyword arguments (``model_name``, ``model_kwargs``) and what
    inference needs (``meta``: image size, channels, intensity convention, class names), so
    :func:`rwkvlab.engine.inference.load_trained` rebuilds the model from the checkpoint alone.

    Args:
        model_name: a registered model.
        data: a prepared dataset (:func:`rwkvlab.data.load_prepared`).
        recipe: optimiser, schedule and loss settings.
        run_dir: where ``last.pt`` (every epoch) and ``best.pt`` (best val DSC) go.
        seed: base seed; epoch ``e`` is seeded with ``seed + e``.
        device: where to train.
        model_kwargs: keyword arguments of the model besides channels and classes (an ablation variant's switches).
        init: an ``encoder.pt`` of the pretrain stage to start the encoder from (``recipe.init`` resolved).
        num_workers: DataLoader workers.
        history_csv: rewritten after every epoch with the history so far (DVC plots), if given.
        stop_after: end after this many epochs of this call (to test resuming); ``None`` runs to the end.

    Returns:
        one row per epoch: epoch, lr, train_loss, val_dsc.
    """
    run_dir = Path(run_dir)
    kwargs = model_kwargs_for(data, model_kwargs)
    config: dict[str, Any] = {"model": model_name, "model_kwargs": kwargs, "recipe": asdict(recipe), "seed": seed,
                              "data": data_fingerprint(data), "init": str(init) if init else None}
    meta = {"dataset": data.dataset, "class_names": list(data.class_names), "image_size": list(data.images.shape[1:3]),
            "in_chans": data.in_chans, "intensity": "uint8" if data.images.dtype == np.uint8 else "unit_float"}
    set_determinism(seed)
    model = create_model(model_name, **kwargs)
    if init is not None:
        from rwkvlab.engine.pretrain import load_pretrained_encoder

        load_pretrained_encoder(model, init)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs, eta_min=recipe.min_lr)
    loss_fn = seg_loss(recipe.ce_weight, recipe.dice_weight)
    start, best, history = 0, -1.0, []

    state = load_checkpoint(run_dir / "last.pt", config)
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best, history = state["epoch"] + 1, state["best_val_dsc"], state["history"]
        logger.info("resuming %s from epoch %d", run_dir / "last.pt", start)

    transform = train_transforms(recipe.augment, data.images.shape[1:3], seed)
    train_set = SegArrays(data, "train", transform)
    end = recipe.epochs if stop_after is None else min(recipe.epochs, start + stop_after)
    for epoch in range(start, end):
        set_determinism(seed + epoch)
        if transform is not None:
            transform.set_random_state(seed + epoch)
        loader = DataLoader(train_set, batch_size=recipe.batch_size, shuffle=True, drop_last=False,
                            num_workers=num_workers)
        model.train()
        losses = []
        for batch in tqdm(loader, desc=f"{model_name} epoch {epoch + 1}/{recipe.epochs}", unit="batch", leave=False):
            logits = model(as_float(batch["image"].to(device)))
            loss = loss_fn(logits, batch["label"].to(device).round().long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if recipe.precise_bn:
            plain = DataLoader(SegArrays(data, "train"), batch_size=recipe.batch_size, num_workers=num_workers)
            update_bn((as_float(b["image"].to(device)) for b in plain), model)
        val_dsc = _val_dsc(model, data, recipe.batch_size, device)
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": float(np.mean(losses)), "val_dsc": val_dsc})
        logger.info("epoch %d: loss %.4f, val DSC %.2f", epoch + 1, history[-1]["train_loss"], val_dsc)
        improved = math.isnan(val_dsc) or val_dsc > best
        best = val_dsc if improved else best
        save_checkpoint(run_dir / "last.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch, "best_val_dsc": best, "history": history, "model_name": model_name,
            "model_kwargs": kwargs, "meta": meta, "config": config, "git_revision": git_revision(),
        })
        if improved:
            atomic_write(run_dir / "best.pt", lambda f: shutil.copyfile(run_dir / "last.pt", f))
        _write_history(history, history_csv)
    _write_history(history, history_csv)  # also when resuming a finished run
    return pd.DataFrame(history, columns=_HISTORY)


def _write_history(history: list[dict], path: Path | None) -> None:
    if path is not None:
        frame = pd.DataFrame(history, columns=_HISTORY)
        atomic_write(path, lambda f: frame.to_csv(f, index=False))
