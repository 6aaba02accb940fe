"""``python -m rwkvlab.bench wkv``: every Bi-WKV path timed (issue 3, docs §2, §9).

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

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rwkvlab.bench._timing import median_time, memory_bandwidth
from rwkvlab.models.rwkv_unet import SIZES
from rwkvlab.ops import available_backends, bi_wkv
from rwkvlab.ops._cpu import cpu_kernels
from rwkvlab.ops._cuda import cuda_kernels
from rwkvlab.ops._reference import bi_wkv_reference

__all__ = ["WkvRow", "WkvShape", "bench_wkv", "format_wkv", "wkv_errors", "wkv_shapes", "KERNELS", "run"]

REFERENCE_LIMIT_BYTES = 4.5 * 2**30
ERROR_LIMIT_BYTES = 2**30
_REFERENCE_FACTOR = 3  # peak memory of the reference, in (N, C, T, T) tensors (measured)
KERNELS: dict[str, Callable[[], object]] = {"cpu": cpu_kernels, "cuda": cuda_kernels}


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


def wkv_errors(fn: Callable[..., Tensor], shape: WkvShape, device: torch.device) -> tuple[float, float]:
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
            fwd = median_time(functools.partial(fn, k, v, w, u), device, path_runs, budget)
        fwd_bwd = median_time(functools.partial(_forward_backward, fn, [k, v, w, u], gy), device, path_runs, budget)
        err = (None, None) if path == "reference" else wkv_errors(fn, shape, device)
        note = "kernel missing: ran chunked" if KERNELS.get(path, lambda: True)() is None else ""
        rows.append(WkvRow(shape, path, fwd, fwd_bwd, *err, note))
    return rows


def format_wkv(rows: Sequence[WkvRow], bandwidth: float) -> list[str]:
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


def run(devices: Sequence[str], runs: int, budget: float) -> None:
    """Print the table of every path on every device of ``devices``."""
    import time

    for name in devices:
        device = torch.device(name)
        KERNELS[name]()  # build before timing
        bandwidth = memory_bandwidth(device)
        label = torch.cuda.get_device_name(device) if name == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(
            f"\nBi-WKV on {label}: float32; copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
            f"floor = bytes moved / bandwidth (fwd: 3 tensors, fwd+bwd: 9)"
        )
        start = time.perf_counter()
        shapes = wkv_shapes(24 if name == "cuda" else 1)
        rows = [row for shape in shapes for row in bench_wkv(shape, device, runs, budget)]
        print("\n".join(format_wkv(rows, bandwidth)))
        print(f"({time.perf_counter() - start:.0f} s)")
