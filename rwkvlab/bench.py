"""Micro-benchmarks: ``python -m rwkvlab.bench wkv``, ``data``, ``metrics``, ``train``, ``scaling3d`` and ``gpu``.

``train`` times a training step (forward, cross-entropy, backward, AdamW) and inference at 224x224 with 9
classes (issue 10). On a GPU: RWKV-UNet-T/S/B at batch 24 in fp32 and bf16 autocast, channels_last, beside the
same models in fp32 eager NCHW, with peak memory. On the CPU: RWKV-UNet-T beside MONAI's
``BasicUNet(features=(32, 64, 128, 256, 512, 32))`` at batch 4, interleaved step by step (target: T trains
>= 1.5x as fast).

``scaling3d`` measures how a training step grows with the patch of a volume (docs §9, §18): forward,
cross-entropy and backward at batch 1, 1 channel, 5 classes, of ``rwkv_unet3d_t`` (raster scan and
``scan=axes``), ``swin_unetr3d`` and ``unet3d`` at cubic sides (``--sizes``; 32 and 64 on the CPU, 64 to 160
on a GPU). It prints the median step, its ratio to the 3D U-Net of the same run, time per voxel, the memory one
step adds (CPU: peak anonymous RSS of a fresh process per case; GPU: ``max_memory_allocated``) and, per model,
time(largest)/time(smallest) against the voxel (= token) ratio. On the CPU each case runs in its own process under
a time cap (``--cap``); cases predicted to pass it are skipped with the reason printed.

``gpu`` is the whole GPU check in one command (under 8 minutes): build the CUDA kernel, run the ``cuda``
tests, compare the kernel with the float64 reference at the shapes of T/S/B at 224 and 512 px, run ``wkv``,
``train`` and ``scaling3d``, and print one summary; without a GPU it stops with a message.

``data`` measures the input pipeline at 224x224: reading a prepared cache into memory, iterating it
without augmentation in one process (target: >= 2000 samples/s), and each training augmentation
recipe on one thread (target: >= 300 samples/s per core).

``metrics`` scores Synapse-sized volumes (100 x 512 x 512, 8 organs; :func:`synapse_like_case`) with
the whole-volume implementation and with :func:`rwkvlab.metrics.case_metrics` (boxed), prints both times
and their ratio, checks that the results are bit-identical (target: <= 5 s per volume, issue 11), and
with ``--volumes`` > 1 times :func:`rwkvlab.engine.evaluate.evaluate_cases` over them in parallel.

``wkv`` times every Bi-WKV path (issue 3, docs §2, §9).

For the shapes Spatial Mix sees in RWKV-UNet (stages 3 and 4, T/S/B, 224 and 512 px: T = (H/8)^2 and
(H/16)^2, C = the stage's dim x expansion) plus (N, 784, 576), with batch 1 on the CPU and 24 on a
GPU, it prints for each available path:

* the median time of the forward and of forward+backward;
* the speed-up over the reference (the dense O(T^2) formula, timed once per shape, and skipped where
  it would need more than :data:`REFERENCE_LIMIT_BYTES`);
* the ratio to the memory floor: bytes that must move (forward reads k, v and writes y; backward
  also reads k, v, y, grad_y and writes grad_k, grad_v) over the copy bandwidth measured in the run;
* the largest relative L2 error, output and gradients, against the float64 reference, measured on the
  first batch item and as many channels as fit in :data:`ERROR_LIMIT_BYTES`.
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rwkvlab.engine.cpu_memory import keep_freed_memory, malloc_tunable
from rwkvlab.models.rwkv_unet import SIZES
from rwkvlab.ops import available_backends, bi_wkv
from rwkvlab.ops._cpu import cpu_kernels
from rwkvlab.ops._cuda import cuda_kernels
from rwkvlab.ops._reference import bi_wkv_reference

__all__ = ["WkvRow", "WkvShape", "bench_wkv", "memory_bandwidth", "wkv_shapes", "ScalingCase", "ScalingRow",
           "bench_scaling3d", "format_scaling", "measure_scaling_case", "scaling3d_cases", "scaling3d_report"]

REFERENCE_LIMIT_BYTES = 4.5 * 2**30
ERROR_LIMIT_BYTES = 2**30
_REFERENCE_FACTOR = 3  # peak memory of the reference, in (N, C, T, T) tensors (measured)
_KERNELS: dict[str, Callable[[], object]] = {"cpu": cpu_kernels, "cuda": cuda_kernels}


@dataclass(frozen=True)
class WkvShape:
    """One benchmarked input: ``k``, ``v`` of shape (n, t, c); ``label`` says where it occurs."""

    label: str
    n: int
    t: int
    c: int


@dataclass(frozen=True)
class WkvRow:
    """Timings (seconds) of one path on one shape; ``None`` where not measured."""

    shape: WkvShape
    path: str
    fwd: float | None
    fwd_bwd: float | None
    err_y: float | None
    err_grad: float | None
    note: str = ""


def wkv_shapes(batch: int) -> list[WkvShape]:
    """(batch, 784, 576), then stages 3 and 4 of T/S/B at 224 and 512 px (duplicates merged)."""
    shapes: dict[tuple[int, int], list[str]] = {(784, 576): ["issue 3"]}
    for px in (224, 512):
        for size, cfg in SIZES.items():
            for stage, stride in ((2, 8), (3, 16)):
                key = ((px // stride) ** 2, round(cfg.dims[stage] * cfg.expansions[stage]))
                shapes.setdefault(key, []).append(f"{size.upper()}{stage + 1}@{px}")
    return [WkvShape(",".join(labels), batch, t, c) for (t, c), labels in shapes.items()]


def cpu_label() -> str:
    """The CPU's model name, the widest vector instructions PyTorch uses on it, the threads and whether freed memory is
    kept (:mod:`rwkvlab.engine.cpu_memory`): what a CPU speed ratio depends on (issue 10: two 2-core machines ran the
    convolution-bound BasicUNet 2x apart, the memory-bound RWKV-UNet-T about as fast)."""
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    model = names[0] if names else (platform.processor() or "unknown CPU")
    malloc = "freed memory kept" if malloc_tunable() else "system malloc"
    return (f"CPU {model} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, "
            f"{malloc}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], device: torch.device, runs: int, budget: float = float("inf")) -> float:
    """Median over ``runs`` calls, or fewer (at least one) once ``budget`` seconds are spent."""
    times: list[float] = []
    while len(times) < runs and sum(times) < budget:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def memory_bandwidth(device: torch.device, nbytes: int = 2**28) -> float:
    """Bytes per second of a large tensor copy (read + write), median of 5."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * nbytes / _median_time(lambda: dst.copy_(src), device, 5)


