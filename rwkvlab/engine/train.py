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

Semi-supervised runs (``recipe.consistency_weight > 0``, FUGC, docs §6). The unlabelled pool is the
split ``recipe.unlabelled`` plus the ``recipe.unlabelled_fraction`` of ``train`` that loses its labels
(:func:`unlabelled_pool`). An epoch is still one pass over the labelled loader; each of its steps also
takes ``batch_size`` unlabelled images, the pool cycled: epoch ``e`` strings together permutations of the
pool drawn with ``(seed, e)`` and global step ``j`` takes its images ``j*B .. (j+1)*B - 1``, split over
the ranks by a ``DistributedSampler`` as the labelled batch is, so that this order too is the same for
every ``W`` (:func:`unlabelled_order`). Every unlabelled image gets two :class:`TwoViews` views, seeded
per epoch and rank like the labelled augmentation, and the step minimises the supervised loss plus
``w(t) * batch_consistency_loss`` (:func:`semisup_step`, :func:`consistency_ramp`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch
from monai.utils import set_determinism
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from rwkvlab.config import Recipe
from rwkvlab.data.augment import TwoViews, batch_consistency_loss, patch_transforms, train_transforms
from rwkvlab.data.cache import Prepared
from rwkvlab.data.loader import SegArrays, VolumePatches, as_float
from rwkvlab.engine import loop
from rwkvlab.engine.checkpoint import load_pretrained_encoder
from rwkvlab.engine.cpu_memory import keep_freed_memory
from rwkvlab.engine.distributed import barrier, broadcast_from_main, rank_world, sum_over_ranks
from rwkvlab.engine.evaluate import evaluate_split, summarize
from rwkvlab.engine.inference import SlidingWindow, check_image_size, spatial_dims
from rwkvlab.engine.losses import seg_loss
from rwkvlab.engine.loop import Task, average_batchnorm, precise_bn, run_epochs, wrap_ddp
from rwkvlab.io import atomic_write
from rwkvlab.models import create_model

logger = logging.getLogger(__name__)

__all__ = ["fit", "train_step", "semisup_step", "build_optimizer", "check_recipe", "NonFiniteLossError",
           "data_fingerprint", "model_kwargs_for", "consistency_ramp", "unlabelled_pool", "unlabelled_order"]

# consistency comes last so that the CSVs of supervised runs written before it keep their columns' places
_HISTORY = ["epoch", "lr", "train_loss", "val_dsc", "consistency"]


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


def _val_dsc(model: torch.nn.Module, data: Prepared, batch_size: int, device: torch.device,
             window: SlidingWindow | None = None) -> float:
    """Mean DSC (%) over the validation cases with the test protocol (docs §7); NaN without a val split."""
    if not _has_val(data):
        return float("nan")
    return summarize(evaluate_split(model, data, "val", batch_size, device, window)[0])["dsc"]


def _median_spacing(data: Prepared, volume_ids: Iterable[str]) -> list[float] | None:
    """The median voxel size (mm, D H W) of the listed volumes, the spacing a volumetric model was trained at;
    ``None`` when one of them has none."""
    spacings = [data.spacings.get(v) for v in volume_ids]
    if not spacings or any(s is None for s in spacings):
        return None
    return np.median(np.array(spacings), axis=0).tolist()


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
            ``clip_grad``, ``val_every``, ``consistency_weight`` or ``consistency_rampup``, an
            ``unlabelled_fraction`` outside [0, 1), or a consistency weight without unlabelled images.
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
    if not recipe.consistency_weight >= 0:
        raise ValueError(f"recipe consistency_weight must be >= 0 (0: supervised only), got "
                         f"{recipe.consistency_weight}")
    if recipe.consistency_rampup < 0:
        raise ValueError(f"recipe consistency_rampup must be >= 0 epochs (0: the full weight from the start), got "
                         f"{recipe.consistency_rampup}")
    if not 0 <= recipe.unlabelled_fraction < 1:
        raise ValueError(f"recipe unlabelled_fraction must be in [0, 1) (the share of train that loses its labels), "
                         f"got {recipe.unlabelled_fraction}")
    if recipe.consistency_weight > 0 and recipe.unlabelled is None and recipe.unlabelled_fraction == 0:
        raise ValueError(f"recipe consistency_weight {recipe.consistency_weight} needs unlabelled images: set "
                         f"unlabelled (a split of unlabelled images) or unlabelled_fraction (> 0)")


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The segmentation recipes' AdamW: the recipe's lr and weight decay on every parameter (torch's fused kernel when
    ``fused_adamw`` and the device has one)."""
    return loop.build_optimizer(model, recipe.lr, recipe.weight_decay, decay_norms_and_biases=True,
                                fused=recipe.fused_adamw)


def consistency_ramp(recipe: Recipe, progress: float) -> float:
    """The consistency weight after ``progress`` epochs of training (fractional: it advances every optimizer step).

    ``consistency_weight * exp(-5 (1 - t)^2)`` with ``t = min(progress / consistency_rampup, 1)``, the
    sigmoid-shaped ramp-up of Laine & Aila (ICLR 2017) and the mean teacher; the full weight from the
    start when ``consistency_rampup`` is 0.
    """
    if recipe.consistency_rampup == 0:
        return recipe.consistency_weight
    t = min(progress / recipe.consistency_rampup, 1.0)
    return recipe.consistency_weight * math.exp(-5.0 * (1.0 - t) ** 2)


def unlabelled_pool(data: Prepared, recipe: Recipe, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled training items (in the split's order) and the unlabelled pool (sorted), as indices into ``images``.

    The pool is the split ``recipe.unlabelled`` plus ``round(unlabelled_fraction * n)`` (at most ``n - 1``)
    of the ``n`` items of ``train``, drawn without replacement with ``seed``; those lose their labels and
    the rest of ``train`` is the labelled set. No labelled item is ever in the pool.

    Raises:
        ValueError: naming the recipe field: a split ``unlabelled`` that the dataset lacks or that shares
            items with ``train``, or no unlabelled image at all while ``consistency_weight`` is positive.
    """
    train = data.splits["train"]
    k = min(round(recipe.unlabelled_fraction * len(train)), max(len(train) - 1, 0))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    lost = np.zeros(len(train), bool)
    lost[rng.choice(len(train), size=k, replace=False)] = True
    pool = train[lost]
    if recipe.unlabelled is not None:
        if recipe.unlabelled not in data.splits:
            raise ValueError(f"recipe unlabelled: dataset {data.dataset} has no split {recipe.unlabelled!r}; "
                             f"splits: {sorted(data.splits)}")
        named = np.sort(data.splits[recipe.unlabelled])
        shared = np.intersect1d(named, train)
        if len(shared):
            raise ValueError(f"recipe unlabelled: split {recipe.unlabelled!r} shares {len(shared)} item(s) with the "
                             f"train split (e.g. {data.ids[shared[0]]}); name a split of unlabelled images only, "
                             f"or use unlabelled_fraction to unlabel part of train")
        pool = np.sort(np.concatenate([pool, named]))
    if recipe.consistency_weight > 0 and not len(pool):
        raise ValueError(f"recipe consistency_weight {recipe.consistency_weight}: no unlabelled image in "
                         f"{data.dataset} (split unlabelled: {recipe.unlabelled!r}; unlabelled_fraction "
                         f"{recipe.unlabelled_fraction} of {len(train)} train items rounds to {k})")
    return train[~lost], pool


def unlabelled_order(pool_size: int, steps: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Positions in the pool for ``steps`` global batches of ``batch_size`` in ``epoch``: consecutive permutations.

    Each pass over the pool is a fresh permutation drawn with ``(seed, epoch)``, cut where the epoch's
    ``steps * batch_size`` images are reached; no image comes twice before every image has come once.
    """
    need = steps * batch_size
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, epoch)))
    return np.concatenate([rng.permutation(pool_size) for _ in range(-(-need // pool_size))])[:need]


def _stream_seed(seed: int, stream: int) -> int:
    """A seed for random stream ``stream`` of ``seed``, uncorrelated with the stream that ``seed`` itself starts."""
    return int(np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1)[0])


class _Views(Dataset):
    """The two :class:`TwoViews` views of the listed images, in the order listed; their labels never leave it."""

    def __init__(self, data: Prepared, index: np.ndarray, views: TwoViews) -> None:
        self.data, self.index, self.views = data, index, views

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = self.views({"image": as_float(torch.from_numpy(self.data.images[self.index[i]]).permute(2, 0, 1))})
        return {k: out[k] for k in ("view1", "view2", "geom1", "geom2")}


def _forward(net: nn.Module, images: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """Logits (float32) with the recipe's memory format and precision."""
    if recipe.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=recipe.precision == "bf16"):
        return net(images).float()


def _update(net: nn.Module, optimizer: torch.optim.Optimizer, objective: torch.Tensor, terms: torch.Tensor,
            recipe: Recipe) -> list[float]:
    """Average ``terms`` over the ranks; unless one is non-finite (on any rank), one optimizer step on ``objective``."""
    values = terms.detach().tolist()
    world = rank_world()[1]
    if world > 1:
        values = [v / world for v in sum_over_ranks(values, objective.device)]
    if not all(math.isfinite(v) for v in values):
        return values
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    if recipe.clip_grad > 0:
        nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_grad)
    optimizer.step()
    return values


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[torch.Tensor, torch.Tensor],
               torch.Tensor], images: torch.Tensor, labels: torch.Tensor, recipe: Recipe) -> float:
    """One optimizer step on this rank's share of the global batch; returns the loss averaged over the ranks.

    A non-finite loss (on any rank) leaves the weights as they are: no backward, no step, the value is
    returned for the caller to stop on. The gradients stay on the parameters after the step (clipped to
    ``recipe.clip_grad`` in global norm when it is positive).

    Shape:
        images (N, C, H, W) float in [0, 1], labels (N, 1, H, W) integer classes; N = batch_size / world.
    """
    loss = loss_fn(_forward(net, images, recipe), labels)
    return _update(net, optimizer, loss, loss[None], recipe)[0]


