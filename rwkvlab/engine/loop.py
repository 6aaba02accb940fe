"""The one epoch loop: segmentation training (:mod:`.train`) and encoder pretraining (:mod:`.pretrain`) are
:class:`Task` s that it runs, each injecting its own step, validation and state.

What the loop owns, so that no training carries a copy of it: resuming from ``last.pt`` when it was written
under the same config, the per-epoch seeding, the progress bar, the history, the checkpoints (``last.pt``
every epoch, the best file when the task's watched score improves: :class:`Checkpoints`), which rank writes,
and the barrier after every checkpoint. :func:`build_optimizer`, :func:`wrap_ddp` and :func:`average_batchnorm` are
the parts both tasks build from. The rank itself is known to :mod:`rwkvlab.engine.distributed` alone.

Seeding. Epoch ``e`` on rank ``r`` of ``W`` seeds torch, numpy and random with ``seed + e * W + r`` before
the task draws its batches, so a run that was killed and resumed produces the weights of one that was not.
"""

from __future__ import annotations

import logging
import math
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from timm.layers import DropPath
from timm.optim import create_optimizer_v2
from timm.utils import distribute_bn, random_seed
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import update_bn

from rwkvlab.engine.checkpoint import git_revision, load_checkpoint, save_checkpoint
from rwkvlab.engine.distributed import barrier, rank_world
from rwkvlab.io import atomic_write
from rwkvlab.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["Task", "Checkpoints", "run_epochs", "build_optimizer", "wrap_ddp", "precise_bn", "average_batchnorm"]