def _inputs(shape: WkvShape, device: torch.device, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(shape.n, shape.t, shape.c, generator=g)
    v = torch.randn(shape.n, shape.t, shape.c, generator=g)
    # Realistic decays: |w T| up to 20, either sign.
    w = (torch.rand(shape.c, generator=g) * 2 - 1) * 20 / shape.t
    u = torch.randn(shape.c, generator=g) / shape.t
    return [x.to(device) for x in (k, v, w, u)]


def _forward_backward(fn: Callable[..., Tensor], inputs: Sequence[Tensor], gy: Tensor) -> tuple[Tensor, ...]:
    leaves = [x.detach().requires_grad_() for x in inputs]
    y = fn(*leaves)
    return (y.detach(), *torch.autograd.grad(y, leaves, gy))


def _rel(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-300)).item()


def _errors(fn: Callable[..., Tensor], shape: WkvShape, device: torch.device) -> tuple[float, float]:
    """Relative L2 errors of y and (max over k, v, w, u) of the gradients, against float64."""
    c = max(1, min(shape.c, int(ERROR_LIMIT_BYTES // (_REFERENCE_FACTOR * shape.t**2 * 8))))
    k, v, w, u = _inputs(WkvShape(shape.label, 1, shape.t, c), device, seed=1)
    gy = torch.randn_like(k)
    ref = _forward_backward(bi_wkv_reference, [x.double() for x in (k, v, w, u)], gy.double())
    out = _forward_backward(fn, [k, v, w, u], gy)
    return _rel(out[0], ref[0]), max(_rel(a, b) for a, b in zip(out[1:], ref[1:]))


def bench_wkv(shape: WkvShape, device: torch.device, runs: int = 5, budget: float = 1.0) -> list[WkvRow]:
    """Time every Bi-WKV path available for ``device`` on ``shape`` (float32).

    Each time is the median of ``runs`` calls, fewer once ``budget`` seconds are spent; the reference
    is called once.
    """
    k, v, w, u = _inputs(shape, device)
    gy = torch.randn_like(k)
    rows = []
    for path in available_backends(k):
        fn = functools.partial(bi_wkv, backend=path)
        if path == "reference":
            need = _REFERENCE_FACTOR * shape.n * shape.c * shape.t**2 * k.element_size()
            if need > REFERENCE_LIMIT_BYTES:
                rows.append(WkvRow(shape, path, None, None, None, None, f"skipped: needs ~{need / 2**30:.0f} GiB"))
                continue
            path_runs = 1  # seconds per call; the dense formula is the yardstick, not the subject
        else:
            path_runs = runs
        with torch.no_grad():
            fwd = _median_time(functools.partial(fn, k, v, w, u), device, path_runs, budget)
        fwd_bwd = _median_time(functools.partial(_forward_backward, fn, [k, v, w, u], gy), device, path_runs, budget)
        err = (None, None) if path == "reference" else _errors(fn, shape, device)
        note = "kernel missing: ran chunked" if _KERNELS.get(path, lambda: True)() is None else ""
        rows.append(WkvRow(shape, path, fwd, fwd_bwd, *err, note))
    return rows


def _format(rows: Sequence[WkvRow], bandwidth: float) -> list[str]:
    ref = {r.shape: r for r in rows if r.path == "reference" and r.fwd is not None}
    head = (
        f"{'N,T,C':>13} {'path':>9} {'fwd ms':>9} {'f+b ms':>9} {'fwd xref':>9} {'f+b xref':>9} "
        f"{'fwd/floor':>9} {'f+b/floor':>9} {'err y':>8} {'err grad':>8}  where / note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r.shape
        size = f"{s.n},{s.t},{s.c}"
        if r.fwd is None or r.fwd_bwd is None:
            lines.append(f"{size:>13} {r.path:>9} {'':>77}  {s.label}; {r.note}")
            continue
        floor = 4 * s.n * s.t * s.c / bandwidth  # one float32 (N, T, C) tensor moved once
        speedup = ["-".rjust(9)] * 2
        if s in ref:
            speedup = [f"{ref[s].fwd / r.fwd:9.1f}", f"{ref[s].fwd_bwd / r.fwd_bwd:9.1f}"]
        errors = [f"{e:8.1e}" if e is not None else "-".rjust(8) for e in (r.err_y, r.err_grad)]
        lines.append(
            f"{size:>13} {r.path:>9} {1e3 * r.fwd:9.2f} {1e3 * r.fwd_bwd:9.2f} {' '.join(speedup)} "
            f"{r.fwd / (3 * floor):9.1f} {r.fwd_bwd / (9 * floor):9.1f} {' '.join(errors)}  "
            f"{s.label}{'; ' + r.note if r.note else ''}"
        )
    return lines


# ----------------------------------------------------------------------------------------------------
# Training and inference throughput (issue 10)

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
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
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


@dataclass(frozen=True)
class GpuCheck:
    """One part of ``bench gpu``: whether it passed, how long it took and what it found."""

    name: str
    ok: bool
    seconds: float
    detail: str


def format_gpu_summary(device_name: str, checks: Sequence[GpuCheck], limit_s: float) -> str:
    """The one summary ``bench gpu`` prints: a line per part, then the verdict and the total time."""
    total = sum(c.seconds for c in checks)
    lines = [f"bench gpu on {device_name}", "=" * 72]
    for c in checks:
        detail = c.detail.splitlines() or [""]
        lines.append(f"{'PASS' if c.ok else 'FAIL'}  {c.name:<28} {c.seconds:7.1f} s  {detail[0]}")
        lines += [f"{'':>45}{d}" for d in detail[1:]]
    verdict = "all parts passed" if all(c.ok for c in checks) else \
        f"FAILED: {', '.join(c.name for c in checks if not c.ok)}"
    within = "within" if total <= limit_s else "OVER"
    lines += ["=" * 72, f"{verdict}; {total:.0f} s in all ({within} the {limit_s / 60:.0f}-minute budget)"]
    return "\n".join(lines)


GPU_LIMIT_S = 8 * 60
# Relative L2 error of the CUDA kernel against the float64 reference that counts as exact (fp32 inputs).
GPU_TOLERANCE = 1e-5


def _gpu_check(name: str, fn: Callable[[], tuple[bool, str]]) -> GpuCheck:
    start = time.perf_counter()
    try:
        ok, detail = fn()
    except Exception as err:  # noqa: BLE001 - one failing part must not hide the others' results
        ok, detail = False, f"{type(err).__name__}: {err}"
    return GpuCheck(name, ok, time.perf_counter() - start, detail)


def bench_gpu(steps: int = 10, compiled: bool = False) -> list[GpuCheck]:
    """Everything issue 10 asks of a GPU machine, in one call: build the CUDA kernel, run the ``cuda`` tests,
    check the kernel against the float64 reference at the Spatial Mix shapes of T/S/B at 224 and 512 px, and run
    the ``wkv``, ``train`` and ``scaling3d`` (sizes :data:`SCALING3D_GPU_SIZES`, 3 timed steps) benchmarks. Each
    part is timed; a failing part is reported, not raised.

    Raises:
        RuntimeError: no CUDA GPU is visible.
    """
    import subprocess
    import sys

    from rwkvlab.ops._cpu import REPO_ROOT
    from rwkvlab.ops._cuda import build

    if not torch.cuda.is_available():
        raise RuntimeError("bench gpu needs a CUDA GPU, and torch.cuda.is_available() is False here; "
                           "on the CPU run `python -m rwkvlab.bench wkv` and `python -m rwkvlab.bench train`")
    device = torch.device("cuda")
    checks = [_gpu_check("build CUDA kernel", lambda: (True, build()))]
    if not checks[0].ok:
        return checks

    def cuda_tests() -> tuple[bool, str]:
        out = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                              str(REPO_ROOT / "tests")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
        return out.returncode == 0, (out.stdout.strip().splitlines() or ["no output"])[-1]

    def exactness() -> tuple[bool, str]:
        fn = functools.partial(bi_wkv, backend="cuda")
        worst, lines = 0.0, []
        for shape in wkv_shapes(1):
            err_y, err_g = _errors(fn, shape, device)
            worst = max(worst, err_y, err_g)
            lines.append(f"T={shape.t:>5} C={shape.c:>5} err y {err_y:.1e} grad {err_g:.1e}  {shape.label}")
        return worst <= GPU_TOLERANCE, f"worst relative L2 error {worst:.1e} (<= {GPU_TOLERANCE:.0e})\n" + "\n".join(lines)

    def wkv() -> tuple[bool, str]:
        bandwidth = memory_bandwidth(device)
        rows = [r for s in wkv_shapes(24) for r in bench_wkv(s, device) if r.path == "cuda"]
        issue = next(r for r in rows if (r.shape.t, r.shape.c) == (784, 576))
        return True, (f"(24, 784, 576) fwd {1e3 * issue.fwd:.3f} ms, fwd+bwd {1e3 * issue.fwd_bwd:.3f} ms "
                      f"(target <= 0.29, authors 1.454)\n" + "\n".join(_format(rows, bandwidth)))

    def train() -> tuple[bool, str]:
        rows = bench_steps(train_configs(device, compiled=compiled), device, steps=steps, warmup=3)
        b = {(r.config.mode, r.config.precision): r for r in rows
             if r.config.model == "rwkv_unet_b" and r.config.channels_last}
        head = (f"B train {b['train', 'bf16'].img_s:.0f} img/s bf16 (target >= 300, peak "
                f"{b['train', 'bf16'].peak_gib:.1f} GiB, target <= 8), infer {b['infer', 'bf16'].img_s:.0f} img/s "
                f"bf16 (target >= 1200)")
        return True, head + "\n" + "\n".join(format_steps(rows))

    def scaling3d() -> tuple[bool, str]:
        lines, rows = scaling3d_report(device, SCALING3D_GPU_SIZES, repeats=3)
        rwkv = [r for r in rows if r.case.model == "rwkv_unet3d_t" and r.seconds is not None]
        return bool(rwkv), "\n".join(lines)

    checks.append(_gpu_check("cuda tests", cuda_tests))
    checks.append(_gpu_check("kernel vs float64 reference", exactness))
    checks.append(_gpu_check("bench wkv", wkv))
    checks.append(_gpu_check("bench train", train))
    checks.append(_gpu_check("bench scaling3d", scaling3d))
    return checks


# ----------------------------------------------------------------------------------------------------
# 3D scaling: RWKV-UNet-3D against SwinUNETR and the 3D U-Net over patch sizes (docs §9, §18)

# (registry name, constructor overrides): the yardstick first.
SCALING3D_MODELS: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = (
    ("unet3d", ()), ("rwkv_unet3d_t", ()), ("rwkv_unet3d_t", (("scan", "axes"),)), ("swin_unetr3d", ()))
SCALING3D_BASELINE = "unet3d"
SCALING3D_CLASSES = 5
# CPU: the sides that fit ~10 minutes on the 2-core machine (a 64^3 step takes 10-60 s there; 96^3 and 128^3 are
# 3.4x and 8x that, so ask for them with --sizes and a larger --cap); GPU: the study's patch sizes and a larger one.
SCALING3D_CPU_SIZES = (32, 64)
SCALING3D_GPU_SIZES = (64, 96, 128, 160)
SCALING3D_CPU_CAP_S = 150.0


@dataclass(frozen=True)
class ScalingCase:
    """One model at one cubic patch side: ``model`` is a registry name, ``kwargs`` its constructor overrides."""

    model: str
    kwargs: tuple[tuple[str, Any], ...]
    size: int

    @property
    def label(self) -> str:
        """``model`` plus its overrides, e.g. ``rwkv_unet3d_t scan=axes``."""
        return self.model + "".join(f" {k}={v}" for k, v in self.kwargs)


@dataclass(frozen=True)
class ScalingRow:
    """Median seconds of a forward+backward step and the memory one step adds (MiB), ``None`` where not measured
    (``note`` says why); ``runs``: the timed steps the median is over."""

    case: ScalingCase
    seconds: float | None
    step_mib: float | None
    runs: int = 0
    note: str = ""


CPU_MEMORY = ("peak anonymous RSS of a fresh process per case during its first step, over its anonymous RSS before "
              "it (VmHWM reset through /proc/self/clear_refs, less the file-backed pages, which are the libraries' "
              "code the first step loads)")
CPU_MEMORY_FALLBACK = ("peak RSS (ru_maxrss) of a fresh process per case less its file-backed pages, over its anonymous "
                       "RSS before the first step (VmHWM cannot be reset here)")
CUDA_MEMORY = "torch.cuda.max_memory_allocated during the first step, over the memory allocated before it"


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _min_side(divisor: int | Sequence[int]) -> int:
    return 2 * (divisor if isinstance(divisor, int) else max(divisor))


def scaling_case_check(case: ScalingCase) -> str:
    """Why ``case`` cannot run a training step at batch 1, or ``""``: each side must be a multiple of the model's
    ``size_divisor`` and at least twice it (the deepest norm needs more than one value per channel in training)."""
    from rwkvlab.models import create_model

    with torch.device("meta"):
        model = create_model(case.model, in_chans=1, num_classes=SCALING3D_CLASSES, **dict(case.kwargs))
    if getattr(model, "spatial_dims", 2) != 3:
        return f"{case.model} is not a 3D model (spatial_dims != 3)"
    divisor = model.size_divisor
    sides = (divisor,) * 3 if isinstance(divisor, int) else tuple(divisor)
    if any(case.size % d for d in sides) or case.size < _min_side(divisor):
        return (f"skipped: sides must be multiples of {max(sides)} and >= {_min_side(divisor)} (size_divisor "
                f"{divisor}; a 1-voxel bottleneck cannot train at batch 1)")
    return ""


@keep_freed_memory()
def measure_scaling_case(case: ScalingCase, device: torch.device, repeats: int = 3, warmup: int = 1,
                         cap_s: float = float("inf")) -> ScalingRow:
    """Time forward, cross-entropy and backward (no optimizer step) of ``case`` at batch 1, 1 channel, fp32, in this
    process: the median of up to ``repeats`` timed steps after ``warmup`` (>= 1) untimed ones, fewer (at least one)
    where another would pass ``cap_s`` seconds since the start; memory added by the first step (see
    :data:`CPU_MEMORY`, :data:`CUDA_MEMORY`; on the CPU it is clean only in a fresh process, which
    :func:`bench_scaling3d` gives each case).
    """
    from rwkvlab.models import create_model

    if repeats < 1 or warmup < 1:
        raise ValueError(f"measure_scaling_case: repeats and warmup must be >= 1, got {repeats}, {warmup}")

    start = time.perf_counter()
    torch.manual_seed(0)
    model = create_model(case.model, in_chans=1, num_classes=SCALING3D_CLASSES, **dict(case.kwargs)).to(device).train()
    s = case.size
    x = torch.randn(1, 1, s, s, s, device=device)
    y = torch.randint(0, SCALING3D_CLASSES, (1, s, s, s), device=device)

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        _sync(device)
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        exact = _reset_peak_rss()
        base = _proc_status_kib("RssAnon") or 0
    first = step()
    if device.type == "cuda":
        step_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = _proc_status_kib("VmHWM") if exact else None
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        # File-backed pages only grow during the step (code of the kernels it loads): what is left is anonymous.
        peak -= (_proc_status_kib("RssFile") or 0) + (_proc_status_kib("RssShmem") or 0)
        step_mib = max(peak - base, 0) / 1024
    for _ in range(warmup - 1):
        first = step()
    times: list[float] = []
    while len(times) < repeats:
        elapsed = time.perf_counter() - start
        last = times[-1] if times else first
        if times and elapsed + last > cap_s:
            break
        if not times and elapsed + last > cap_s:
            return ScalingRow(case, None, step_mib, 0, f"warm-up step {first:.0f} s: a timed one would pass the "
                                                       f"{cap_s:.0f} s cap")
        times.append(step())
    note = f"{len(times)} of {repeats} runs within the {cap_s:.0f} s cap" if len(times) < repeats else ""
    return ScalingRow(case, statistics.median(times), step_mib, len(times), note)


def _scaling_child(spec: str) -> None:
    """Entry point of the fresh process :func:`bench_scaling3d` runs each CPU case in: JSON in, one JSON line out."""
    import json

    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    case = ScalingCase(args["model"], tuple((k, v) for k, v in args["kwargs"]), args["size"])
    row = measure_scaling_case(case, torch.device("cpu"), args["repeats"], args["warmup"], args["cap_s"])
    print(json.dumps({"seconds": row.seconds, "step_mib": row.step_mib, "runs": row.runs, "note": row.note}))


def _isolated(case: ScalingCase, threads: int, repeats: int, warmup: int, cap_s: float) -> ScalingRow:
    import json
    import subprocess
    import sys

    spec = json.dumps({"model": case.model, "kwargs": [list(kv) for kv in case.kwargs], "size": case.size,
                       "threads": threads, "repeats": repeats, "warmup": warmup, "cap_s": cap_s})
    code = "import sys; from rwkvlab.bench import _scaling_child; _scaling_child(sys.argv[1])"
    try:
        out = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True,
                             timeout=1.5 * cap_s + 60 if math.isfinite(cap_s) else None)
    except subprocess.TimeoutExpired:
        return ScalingRow(case, None, None, 0, f"killed: over the {cap_s:.0f} s cap")
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        error = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return ScalingRow(case, None, None, 0, f"failed: {error}")
    got = json.loads(lines[-1])
    return ScalingRow(case, got["seconds"], got["step_mib"], got["runs"], got["note"])


def scaling3d_cases(sizes: Sequence[int],
                    models: Sequence[tuple[str, tuple[tuple[str, Any], ...]]] = SCALING3D_MODELS) -> list[ScalingCase]:
    """Every model of ``models`` at every side of ``sizes``, smallest side first."""
    return [ScalingCase(m, kw, s) for s in sorted(sizes) for m, kw in models]


def bench_scaling3d(cases: Sequence[ScalingCase], device: torch.device, repeats: int = 3, warmup: int = 1,
                    cap_s: float = float("inf"), threads: int = 2, isolate: bool | None = None,
                    progress: Callable[[ScalingRow], None] | None = None) -> list[ScalingRow]:
    """Measure ``cases`` in order (smallest side first, as :func:`scaling3d_cases` orders them).

    On the CPU (``isolate`` None or True) each case runs in a fresh process with ``threads`` threads, killed past
    ~1.5 ``cap_s``; a case whose predicted step (its model's last measured step, scaled by the voxels) would not
    fit a warm-up and one timed step within ``cap_s`` is skipped, and so are the larger sides of a model that
    passed the cap. On a GPU the cases run in this process; out of memory is reported as the row's note.
    """
    isolate = device.type == "cpu" if isolate is None else isolate
    rows: list[ScalingRow] = []
    last: dict[str, ScalingRow] = {}
    for case in cases:
        prev = last.get(case.label)
        why = scaling_case_check(case)
        if not why and prev is not None and prev.seconds is None and prev.note.startswith(("killed", "warm-up")):
            why = f"skipped: {prev.case.size}^3 already passed the {cap_s:.0f} s cap"
        if not why and prev is not None and prev.seconds is not None:
            predicted = prev.seconds * (case.size / prev.case.size) ** 3
            if (warmup + 1) * predicted > cap_s:
                why = (f"skipped: ~{predicted:.0f} s a step predicted from {prev.case.size}^3 (linear in voxels); "
                       f"{warmup} warm-up + 1 timed step > the {cap_s:.0f} s cap")
        if why:
            row = ScalingRow(case, None, None, 0, why)
        elif isolate:
            row = _isolated(case, threads, repeats, warmup, cap_s)
        else:
            try:
                row = measure_scaling_case(case, device, repeats, warmup, cap_s)
            except torch.OutOfMemoryError:
                row = ScalingRow(case, None, None, 0, "out of memory")
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
        if row.seconds is not None or not row.note.startswith("skipped"):
            last[case.label] = row
        if progress is not None:
            progress(row)
    return rows


def format_scaling(rows: Sequence[ScalingRow]) -> list[str]:
    """The table of ``bench scaling3d``: per case the median step, its ratio to the 3D U-Net at the same side, the
    time per voxel, the step's memory and its ratio; then per model how its step grows from the smallest to the
    largest measured side against the voxel (= token) ratio, which a linear-in-tokens model matches."""
    base = {r.case.size: r for r in rows if r.case.label == SCALING3D_BASELINE}

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}"

    head = (f"{'model':<26} {'side':>5} {'voxels':>9} {'f+b s':>8} {'x unet3d':>8} {'us/voxel':>8} "
            f"{'step MiB':>9} {'x unet3d':>8} {'runs':>4}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        c, b = r.case, base.get(r.case.size)
        voxels = c.size**3
        t = "-" if r.seconds is None else f"{r.seconds:.3f}"
        per = "-" if r.seconds is None else f"{1e6 * r.seconds / voxels:.2f}"
        mem = "-" if r.step_mib is None else f"{r.step_mib:.0f}"
        lines.append(f"{c.label:<26} {f'{c.size}^3':>5} {voxels:>9} {t:>8} "
                     f"{ratio(r.seconds, b.seconds if b else None):>8} {per:>8} {mem:>9} "
                     f"{ratio(r.step_mib, b.step_mib if b else None):>8} {r.runs:>4}  {r.note}")
    lines += ["", "growth of the step from the smallest to the largest measured side (linear in voxels = tokens: "
                  "time ratio = voxel ratio, us/voxel constant)"]
    for label in dict.fromkeys(r.case.label for r in rows):
        done = sorted((r for r in rows if r.case.label == label and r.seconds is not None), key=lambda r: r.case.size)
        if len(done) < 2:
            lines.append(f"  {label:<26} fewer than two sides measured")
            continue
        lo, hi = done[0], done[-1]
        voxel_ratio, time_ratio = (hi.case.size / lo.case.size) ** 3, hi.seconds / lo.seconds
        per = ", ".join(f"{r.case.size}^3 {1e6 * r.seconds / r.case.size**3:.2f}" for r in done)
        lines.append(f"  {label:<26} time {hi.case.size}^3 / {lo.case.size}^3 = {time_ratio:.2f} vs voxels "
                     f"{voxel_ratio:.2f} ({time_ratio / voxel_ratio:.2f} of linear); us/voxel: {per}")
    return lines


def scaling3d_report(device: torch.device, sizes: Sequence[int], repeats: int, cap_s: float = float("inf"),
                     threads: int = 2, isolate: bool | None = None) -> tuple[list[str], list[ScalingRow]]:
    """Run :data:`SCALING3D_MODELS` at ``sizes`` on ``device``; return the printed report (what was measured and
    how: device, threads, memory method; the table and the growth lines of :func:`format_scaling`) and the rows."""
    from tqdm.auto import tqdm

    cases = scaling3d_cases(sizes)
    if device.type == "cuda":
        where, memory = torch.cuda.get_device_name(device), CUDA_MEMORY
    else:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        where = cpu_label()
        torch.set_num_threads(saved)
        isolated = device.type == "cpu" if isolate is None else isolate
        memory = (CPU_MEMORY if _reset_peak_rss() else CPU_MEMORY_FALLBACK) if isolated else \
            "peak RSS during the first step over the RSS before it, all cases in one process (freed memory reused)"
    bar = tqdm(total=len(cases), desc="bench scaling3d", unit="case", leave=False)
    rows = bench_scaling3d(cases, device, repeats, cap_s=cap_s, threads=threads, isolate=isolate,
                           progress=lambda _row: bar.update())
    bar.close()
    cap = "" if cap_s == float("inf") else f", cap {cap_s:.0f} s per case"
    head = [f"3D scaling on {where}: forward + cross-entropy + backward at batch 1, 1 channel, {SCALING3D_CLASSES} "
            f"classes, fp32; median of up to {repeats} steps after 1 warm-up step{cap}",
            f"memory (step MiB): {memory}"]
    return head + format_scaling(rows), rows


def bench_data(n: int = 1000, size: tuple[int, int] = (224, 224), batch: int = 24) -> None:
    """Print the input-pipeline throughputs described in the module docstring."""
    import json
    import tempfile
    from pathlib import Path

    import numpy as np
    from torch.utils.data import DataLoader

    from rwkvlab.data.augment import train_transforms
    from rwkvlab.data.cache import load_prepared, prepare
    from rwkvlab.data.loader import SegArrays
    from rwkvlab.data.reader import Case, Reader, Sample

    class RandomBlobs(Reader):
        name, class_names, description, layout = "bench", ("background", "fg"), "random blobs", ""

        def scan(self, problems: list[str]) -> list[Case]:
            return [Case(f"c{i:05d}", ()) for i in range(n)]

        def load(self, case: Case) -> Sample:
            rng = np.random.default_rng(int(case.case_id[1:]))
            label = np.zeros(size, np.uint8)
            r, c = rng.integers(0, size[0] // 2, 2)
            label[r : r + size[0] // 3, c : c + size[1] // 3] = 1
            return Sample(rng.integers(0, 256, (*size, 3), dtype=np.uint8), label)

    with tempfile.TemporaryDirectory() as tmp:
        cache = prepare(RandomBlobs(Path(tmp)), size, Path(tmp) / "cache.h5", Path(tmp), seeds=[])
        split = Path(tmp) / "seed0.json"
        split.write_text(json.dumps({"train": [f"c{i:05d}" for i in range(n)]}))
        start = time.perf_counter()
        data = load_prepared(cache, split)
        load_s = time.perf_counter() - start
    print(f"\ninput pipeline at {size[0]}x{size[1]}, RGB uint8 cache of {n} items, batch {batch}")
    print(f"  load cache into memory       {n / load_s:10.0f} samples/s")
    start = time.perf_counter()
    for _ in DataLoader(SegArrays(data, "train"), batch_size=batch, shuffle=True):
        pass
    print(f"  iterate, no augmentation     {n / (time.perf_counter() - start):10.0f} samples/s (target >= 2000)")
    torch.set_num_threads(1)
    for recipe in ("light", "acdc"):
        items = SegArrays(data, "train", train_transforms(recipe, size, seed=0))
        m = min(n, 300)
        start = time.perf_counter()
        for i in range(m):
            items[i]
        print(f"  augment '{recipe}', 1 thread  {m / (time.perf_counter() - start):10.0f} samples/s per core (target >= 300)")


# Synapse organs, label: (centre as a fraction of (D, H, W), semi-axes in voxels), sized like the
# TransUNet-preprocessed test volumes (512 x 512 slices of ~0.75 mm, ~3 mm apart); drawn largest first.
_ORGANS = {
    5: ((0.45, 0.42, 0.30), (25, 105, 90)),  # liver, ~1 M voxels
    8: ((0.40, 0.40, 0.64), (18, 65, 50)),  # stomach
    7: ((0.40, 0.55, 0.78), (17, 45, 32)),  # spleen
    3: ((0.55, 0.60, 0.68), (16, 33, 26)),  # left kidney
    4: ((0.60, 0.60, 0.30), (16, 33, 26)),  # right kidney
    6: ((0.52, 0.50, 0.53), (7, 18, 70)),  # pancreas
    1: ((0.50, 0.55, 0.50), (45, 12, 12)),  # aorta, a tube through most slices
    2: ((0.50, 0.40, 0.38), (8, 18, 14)),  # gallbladder
}


def synapse_like_case(seed: int, shape: tuple[int, int, int] = (100, 512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A (prediction, ground truth) pair of uint8 label maps with the 8 Synapse organs as ellipsoids.

    The prediction moves each organ by ~2 voxels, rescales its axes by ~8% and adds a false-positive
    fragment of three organs elsewhere in the volume, as networks do; the fragments widen the boxes.

    Shape:
        (D, H, W) each, labels 0-8.
    """
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)

    def draw(vol: np.ndarray, label: int, centre: np.ndarray, axes: np.ndarray) -> None:
        lo = np.clip(np.floor(centre - axes).astype(int), 0, shape)
        hi = np.clip(np.ceil(centre + axes).astype(int) + 1, 0, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = sum(((x - c) / r) ** 2 for x, c, r in zip(grid, centre, axes)) <= 1
        vol[tuple(slice(a, b) for a, b in zip(lo, hi))][inside] = label

    fragments = set(rng.choice(list(_ORGANS), 3, replace=False).tolist())
    for label, (centre, axes) in _ORGANS.items():
        centre, axes = np.array(centre) * shape, np.array(axes, dtype=np.float64)
        draw(gt, label, centre, axes)
        draw(pred, label, centre + rng.normal(0, 2, 3), axes * rng.normal(1, 0.08, 3))
        if label in fragments:
            draw(pred, label, rng.uniform(0.15, 0.85, 3) * shape, rng.uniform(2, 8, 3))
    return pred, gt


def _whole_volume_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                          spacing: Sequence[float] | None) -> np.ndarray:
    """``case_metrics`` as it was before bounding boxes (rwkvlab @ 93a1e1c): the yardstick."""
    from scipy import ndimage

    def surface(mask: np.ndarray) -> np.ndarray:
        return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))

    def directed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ndimage.distance_transform_edt(~surface(b), sampling=spacing)[surface(a)]

    rows = []
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        if p.any() and g.any():
            dsc = 2.0 * np.count_nonzero(p & g) / (np.count_nonzero(p) + np.count_nonzero(g))
            rows.append((float(dsc), float(np.percentile(np.concatenate([directed(p, g), directed(g, p)]), 95))))
        else:
            rows.append((1.0, 0.0) if p.any() else (0.0, 0.0))
    return np.array(rows, dtype=np.float64)


def bench_metrics(volumes: int = 1, spacing: Sequence[float] | None = None) -> None:
    """Print the whole-volume and boxed metric times described in the module docstring.

    Raises:
        SystemExit: when the boxed results differ from the whole-volume ones in any bit.
    """
    from rwkvlab.engine.evaluate import evaluate_cases
    from rwkvlab.metrics import case_metrics

    names = ("background", *(f"organ{label}" for label in range(1, 9)))
    print(f"\nDSC/HD95 of Synapse-like volumes (100 x 512 x 512, 8 organs), spacing {spacing or 'voxels'}")
    cases, mismatches = [], []
    for i in range(volumes):
        pred, gt = synapse_like_case(i)
        cases.append((pred, gt))
        start = time.perf_counter()
        boxed = case_metrics(pred, gt, len(names), spacing)
        boxed_s = time.perf_counter() - start
        start = time.perf_counter()
        whole = _whole_volume_metrics(pred, gt, len(names), spacing)
        whole_s = time.perf_counter() - start
        same = boxed.tobytes() == whole.tobytes()
        if not same:
            mismatches.append(i)
        print(f"  volume {i}: whole volume {whole_s:7.1f} s, boxed {boxed_s:6.2f} s (target <= 5), "
              f"x{whole_s / boxed_s:.0f}, bit-identical: {same}")
    if volumes > 1:
        start = time.perf_counter()
        evaluate_cases([p for p, _ in cases], [g for _, g in cases], [str(i) for i in range(volumes)], names,
                       [spacing] * volumes)
        print(f"  evaluate_cases, {volumes} volumes in parallel (voxels{' and mm' if spacing else ''}): "
              f"{time.perf_counter() - start:.1f} s")
    if mismatches:
        raise SystemExit(f"boxed metrics differ from the whole-volume ones on volumes {mismatches}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=["wkv", "data", "metrics", "train", "gpu", "scaling3d"])
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append", help="default: cpu, and cuda if present")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds after which a measurement stops")
    parser.add_argument("--volumes", type=int, default=1, help="metrics: Synapse-like volumes to score")
    parser.add_argument("--spacing", type=float, nargs=3, help="metrics: voxel size (D H W); default voxels")
    parser.add_argument("--models", nargs="+", help=f"train: models (default {TRAIN_MODELS[0]} on the CPU, "
                        f"T/S/B on a GPU); the baseline {BASELINE_MODEL} is added on the CPU")
    parser.add_argument("--batch", type=int, help="train: batch size (default 4 on the CPU, 24 on a GPU)")
    parser.add_argument("--size", type=int, default=224, help="train: image size")
    parser.add_argument("--steps", type=int, help="train, gpu: timed steps per configuration (default 3 CPU, 10 GPU)")
    parser.add_argument("--compile", action="store_true", help="train, gpu: torch.compile the models")
    parser.add_argument("--sizes", type=int, nargs="+", help="scaling3d: cubic patch sides (default "
                        f"{' '.join(map(str, SCALING3D_CPU_SIZES))} on the CPU, "
                        f"{' '.join(map(str, SCALING3D_GPU_SIZES))} on a GPU)")
    parser.add_argument("--repeats", type=int, help="scaling3d: timed steps per case after one warm-up step, median "
                        "(default 2 on the CPU, 5 on a GPU)")
    parser.add_argument("--cap", type=float, default=SCALING3D_CPU_CAP_S, help="scaling3d on the CPU: seconds per "
                        "case; larger cases predicted over it are skipped")
    parser.add_argument("--in-process", action="store_true", help="scaling3d on the CPU: run the cases in this "
                        "process (faster to start; memory figures then carry earlier cases' freed memory)")
    args = parser.parse_args(argv)
    for name in ("batch", "size", "steps", "threads", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    if args.benchmark == "gpu":
        try:
            checks = bench_gpu(args.steps or 10, args.compile)
        except RuntimeError as err:
            raise SystemExit(f"error: {err}") from None
        print(format_gpu_summary(torch.cuda.get_device_name(), checks, GPU_LIMIT_S))
        if not all(c.ok for c in checks):
            raise SystemExit(1)
        return
    if args.benchmark == "train":
        for name in args.device or ["cuda" if torch.cuda.is_available() else "cpu"]:
            device = torch.device(name)
            if name == "cuda" and not torch.cuda.is_available():
                parser.error("--device cuda: no CUDA GPU is visible")
            configs = train_configs(device, args.models, args.batch, args.size, args.compile)
            label = torch.cuda.get_device_name(device) if name == "cuda" else cpu_label()
            print(f"\ntrain step and inference on {label}, {args.size}x{args.size}, 9 classes")
            start = time.perf_counter()
            rows = bench_steps(configs, device, steps=args.steps or (10 if name == "cuda" else 3),
                               warmup=3 if name == "cuda" else 1)
            print("\n".join(format_steps(rows)))
            print(f"({time.perf_counter() - start:.0f} s)")
        return
    if args.benchmark == "scaling3d":
        if args.sizes is not None and min(args.sizes) < 1:
            parser.error(f"--sizes must be >= 1, got {args.sizes}")
        for name in args.device or ["cuda" if torch.cuda.is_available() else "cpu"]:
            if name == "cuda" and not torch.cuda.is_available():
                parser.error("--device cuda: no CUDA GPU is visible")
            device = torch.device(name)
            cuda = device.type == "cuda"
            sizes = args.sizes or (SCALING3D_GPU_SIZES if cuda else SCALING3D_CPU_SIZES)
            start = time.perf_counter()
            lines, _ = scaling3d_report(device, sizes, args.repeats or (5 if cuda else 2),
                                        cap_s=float("inf") if cuda else args.cap, threads=args.threads,
                                        isolate=not (cuda or args.in_process))
            print("\n".join(lines))
            print(f"({time.perf_counter() - start:.0f} s)")
        return
    if args.benchmark == "data":
        bench_data()
        return
    if args.benchmark == "metrics":
        bench_metrics(args.volumes, args.spacing)
        return
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in devices:
        device = torch.device(name)
        _KERNELS[name]()  # build before timing
        bandwidth = memory_bandwidth(device)
        label = torch.cuda.get_device_name(device) if name == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(
            f"\nBi-WKV on {label}: float32; copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
            f"floor = bytes moved / bandwidth (fwd: 3 tensors, fwd+bwd: 9)"
        )
        start = time.perf_counter()
        shapes = wkv_shapes(24 if name == "cuda" else 1)
        rows = [row for shape in shapes for row in bench_wkv(shape, device, args.runs, args.budget)]
        print("\n".join(_format(rows, bandwidth)))
        print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