def semisup_step(net: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], images: torch.Tensor,
                 labels: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor,
                 geom1: tuple[Any, Any], geom2: tuple[Any, Any], weight: float, recipe: Recipe) -> tuple[float, float]:
    """One optimizer step on ``loss_fn`` (labelled) ``+ weight *`` the consistency of two views (unlabelled).

    One forward over the labelled batch and both views concatenated: BatchNorm normalises all of them with
    the same batch statistics (and its running statistics see the unlabelled images too, which come from
    the same scanner), so the two views' predictions differ by the model alone, not by the statistics of
    two different batches, and the step costs one forward and one backward. Gradients flow through both
    views (the Pi-model of Laine & Aila). Non-finite terms and clipping as :func:`train_step`.

    Shape:
        images (N, C, H, W), labels (N, 1, H, W) as :func:`train_step`; view1, view2 (M, C, H, W) float in
        [0, 1], geom1, geom2 their :class:`TwoViews` geometries as a ``DataLoader`` collates them.

    Returns:
        the supervised loss and the (unweighted) consistency, each averaged over the ranks.
    """
    n, m = len(images), len(view1)
    logits = _forward(net, torch.cat([images, view1, view2]), recipe)
    sup = loss_fn(logits[:n], labels)
    cons = batch_consistency_loss(logits[n : n + m], logits[n + m :], geom1, geom2)
    sup_value, cons_value = _update(net, optimizer, sup + weight * cons, torch.stack([sup, cons]), recipe)
    return sup_value, cons_value


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


