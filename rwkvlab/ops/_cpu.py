"""Fast exact Bi-WKV (docs §2): the CPU kernel, a pure-PyTorch chunked scan and the kernel build helper.

Every fast path computes ``y`` and ``lz = log(softmax denominator)`` in one forward pass and the four
gradients in one backward pass, all O(T) and in log space (a running maximum, so exp() only ever sees
arguments <= 0). Log-weights and sums are float64 and exp/log run at the input precision, which keeps
float32 inputs within ~1e-6 of the float64 reference (see the chunked scan's notes below). With
``P_ti = exp(L_ti - lz_t)`` and ``g = dLoss/dy``:

* ``gv_i = sum_t P_ti g_t`` and ``gk_i = sum_t P_ti g_t (v_i - y_t)``,
* ``gu = sum_t P_tt g_t (v_t - y_t)`` and ``gw = -sum_{t != i} (|t-i| - 1) P_ti g_t (v_i - y_t)``.

Two implementations of :class:`rwkvlab.ops._op.Kernels`, run by the custom op of :mod:`rwkvlab.ops._op`:

* :class:`CpuKernels`: ``kernels/wkv_cpu.cpp``, built on first use with ninja into
  ``<repo>/build/torch_extensions/`` and called through ctypes (a plain C ABI, so the build takes
  seconds). OpenMP over (batch, channel block), vectorised over the contiguous channel axis.
* :class:`ChunkedScan`: pure PyTorch, any device, and the same chunked algorithm as the CUDA kernel
  (``kernels/wkv_cuda.cu``), so testing it on the CPU tests that algorithm. The sequence is cut into
  ``chunks`` pieces; (1) each piece is summarised from both ends, (2) each piece combines the summaries
  of the pieces left and right of it, (3) each piece scans its tokens from both ends. Steps 1 and 2 are
  vectorised; step 3 loops over the ``ceil(T / chunks)`` positions of a piece.

The backend ``cpu`` (:func:`bi_wkv_cpu`) uses the kernel and falls back to the chunked scan, with one
logged warning, when the kernel cannot be built.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rwkvlab.ops._op import bi_wkv_op

logger = logging.getLogger(__name__)

__all__ = [
    "ChunkedScan",
    "CpuKernels",
    "bi_wkv_chunked",
    "bi_wkv_cpu",
    "build_library",
    "cpu_kernels",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNELS_DIR = REPO_ROOT / "kernels"
BUILD_ROOT = REPO_ROOT / "build" / "torch_extensions"

# Log-scale of an empty sum: finite, so empty states combine without inf - inf.
EMPTY = -1e30


class _NoCudaRuntimeFilter(logging.Filter):
    """Drops the warning ``No CUDA runtime is found, using CUDA_HOME=...`` that importing
    :mod:`torch.utils.cpp_extension` logs on a machine with a CUDA toolkit but no GPU: building the CPU kernel
    needs no GPU, and the dispatcher says in its own words which backend runs (:mod:`rwkvlab.ops.bi_wkv`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


# Installed at import, before anything here imports cpp_extension (which logs once, at its own import).
logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaRuntimeFilter())


# ----------------------------------------------------------------------------------------------------
# Building kernels


def build_library(name: str, sources: Sequence[Path], **load_kwargs: Any) -> str:
    """JIT-build a shared library with a C ABI (ninja) into ``BUILD_ROOT/name``; return its path.

    The build is serialised by an OS-level lock that dies with its holder. Holding it, any torch
    ``lock`` file in the folder is left by a build killed half-way (older torch versions would wait on
    it forever), so it is removed first.

    Args:
        name: extension name, also the build sub-folder.
        sources: C++ or CUDA files.
        **load_kwargs: passed to :func:`torch.utils.cpp_extension.load` (flags).

    Raises:
        FileNotFoundError: a source is missing (e.g. an install without ``kernels/``).
        RuntimeError, OSError: the compiler is missing or the build failed.
    """
    from filelock import FileLock
    from torch.utils.cpp_extension import load

    for src in sources:
        if not src.is_file():
            raise FileNotFoundError(f"kernel source {src} not found")
    build_dir = BUILD_ROOT / name
    build_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(build_dir / "rwkvlab.lock")):
        (build_dir / "lock").unlink(missing_ok=True)
        return load(
            name=name,
            sources=[str(s) for s in sources],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
            **load_kwargs,
        )