class Task(ABC):
    """One training, as :func:`run_epochs` drives it.

    ``name`` titles the progress bar. The checkpoint ``last.pt`` holds what :meth:`state_dict` returns plus
    the loop's ``epoch``, ``history``, ``config``, ``git_revision`` and ``best_score``; :meth:`load_state_dict`
    gets the task's part back. The loop keeps the best epoch, by :meth:`score`, in ``best_file``.
    """

    name: str
    best_file: str = "best.pt"  # beside last.pt: the weights of the best epoch (:meth:`best_checkpoint`)
    history: list[dict[str, Any]]  # set by the loop: the rows so far
    config: dict[str, Any]  # set by the loop: what a checkpoint must have been written under to be resumed
    checkpoints: Checkpoints  # set by the loop; a validation inside an epoch offers its score to it

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the loop's keys that a resumed run needs (weights, optimizer, scheduler, ...)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""

    def begin(self, start: int) -> None:
        """Called once before the first epoch of this call (``start``: the first epoch to train)."""

    @abstractmethod
    def steps_per_epoch(self, epoch: int) -> int:
        """Optimizer steps in ``epoch`` on this rank (the progress bar's length)."""

    @abstractmethod
    def batches(self, epoch: int) -> Iterable[Any]:
        """This rank's batches of ``epoch``; called right after the loop seeded the epoch."""

    @abstractmethod
    def step(self, epoch: int, index: int, batch: Any) -> dict[str, float]:
        """One optimizer step on ``batch`` (the ``index``-th of the epoch); its values for :meth:`end_epoch`."""

    @abstractmethod
    def end_epoch(self, epoch: int, steps: list[dict[str, float]]) -> dict[str, Any]:
        """After the last step: schedule, statistics, validation; the epoch's history row (without ``epoch``)."""

    @abstractmethod
    def score(self, row: dict[str, Any]) -> float:
        """The watched metric of an epoch's history row, higher is better; NaN when there is nothing to validate on
        (every epoch is then the best, and the best file the last epoch's)."""

    def on_best(self, row: dict[str, Any]) -> None:
        """Called on every rank when the epoch of ``row`` is the best so far, before its checkpoints are written."""

    def best_checkpoint(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """What ``best_file`` holds, given the payload of ``last.pt``; ``None``: the payload itself."""
        return None

    def payload(self, epoch: int) -> dict[str, Any]:
        """What ``last.pt`` of ``epoch`` holds: :meth:`state_dict` plus the loop's keys (also for a task that writes a
        checkpoint inside an epoch)."""
        return {**self.state_dict(), "epoch": epoch, "history": self.history, "config": self.config,
                "git_revision": git_revision(), "best_score": self.checkpoints.best}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after an epoch."""
        return {"loss": f"{row['train_loss']:.4f}"}

    def write_reports(self, history: list[dict[str, Any]], final: bool) -> None:
        """Rewrite the history files (``final``: also what is only written at the end); rank 0 only."""


class Checkpoints:
    """A run's checkpoints, kept as timm's ``CheckpointSaver`` keeps them: ``last.pt`` after every epoch, and the
    task's best file whenever its watched score beats the best so far (:meth:`Task.score`; a NaN score counts
    as the best). Rank 0 writes; every rank keeps the score, so every rank agrees on the best epoch."""

    def __init__(self, task: Task, run_dir: Path) -> None:
        self.task, self.last, self.best_path = task, Path(run_dir) / "last.pt", Path(run_dir) / task.best_file
        self.best = -math.inf

    def improves(self, score: float) -> bool:
        """Whether ``score`` is the best so far, which it then becomes."""
        if math.isnan(score) or score > self.best:
            self.best = score
            return True
        return False

    def save(self, payload: dict[str, Any], improved: bool) -> None:
        """``last.pt``, and the best file when the epoch ``improved``."""
        save_checkpoint(self.last, payload)
        if improved:
            best = self.task.best_checkpoint(payload)
            if best is None:  # the same bytes as last.pt: copied, not serialised twice
                atomic_write(self.best_path, lambda f: shutil.copyfile(self.last, f))
            else:
                save_checkpoint(self.best_path, best)

    def offer(self, score: float, payload: Callable[[], dict[str, Any]]) -> bool:
        """A validation inside an epoch: write the best file from ``payload()`` when ``score`` beats the best."""
        if not score > self.best:
            return False
        self.best = score
        built = payload()
        save_checkpoint(self.best_path, self.task.best_checkpoint(built) or built)
        return True


def run_epochs(task: Task, run_dir: Path, config: dict[str, Any], *, epochs: int, seed: int,
               stop_after: int | None = None, resume: bool = True) -> list[dict[str, Any]]:
    """Train ``task`` from ``run_dir/last.pt`` (if written under ``config``) to ``epochs``, or ``stop_after``
    epochs of this call; every rank of a ``torchrun`` calls it with its own task.

    Returns:
        the history: one row per epoch since the run began, ``{"epoch": e, **task.end_epoch(...)}``.
    """
    rank, world = rank_world()
    run_dir = Path(run_dir)
    start, history = 0, []
    task.checkpoints = Checkpoints(task, run_dir)
    state = load_checkpoint(run_dir / "last.pt", config) if resume else None
    if state is not None:
        task.load_state_dict(state)
        start, history = state["epoch"] + 1, state["history"]
        task.checkpoints.best = state.get("best_score", -math.inf)  # checkpoints written before the loop kept it
        logger.info("resuming %s from epoch %d", run_dir / "last.pt", start + 1)
    task.history, task.config = history, config
    task.begin(start)
    end = epochs if stop_after is None else min(epochs, start + stop_after)
    # One bar over every step of this call; the per-epoch numbers go to its postfix and to the log.
    bar = Progress(total=(end - start) * task.steps_per_epoch(start), desc=f"{task.name} epochs {start + 1}-{end}/"
                   f"{epochs}", unit="step", disable=rank != 0)
    for epoch in range(start, end):
        random_seed(seed + epoch * world, rank)
        outputs = []
        for index, batch in enumerate(task.batches(epoch)):
            outputs.append(task.step(epoch, index, batch))
            bar.update()
        row = {"epoch": epoch + 1, **task.end_epoch(epoch, outputs)}
        history.append(row)
        improved = task.checkpoints.improves(task.score(row))
        if improved:
            task.on_best(row)
        bar.set_postfix(epoch=epoch + 1, **task.postfix(row))
        if rank == 0:
            task.checkpoints.save(task.payload(epoch), improved)
            task.write_reports(history, final=False)
        barrier()  # no rank starts the next epoch (or returns) before the checkpoint exists
    bar.close()
    if rank == 0:
        task.write_reports(history, final=True)  # also when resuming a finished run
    return history


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, *, decay_norms_and_biases: bool,
                    fused: bool = False) -> torch.optim.Optimizer:
    """AdamW (timm's factory). Without ``decay_norms_and_biases`` norms, biases and other 1-D parameters go to a
    group without weight decay (the ImageNet recipe); with it, one group decays all (the segmentation recipes).
    ``fused``: torch's fused kernel where the device has one."""
    kwargs = {"fused": True} if fused else {}
    try:
        return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay,
                                   filter_bias_and_bn=not decay_norms_and_biases, **kwargs)
    except RuntimeError as err:  # no fused kernel for these parameters' device
        logger.info("fused AdamW unavailable (%s); using the default implementation", err)
        return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay,
                                   filter_bias_and_bn=not decay_norms_and_biases)


def wrap_ddp(model: nn.Module, device: torch.device, *, sync_buffers: bool = True) -> nn.Module:
    """``model`` in DDP when this process is one of several ranks, else ``model`` itself. ``sync_buffers=False``
    leaves each rank its own BatchNorm statistics during the epoch (:func:`average_batchnorm` after it)."""
    if rank_world()[1] == 1:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=sync_buffers)


def precise_bn(batches: Iterable[torch.Tensor], model: nn.Module) -> None:
    """Recompute every BatchNorm's running statistics over ``batches`` (torch's ``update_bn``) with drop path
    switched off: ``update_bn`` runs the model in train mode, where DropPath would drop residual branches and
    skew the statistics towards a network that inference never runs."""
    paths = [m for m in model.modules() if isinstance(m, DropPath)]
    rates = [m.drop_prob for m in paths]
    for m in paths:
        m.drop_prob = 0.0
    try:
        update_bn(batches, model)
    finally:
        for m, rate in zip(paths, rates):
            m.drop_prob = rate


def average_batchnorm(*models: nn.Module) -> None:
    """Average the BatchNorm statistics of ``models`` over the ranks (nothing in a plain process), so that every
    rank validates, and rank 0 saves, one model."""
    world = rank_world()[1]
    if world > 1:
        for model in models:
            distribute_bn(model, world, reduce=True)