class _Images:
    """2D training: augmented items at ``prepare.image_size``; validation labels whole images (no window)."""

    window: SlidingWindow | None = None

    def __init__(self, model_name: str, data: Prepared, recipe: Recipe, seed: int) -> None:
        if recipe.patch_size is not None:
            raise ValueError(f"recipe patch_size {list(recipe.patch_size)}: patches are for volumetric models "
                             f"(docs §20); {model_name} is 2D and trains on the items at prepare.image_size")
        self.recipe, self.seed, self.size = recipe, seed, data.item_size
        self.size_source, self.meta = f"prepare.image_size.{data.dataset}", {}

    def build(self, labelled: Prepared) -> None:
        """The training set (the labelled items of ``train``) and the un-augmented one of precise BatchNorm."""
        self.transform = train_transforms(self.recipe.augment, self.size, self.seed)
        self.train_set = SegArrays(labelled, "train", self.transform)
        self.bn_set = SegArrays(labelled, "train")

    def bn_set_for(self, seed: int) -> Dataset:
        return self.bn_set


class _Patches:
    """Volumetric training (docs §20): patches of ``recipe.patch_size`` from the train volumes; validation labels
    whole volumes by the sliding window of the recipe."""

    size_source = "recipe patch_size"

    def __init__(self, model_name: str, data: Prepared, recipe: Recipe, seed: int) -> None:
        if recipe.consistency_weight > 0:
            raise ValueError(f"recipe consistency_weight {recipe.consistency_weight}: the semi-supervised loop is 2D; "
                             f"{model_name} is volumetric")
        self.window = SlidingWindow.of(recipe)
        self.data, self.recipe, self.seed, self.size = data, recipe, seed, self.window.roi_size
        self.meta = {"spatial_dims": 3, "sliding_window": asdict(self.window),
                     "spacing": _median_spacing(data, data.volume_splits.get("train", []))}

    def build(self, labelled: Prepared) -> None:
        """Patches of every train volume (a volume is labelled whole), and the un-augmented patches of precise
        BatchNorm."""
        recipe, size = self.recipe, self.size
        self.transform = patch_transforms(recipe.augment, size, recipe.foreground_fraction, self.seed)
        self.train_set = VolumePatches(self.data, "train", recipe.patches_per_volume, self.transform)
        self.bn_set = VolumePatches(self.data, "train", recipe.patches_per_volume,
                                    patch_transforms("none", size, recipe.foreground_fraction, self.seed))

    def bn_set_for(self, seed: int) -> Dataset:
        """The BatchNorm patches, the same ones in every epoch: their crops drawn afresh from ``seed``."""
        self.bn_set.transform.set_random_state(seed)
        return self.bn_set


