"""``python -m rwkvlab.bench scaling3d``: how a training step grows with the patch of a volume (docs §9, §18).

Forward, cross-entropy and backward at batch 1, 1 channel, 5 classes, of ``rwkv_unet3d_t`` (raster scan and
``scan=axes``), ``swin_unetr3d`` and ``unet3d`` at cubic sides (``--sizes``; 32 and 64 on the CPU, 64 to 160
on a GPU). It prints the median step, its ratio to the 3D U-Net of the same run, time per voxel, the memory one
step adds (CPU: peak anonymous RSS of a fresh process per case; GPU: ``max_memory_allocated``) and, per model,
time(largest)/time(smallest) against the voxel (= token) ratio. On the CPU each case runs in its own process under
a time cap (``--cap``); cases predicted to pass it are skipped with the reason printed."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rwkvlab.bench._timing import cpu_label, sync
from rwkvlab.engine.cpu_memory import keep_freed_memory

__all__ = ["ScalingCase", "ScalingRow", "bench_scaling3d", "format_scaling", "measure_scaling_case", "scaling3d_cases",
           "scaling3d_report", "SCALING3D_CPU_SIZES", "SCALING3D_GPU_SIZES", "SCALING3D_CPU_CAP_S"]

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
        sync(device)
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        sync(device)
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
    code = "import sys; from rwkvlab.bench.scaling3d import _scaling_child; _scaling_child(sys.argv[1])"
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
