"""``python -m rwkvlab.bench train``: a training step (forward, cross-entropy, backward, AdamW) and inference at
224x224 with 9 classes (issue 10). On a GPU: RWKV-UNet-T/S/B at batch 24 in fp32 and bf16 autocast,
channels_last, beside the same models in fp32 eager NCHW, with peak memory. On the CPU: RWKV-UNet-T beside
MONAI's ``BasicUNet(features=(32, 64, 128, 256, 512, 32))`` at batch 4, interleaved step by step (target: T
trains >= 1.5x as fast)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rwkvlab.bench._timing import sync
from rwkvlab.engine.cpu_memory import keep_freed_memory

__all__ = ["TRAIN_MODELS", "BASELINE_MODEL", "StepConfig", "StepRow", "bench_steps", "train_configs", "format_steps"]

TRAIN_MODELS = ("rwkv_unet_t", "rwkv_unet_s", "rwkv_unet_b")
# MONAI BasicUNet(features=(32, 64, 128, 256, 512, 32)), registered as ``unet`` (7.78M parameters).
BASELINE_MODEL = "unet"
# The authors' release on an H100 (docs §9), images/s, for the summary.
AUTHORS_H100 = {("rwkv_unet_b", "train", "fp32"): 153, ("rwkv_unet_b", "train", "bf16"): 179,
                ("rwkv_unet_b", "infer", "fp32"): 550, ("rwkv_unet_b", "infer", "bf16"): 669,
                ("rwkv_unet_s", "train", "fp32"): 201}


@dataclass(frozen=True)
class StepConfig:
    """One measured configuration: ``mode`` is ``train`` (forward, cross-entropy, backward, AdamW step) or
    ``infer`` (forward without gradients); ``precision`` is ``fp32`` or ``bf16`` (autocast)."""

    model: str
    mode: str
    precision: str
    batch: int
    size: int
    num_classes: int = 9
    channels_last: bool = True
    compiled: bool = False

    @property
    def label(self) -> str:
        """``model mode precision`` plus the layout and compilation switches that differ from eager NCHW."""
        extra = ("channels_last" if self.channels_last else "NCHW") + (", compiled" if self.compiled else "")
        return f"{self.model} {self.mode} {self.precision} ({extra})"


@dataclass(frozen=True)
class StepRow:
    """Median images/s of a configuration and its peak device memory (GiB; CUDA only)."""

    config: StepConfig
    img_s: float
    peak_gib: float | None


class _Step:
    """A model, its optimizer and one batch of random data, ready to time one step of ``config``."""

    def __init__(self, config: StepConfig, device: torch.device, seed: int = 0) -> None:
        from rwkvlab.models import create_model

        if config.mode not in ("train", "infer") or config.precision not in ("fp32", "bf16"):
            raise ValueError(f"StepConfig: mode must be train/infer and precision fp32/bf16, got {config}")
        torch.manual_seed(seed)
        self.config, self.device = config, device
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = create_model(config.model, in_chans=3, num_classes=config.num_classes).to(device, memory_format=fmt)
        self.x = torch.randn(config.batch, 3, config.size, config.size, device=device).contiguous(memory_format=fmt)
        self.y = torch.randint(0, config.num_classes, (config.batch, config.size, config.size), device=device)
        self.forward = torch.compile(self.model) if config.compiled else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.model.train(config.mode == "train")

    def __call__(self) -> None:
        c = self.config
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.precision == "bf16")
        if c.mode == "infer":
            with torch.no_grad(), autocast:
                self.forward(self.x)
            return
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(self.forward(self.x).float(), self.y)
        loss.backward()
        self.optimizer.step()


@keep_freed_memory()
def bench_steps(configs: Sequence[StepConfig], device: torch.device, steps: int = 3, warmup: int = 1) -> list[StepRow]:
    """Median images/s of each configuration over ``steps`` timed steps after ``warmup`` untimed ones.

    On the CPU the configurations run interleaved (one step of each in turn), so that a ratio between two of
    them holds while other processes change the machine's speed; on a GPU they run one after another, each
    alone in memory, so that its peak memory is its own.
    """
    from tqdm.auto import tqdm

    if steps < 1 or warmup < 0:
        raise ValueError(f"bench_steps: steps must be >= 1 and warmup >= 0, got {steps}, {warmup}")
    times: dict[StepConfig, list[float]] = {c: [] for c in configs}
    peaks: dict[StepConfig, float | None] = {c: None for c in configs}

    def timed(step: _Step, i: int) -> None:
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            times[step.config].append(time.perf_counter() - start)

    progress = tqdm(total=len(configs) * (steps + warmup), desc="bench train", unit="step", leave=False)
    if device.type == "cuda":
        for c in configs:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            step = _Step(c, device)
            for i in range(warmup + steps):
                timed(step, i)
                progress.update()
            peaks[c] = torch.cuda.max_memory_allocated(device) / 2**30
            del step
    else:
        built = [_Step(c, device) for c in configs]
        for i in range(warmup + steps):
            for step in built:
                timed(step, i)
                progress.update()
    progress.close()
    return [StepRow(c, c.batch / statistics.median(times[c]), peaks[c]) for c in configs]


def train_configs(device: torch.device, models: Sequence[str] | None = None, batch: int | None = None,
                  size: int = 224, compiled: bool = False) -> list[StepConfig]:
    """What ``bench train`` measures on ``device``, baseline first.

    GPU: T/S/B at ``batch`` 24, train and inference, fp32 and bf16 (channels_last), after the baseline the
    optimised settings beat: each model in fp32, eager, NCHW. CPU: RWKV-UNet-T and MONAI's BasicUNet at batch 4,
    train and inference in fp32, channels_last.
    """
    if device.type == "cuda":
        models, batch = list(models or TRAIN_MODELS), batch or 24
        base = [StepConfig(m, mode, "fp32", batch, size, channels_last=False) for m in models for mode in ("train", "infer")]
        fast = [StepConfig(m, mode, p, batch, size, compiled=compiled)
                for m in models for mode in ("train", "infer") for p in ("fp32", "bf16")]
        return base + fast
    models, batch = list(models or [TRAIN_MODELS[0]]), batch or 4
    return [StepConfig(m, mode, "fp32", batch, size, compiled=compiled)
            for m in [BASELINE_MODEL, *models] for mode in ("train", "infer")]


def format_steps(rows: Sequence[StepRow]) -> list[str]:
    """A table of images/s and peak memory, with each row's speed over its reference: the baseline model (the
    same mode and precision) on the CPU, the same model in fp32 eager NCHW on a GPU; and the authors' H100 figure
    (docs §9) where there is one."""
    by = {(r.config.model, r.config.mode, r.config.precision, r.config.channels_last, r.config.compiled): r
          for r in rows}
    head = f"{'configuration':<46} {'batch':>5} {'img/s':>9} {'peak GiB':>9} {'x ref':>7} {'authors':>8}  reference"
    lines = [head, "-" * len(head)]
    for r in rows:
        c = r.config
        ref = by.get((BASELINE_MODEL, c.mode, c.precision, c.channels_last, c.compiled))
        ref_name = f"{BASELINE_MODEL} (MONAI BasicUNet)"
        if c.model == BASELINE_MODEL or ref is None:
            ref = by.get((c.model, c.mode, "fp32", False, False))
            ref_name = "fp32 eager NCHW"
        ratio = "-" if ref is None or ref is r else f"{r.img_s / ref.img_s:.2f}"
        authors = AUTHORS_H100.get((c.model, c.mode, c.precision))
        lines.append(f"{c.label:<46} {c.batch:>5} {r.img_s:>9.2f} "
                     f"{'-' if r.peak_gib is None else f'{r.peak_gib:.2f}':>9} {ratio:>7} "
                     f"{'-' if authors is None else authors:>8}  {ref_name if ratio != '-' else ''}")
    return lines