class _Segmentation(Task):
    """A segmentation training as the epoch loop runs it (the steps of the module docstring)."""

    def __init__(self, model_name: str, data: Prepared, recipe: Recipe, run_dir: Path, seed: int,
                 device: torch.device, kwargs: dict[str, Any], init: Path | None, num_workers: int,
                 history_csv: Path | None, labelled: np.ndarray, pool: np.ndarray) -> None:
        self.name, self.data, self.recipe, self.run_dir, self.seed = model_name, data, recipe, run_dir, seed
        self.device, self.kwargs, self.num_workers, self.history_csv, self.pool = (device, kwargs, num_workers,
                                                                                    history_csv, pool)
        self.rank, self.world = rank_world()
        set_determinism(seed)
        model = create_model(model_name, **kwargs)
        # the one 2D/3D decision: how items are drawn, and the inferer validation labels a case with
        self.sampling = (_Patches if spatial_dims(model) == 3 else _Images)(model_name, data, recipe, seed)
        self.meta = {"dataset": data.dataset, "class_names": list(data.class_names),
                     "image_size": list(self.sampling.size), "in_chans": data.in_chans,
                     "intensity": "uint8" if data.images.dtype == np.uint8 else "unit_float", **self.sampling.meta}
        check_image_size(model, self.sampling.size, self.sampling.size_source)
        if init is not None:
            load_pretrained_encoder(model, init)
        if recipe.sync_bn and self.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(device, memory_format=torch.channels_last if recipe.channels_last
                              else torch.preserve_format)
        self.optimizer = build_optimizer(self.model, recipe)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=recipe.epochs,
                                                                    eta_min=recipe.min_lr)
        self.loss_fn = seg_loss(recipe.ce_weight, recipe.dice_weight)
        self.step_count, self.validations = 0, []
        self.sampling.build(replace(data, splits={**data.splits, "train": labelled}))
        self.views = TwoViews(seed) if recipe.consistency_weight > 0 else None
        # semi-supervised training is its own step (two views of unlabelled images beside each labelled batch)
        self._step = self._supervised_step if self.views is None else self._semisupervised_step

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step_count,
                "validations": self.validations, "model_name": self.name, "model_kwargs": self.kwargs,
                "meta": self.meta}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = state.get("step", 0)
        self.validations = state.get("validations", [])

    def begin(self, start: int) -> None:
        # Per-rank BatchNorm statistics are averaged once per epoch, so no buffer is broadcast every step.
        self.net = wrap_ddp(self.model, self.device, sync_buffers=False)
        if self.recipe.compile:
            self.net = torch.compile(self.net)
        logger.info("training %s on %s: %d process(es), %s%s%s", self.name, self.data.dataset, self.world,
                    self.recipe.precision, ", channels_last" if self.recipe.channels_last else "",
                    ", compiled" if self.recipe.compile else "")

    def _labelled(self, epoch: int, num_workers: int) -> DataLoader:
        return _loader(self.sampling.train_set, self.recipe.batch_size, True, self.seed, epoch, num_workers,
                       self.device)

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self._labelled(epoch, 0))

    def batches(self, epoch: int) -> Iterable[tuple[dict, dict | None]]:
        epoch_seed = self.seed + epoch * self.world + self.rank
        if self.sampling.transform is not None:  # augment: none
            self.sampling.transform.set_random_state(epoch_seed)
        loader = self._labelled(epoch, self.num_workers)
        self.steps_in_epoch = len(loader)
        unlabelled: Iterable[Any] = itertools.repeat(None)
        if self.views is not None:
            self.views.set_random_state(_stream_seed(epoch_seed, 2))
            order = self.pool[unlabelled_order(len(self.pool), len(loader), self.recipe.batch_size, self.seed, epoch)]
            unlabelled = _loader(_Views(self.data, order, self.views), self.recipe.batch_size, False, self.seed,
                                 epoch, self.num_workers, self.device)
        self.net.train()
        return zip(loader, unlabelled)

    def _supervised_step(self, epoch: int, index: int, images: torch.Tensor, labels: torch.Tensor,
                         views: None) -> tuple[float, float]:
        return train_step(self.net, self.optimizer, self.loss_fn, images, labels, self.recipe), 0.0

    def _semisupervised_step(self, epoch: int, index: int, images: torch.Tensor, labels: torch.Tensor,
                             views: dict[str, Any]) -> tuple[float, float]:
        device, recipe = self.device, self.recipe
        return semisup_step(self.net, self.optimizer, self.loss_fn, images, labels, views["view1"].to(device),
                            views["view2"].to(device), views["geom1"], views["geom2"],
                            consistency_ramp(recipe, epoch + index / self.steps_in_epoch), recipe)

    def step(self, epoch: int, index: int, batch: tuple[dict, dict | None]) -> dict[str, float]:
        labelled, views = batch
        device, recipe, steps = self.device, self.recipe, self.steps_in_epoch
        images, labels = as_float(labelled["image"].to(device)), labelled["label"].to(device).round().long()
        loss, consistency = self._step(epoch, index, images, labels, views)
        if not (math.isfinite(loss) and math.isfinite(consistency)):
            kept = (f"{self.run_dir / 'last.pt'} keeps epoch {epoch}, the last good one" if epoch > 0 else
                    "no checkpoint was written (the first epoch did not finish)")
            what, value = ("training", loss) if not math.isfinite(loss) else ("consistency", consistency)
            raise NonFiniteLossError(f"{self.name}: the {what} loss is {value} at epoch {epoch + 1}, step "
                                     f"{index + 1} of {steps} (optimizer step {self.step_count + 1}); stopped. {kept}")
        self.step_count += 1
        if (recipe.val_every and self.step_count % recipe.val_every == 0 and index + 1 < steps
                and _has_val(self.data)):
            if self.rank == 0:
                val_dsc = _val_dsc(self.model, self.data, recipe.batch_size, device, self.sampling.window)
                self.validations.append({"epoch": epoch + 1, "step": self.step_count, "val_dsc": val_dsc})
                logger.info("epoch %d, step %d: val DSC %.2f", epoch + 1, self.step_count, val_dsc)
                self.checkpoints.offer(val_dsc, lambda: self.payload(epoch))
                self.model.train()
            barrier()
        return {"loss": loss, "consistency": consistency}

    def end_epoch(self, epoch: int, steps: list[dict[str, float]]) -> dict[str, Any]:
        recipe, device = self.recipe, self.device
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        if recipe.precise_bn:
            precise_bn((as_float(b["image"].to(device)) for b in _loader(
                self.sampling.bn_set_for(self.seed), recipe.batch_size, False, self.seed, epoch, self.num_workers,
                device)), self.model)
        if not recipe.sync_bn:
            average_batchnorm(self.model)
        val_dsc = broadcast_from_main(_val_dsc(self.model, self.data, recipe.batch_size, device,
                                                self.sampling.window)
                                      if self.rank == 0 else None)
        row = {"lr": lr, "train_loss": float(np.mean([s["loss"] for s in steps])), "val_dsc": val_dsc,
               "consistency": float(np.mean([s["consistency"] for s in steps]))}
        self.validations.append({"epoch": epoch + 1, "step": self.step_count, "val_dsc": val_dsc})
        logger.info("epoch %d: loss %.4f%s, val DSC %.2f", epoch + 1, row["train_loss"],
                    f", consistency {row['consistency']:.4g}" if self.views is not None else "", val_dsc)
        return row

    def score(self, row: dict[str, Any]) -> float:
        return row["val_dsc"]  # NaN without a val split: best.pt is then the last epoch (Synapse's protocol)

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{row['train_loss']:.4f}", "val_dsc": f"{row['val_dsc']:.2f}"}

    def write_reports(self, history: list[dict[str, Any]], final: bool) -> None:
        if self.history_csv is not None:
            frame = pd.DataFrame(history, columns=_HISTORY)
            atomic_write(self.history_csv, lambda f: frame.to_csv(f, index=False))