def _ptr(x: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(x.data_ptr())


class CpuKernels:
    """``kernels/wkv_cpu.cpp`` through ctypes; float32 and float64 CPU tensors."""

    dtypes = (torch.float32, torch.float64)

    def __init__(self, path: str) -> None:
        self._lib = ctypes.CDLL(path)
        i64 = ctypes.c_int64
        for dt in ("f32", "f64"):
            getattr(self._lib, f"wkv_forward_{dt}").argtypes = [ctypes.c_void_p] * 6 + [i64] * 3 + [ctypes.c_int]
            getattr(self._lib, f"wkv_backward_{dt}").argtypes = [ctypes.c_void_p] * 11 + [i64] * 3 + [ctypes.c_int]

    def _fn(self, kind: str, x: Tensor) -> Any:
        return getattr(self._lib, f"wkv_{kind}_{'f64' if x.dtype == torch.float64 else 'f32'}")

    def forward(self, k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """See :class:`rwkvlab.ops._op.Kernels`."""
        y, lz = torch.empty_like(k), torch.empty_like(k)
        self._fn("forward", k)(*map(_ptr, (k, v, w, u, y, lz)), *k.shape, torch.get_num_threads())
        return y, lz

    def backward(
        self, k: Tensor, v: Tensor, w: Tensor, u: Tensor, y: Tensor, lz: Tensor, gy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """See :class:`rwkvlab.ops._op.Kernels`."""
        n, _, c = k.shape
        gk, gv = torch.empty_like(k), torch.empty_like(k)
        # Per-batch partial sums of gw and gu, in float64 (they sum T^2 terms of both signs).
        gw, gu = torch.empty(2, n, c, dtype=torch.float64)
        self._fn("backward", k)(*map(_ptr, (k, v, w, u, y, lz, gy, gk, gv, gw, gu)), *k.shape, torch.get_num_threads())
        return gk, gv, gw.sum(0).to(k.dtype), gu.sum(0).to(k.dtype)


@functools.cache
def cpu_kernels() -> CpuKernels | None:
    """The CPU kernel, built on first call; ``None`` (logged once) if it cannot be built."""
    try:
        path = build_library(
            "rwkvlab_wkv_cpu",
            [KERNELS_DIR / "wkv_cpu.cpp"],
            # -fno-trapping-math lets the channel loops with max/select vectorise; results are unchanged.
            extra_cflags=["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as err:  # noqa: BLE001 - any build failure means: use the pure-PyTorch path
        logger.warning("bi_wkv: CPU kernel unavailable (%s); using the slower pure-PyTorch chunked scan", err)
        return None
    logger.info("bi_wkv: built CPU kernel %s", path)
    return CpuKernels(path)


# ----------------------------------------------------------------------------------------------------
# Pure-PyTorch chunked scan (the algorithm of kernels/wkv_cuda.cu)
#
# A state "seen from" position x holds sums of exp(x_i - (|x - i| - 1) w) * values_i divided by e^p,
# where p = m - n w is the largest of those log-weights: m is that source's log-weight at distance 0
# and n its distance. Three choices keep fp32 inputs within ~1e-6 of the float64 reference (the dense
# fp32 formula itself is off by up to 4e-5 in the gradient of w, whose sum over T^2 terms cancels):
# * p is recomputed from (m, n) rather than by p -= w at each step, which drifts over the steps;
# * log-weights and sums are float64 (COMPUTE_DTYPE): log-weights are ~|lz| in size with differences
#   ~1, and the sums run over up to T/chunks steps;
# * exp() and log() are evaluated at the input precision (``dt``), as the kernels do: their
#   arguments are <= 0, so rounding them to float costs at most ~1e-7 of the weight.

COMPUTE_DTYPE = torch.float64


def _exp(x: Tensor, dt: torch.dtype) -> Tensor:
    return torch.exp(x.to(dt)).to(x.dtype)


def _log(x: Tensor, dt: torch.dtype) -> Tensor:
    return torch.log(x.to(dt)).to(x.dtype)


def _stored(x: Tensor, dt: torch.dtype) -> Tensor:
    """``x`` rounded as the kernel stores it in a ``dt`` buffer."""
    return x.to(dt).to(x.dtype)


def _push(
    m: Tensor,
    n: Tensor,
    values: Sequence[Tensor],
    x: Tensor,
    new_values: Sequence[Tensor | float],
    w: Tensor,
    dt: torch.dtype,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Move a state one position further from its sources, then add a source at distance 0."""
    n1 = n + 1
    p1 = m - n1 * w
    q = torch.maximum(p1, x)
    e_old, e_new = _exp(p1 - q, dt), _exp(x - q, dt)
    take = x > p1
    return (
        torch.where(take, x, m),
        torch.where(take, 0.0, n1),
        [a * e_old + b * e_new for a, b in zip(values, new_values)],
    )


def _summarise(
    x: Tensor, dist: Tensor, w: Tensor, values: Sequence[Tensor], dt: torch.dtype
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """State of the sources of each chunk: ``x`` and ``values`` (N, J, L, C), distances ``dist`` (L, 1)."""
    logw = x - dist * w
    i = logw.argmax(2, keepdim=True)
    m, n, p = x.gather(2, i), dist.expand_as(x).gather(2, i), logw.gather(2, i)
    e = _exp(logw - p, dt)
    return m[:, :, 0], n[:, :, 0], [(v * e).sum(2) for v in values]


def _incoming(
    m: Tensor,
    n: Tensor,
    values: Sequence[Tensor],
    w: Tensor,
    dt: torch.dtype,
    length: int,
    left: bool,
    dist: Sequence[tuple[int, int]] = (),
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """State entering each chunk from the chunks on one side, from their states (N, J, C).

    A chunk's state, seen from just past it, is moved ``D`` more positions to be seen from just past
    the target chunk: ``n += D`` and, for each distance-weighted sum ``values[i]`` with ``(i, j)`` in
    ``dist``, ``values[i] += D values[j]``.
    """
    j = m.shape[1]
    idx = torch.arange(j, device=m.device)
    gap = (idx[:, None] - idx[None, :] - 1) if left else (idx[None, :] - idx[:, None] - 1)  # (target, source)
    valid = (gap >= 0)[None, :, :, None]
    d = (gap.clamp(min=0) * length)[None, :, :, None]  # positions moved
    ms = torch.where(valid, m[:, None], EMPTY)
    ns = n[:, None] + d
    xs = [x[:, None] for x in values]
    for i, i_base in dist:
        xs[i] = xs[i] + d * xs[i_base]
    logw = ms - ns * w
    i = logw.argmax(2, keepdim=True)
    e = _exp(logw - logw.gather(2, i), dt)
    return (
        ms.gather(2, i)[:, :, 0],
        ns.expand_as(logw).gather(2, i)[:, :, 0],
        [torch.where(valid, x * e, 0.0).sum(2) for x in xs],
    )


class ChunkedScan:
    """Bi-WKV in pure PyTorch by a chunked two-direction scan (any device, float32/float64).

    Args:
        chunks: pieces the sequence is cut into; ``None`` picks ~sqrt(T), the fastest here. The CUDA
            kernel uses 32 per (batch, channel).
    """

    dtypes = (torch.float32, torch.float64)

    def __init__(self, chunks: int | None = None) -> None:
        if chunks is not None and chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        self.chunks = chunks

    def _layout(self, t: int) -> tuple[int, int]:
        length = -(-t // (self.chunks or max(1, round(math.sqrt(t)))))
        return -(-t // length), length  # non-empty chunks, tokens per chunk

    @staticmethod
    def _split(x: Tensor, j: int, length: int, pad: float) -> Tensor:
        """(N, T, C) -> (N, J, L, C), padded at the end with ``pad``."""
        n, t, c = x.shape
        return torch.nn.functional.pad(x, (0, 0, 0, j * length - t), value=pad).view(n, j, length, c)

    def forward(self, k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """See :class:`rwkvlab.ops._op.Kernels`."""
        n, t, c = k.shape
        j, length = self._layout(t)
        dt = k.dtype
        k, v, w, u = (x.to(COMPUTE_DTYPE) for x in (k, v, w, u))
        # Padding tokens get log-weight EMPTY and values 0.
        kc, vc = self._split(k, j, length, EMPTY), self._split(v, j, length, 0.0)
        one = self._split(torch.ones_like(k), j, length, 0.0)
        pos = torch.arange(length, device=k.device, dtype=k.dtype)[:, None]  # (L, 1)
        # (1) Each chunk's tokens seen from past its end (for the chunks right of it) and from before
        # its start (for the chunks left of it).
        sum_l = _summarise(kc, length - 1 - pos, w, [vc, one], dt)
        sum_r = _summarise(kc, pos, w, [vc, one], dt)
        # (2) and (3): left to right, keep the state of the tokens left of each t as a mean and a
        # log-denominator, rounded as the kernel stores them (in y and lz); right to left, combine it
        # with the state of the tokens right of t and the token itself.
        m_, n_, (a, b) = _incoming(*sum_l, w, dt, length, left=True)
        left_mean, left_log = [], []
        for s in range(length):
            left_mean.append(_stored(torch.where(b > 0, a / b, 0.0), dt))
            left_log.append(_stored(m_ - n_ * w + _log(b, dt), dt))
            m_, n_, (a, b) = _push(m_, n_, [a, b], kc[:, :, s], [vc[:, :, s], one[:, :, s]], w, dt)
        m_, n_, (a, b) = _incoming(*sum_r, w, dt, length, left=False)
        ys, lzs = [], []
        for s in reversed(range(length)):
            ks, vs, ll = kc[:, :, s], vc[:, :, s], left_log[s]
            pr, ps = m_ - n_ * w, u + ks
            mx = torch.maximum(torch.maximum(ll, pr), ps)
            el, er, es = (_exp(x - mx, dt) for x in (ll, pr, ps))
            den = el + b * er + es
            ys.append((left_mean[s] * el + a * er + vs * es) / den)
            lzs.append(mx + _log(den, dt))
            m_, n_, (a, b) = _push(m_, n_, [a, b], ks, [vs, one[:, :, s]], w, dt)
        y = torch.stack(ys[::-1], 2).view(n, j * length, c)[:, :t]
        lz = torch.stack(lzs[::-1], 2).view(n, j * length, c)[:, :t]
        return y.to(dt), lz.to(dt)

    def backward(
        self, k: Tensor, v: Tensor, w: Tensor, u: Tensor, y: Tensor, lz: Tensor, gy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """See :class:`rwkvlab.ops._op.Kernels`."""
        n, t, c = k.shape
        j, length = self._layout(t)
        dt = k.dtype
        k, v, w, u, y, lz, gy = (x.to(COMPUTE_DTYPE) for x in (k, v, w, u, y, lz, gy))
        kc, vc, yc = (self._split(x, j, length, pad) for x, pad in ((k, EMPTY), (v, 0.0), (y, 0.0)))
        # Sources t: log-weight -lz_t, values g_t and g_t y_t (padding: EMPTY and 0).
        nlz, g = self._split(-lz, j, length, EMPTY), self._split(gy, j, length, 0.0)
        gyc = g * yc
        pos = torch.arange(length, device=k.device, dtype=k.dtype)[:, None]
        # Values s1 = sum e g, s2 = sum e g y, and d1, d2: the same weighted by the distance.
        dl, dr = length - 1 - pos, pos
        sum_l = _summarise(nlz, dl, w, [g, gyc, dl * g, dl * gyc], dt)
        sum_r = _summarise(nlz, dr, w, [g, gyc, dr * g, dr * gyc], dt)
        # The token's own logit u + k_t.
        e_self = _exp(u + kc + nlz, dt) * g
        gv = e_self.clone()
        gk = e_self * (vc - yc)
        gu = gk.sum((0, 1, 2))
        gw = torch.zeros_like(w)
        for left, summary in ((True, sum_l), (False, sum_r)):
            m_, n_, st = _incoming(*summary, w, dt, length, left=left, dist=((2, 0), (3, 1)))
            for s in range(length) if left else reversed(range(length)):
                vs = vc[:, :, s]
                s1, s2, d1, d2 = st
                f = _exp(kc[:, :, s] + m_ - n_ * w, dt)  # <= 1: the largest P_ti of the sources
                gv[:, :, s] += f * s1
                gk[:, :, s] += f * (vs * s1 - s2)
                gw -= (f * (vs * d1 - d2)).sum((0, 1))
                m_, n_, st = _push(
                    m_, n_, [s1, s2, d1 + s1, d2 + s2], nlz[:, :, s], [g[:, :, s], gyc[:, :, s], 0.0, 0.0], w, dt
                )
        gk = gk.view(n, j * length, c)[:, :t]
        gv = gv.view(n, j * length, c)[:, :t]
        return gk.to(dt), gv.to(dt), gw.to(dt), gu.to(dt)


def bi_wkv_chunked(k: Tensor, v: Tensor, w: Tensor, u: Tensor, chunks: int | None = None) -> Tensor:
    """Bi-WKV (docs §2) by the pure-PyTorch chunked scan, on any device.

    Args:
        k: keys, (N, T, C).
        v: values, (N, T, C).
        w: decay per channel, (C,), already divided by T.
        u: bonus of the token itself per channel, (C,), already divided by T.
        chunks: see :class:`ChunkedScan`.

    Shape:
        (N, T, C) -> (N, T, C), dtype of ``k``.
    """
    return bi_wkv_op(k, v, w, u, "chunked", chunks or 0)


def bi_wkv_cpu(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> Tensor:
    """Bi-WKV (docs §2) on CPU tensors by the C++ kernel, else the chunked scan (logged once).

    Args:
        k: keys, (N, T, C).
        v: values, (N, T, C).
        w: decay per channel, (C,), already divided by T.
        u: bonus of the token itself per channel, (C,), already divided by T.

    Shape:
        (N, T, C) -> (N, T, C), dtype of ``k``.
    """
    if k.device.type != "cpu":
        raise ValueError(f"bi_wkv backend 'cpu' needs CPU tensors, got {k.device}")
    return bi_wkv_op(k, v, w, u, "cpu")