@keep_freed_memory()
def fit(model_name: str, data: Prepared, recipe: Recipe, run_dir: Path, *, seed: int,
        device: torch.device, model_kwargs: dict[str, Any] | None = None, init: Path | None = None,
        num_workers: int = 0, history_csv: Path | None = None, stop_after: int | None = None) -> pd.DataFrame:
    """Train ``model_name`` on the ``train`` split, select on ``val``; resume from ``run_dir/last.pt``.

    Without a ``val`` split (Synapse: the paper tests the last epoch) ``best.pt`` is the last epoch. The
    checkpoints record the model's name and keyword arguments (``model_name``, ``model_kwargs``) and what
    inference needs (``meta``: image size, channels, intensity convention, class names), so
    :func:`rwkvlab.engine.inference.load_trained` rebuilds the model from the checkpoint alone. The epochs are
    :func:`rwkvlab.engine.loop.run_epochs` over a segmentation task.

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
        one row per epoch: epoch, lr, train_loss (mean over the steps of the supervised loss averaged over the
        ranks), val_dsc, consistency (the same mean of the unweighted consistency term; 0 for supervised runs).

    Raises:
        NonFiniteLossError: the loss became NaN or infinite; ``last.pt`` keeps the last completed epoch.
        ValueError: see :func:`check_recipe` and :func:`unlabelled_pool`.
    """
    check_recipe(recipe, rank_world()[1], device)
    run_dir = Path(run_dir)
    kwargs = model_kwargs_for(data, model_kwargs)
    labelled, pool = unlabelled_pool(data, recipe, seed)
    # The items of train that lost their labels, by id: a resume where they differ is refused with the config.
    unlabelled_train = data.ids[np.intersect1d(pool, data.splits["train"])].tolist()
    config: dict[str, Any] = {"model": model_name, "model_kwargs": kwargs, "recipe": asdict(recipe), "seed": seed,
                              "data": data_fingerprint(data), "init": str(init) if init else None,
                              "unlabelled_train": unlabelled_train}
    task = _Segmentation(model_name, data, recipe, run_dir, seed, device, kwargs, init, num_workers, history_csv,
                         labelled, pool)
    history = run_epochs(task, run_dir, config, epochs=recipe.epochs, seed=seed, stop_after=stop_after)
    return pd.DataFrame(history, columns=_HISTORY)
