"""Public Bi-WKV operator and its backend dispatcher (docs §2).

The backend is resolved in this order: the ``backend`` argument, then the environment variable
``RWKVLAB_WKV_BACKEND``, then ``"auto"`` (the fastest registered backend that supports the
inputs; ``reference`` under ``torch.jit.trace`` and ``torch.export``, whose graphs must run elsewhere). Which implementation runs is logged once per (device type, kernel) from inside the op, so that
it is said at run time also under ``torch.compile``.

Backends, fastest first: ``cuda`` (CUDA tensors, ``kernels/wkv_cuda.cu``), ``cpu`` (CPU tensors,
``kernels/wkv_cpu.cpp``), ``chunked`` (pure PyTorch, any device) and ``reference`` (the O(T^2)
specification). The kernels are built on first use, never at import; a backend whose kernel cannot
be built logs why once and runs ``chunked``. ``cuda``, ``cpu`` and ``chunked`` run through the custom op
``rwkvlab::wkv_forward`` (:mod:`rwkvlab.ops._op`), so ``torch.compile`` keeps Bi-WKV as one graph node and
``meta`` tensors (shape propagation) go through its fake implementation.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch
from torch import Tensor

from rwkvlab.ops._cpu import bi_wkv_chunked, bi_wkv_cpu
from rwkvlab.ops._reference import bi_wkv_reference

logger = logging.getLogger(__name__)

__all__ = ["bi_wkv", "available_backends", "register_backend"]

# name -> (function, supports(k) -> bool); registered from fastest to slowest for ``auto``.
_BACKENDS: dict[str, tuple[Callable[..., Tensor], Callable[[Tensor], bool]]] = {}


def register_backend(
    name: str, fn: Callable[..., Tensor], supports: Callable[[Tensor], bool], fastest: bool = False
) -> None:
    """Add a backend; ``fastest`` puts it first in the ``auto`` order."""
    global _BACKENDS
    if fastest:
        _BACKENDS = {name: (fn, supports), **{n: b for n, b in _BACKENDS.items() if n != name}}
    else:
        _BACKENDS[name] = (fn, supports)


register_backend("reference", bi_wkv_reference, lambda k: True)
register_backend("chunked", bi_wkv_chunked, lambda k: True, fastest=True)
register_backend("cpu", bi_wkv_cpu, lambda k: k.device.type == "cpu", fastest=True)


def _bi_wkv_cuda(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> Tensor:
    # Imported on first use, so that ``python -m rwkvlab.ops._cuda`` does not import it twice.
    from rwkvlab.ops._cuda import bi_wkv_cuda

    return bi_wkv_cuda(k, v, w, u)


register_backend("cuda", _bi_wkv_cuda, lambda k: k.is_cuda, fastest=True)


def available_backends(k: Tensor) -> list[str]:
    """Names of the backends usable for a tensor like ``k``, fastest first."""
    return [name for name, (_, supports) in _BACKENDS.items() if supports(k)]


def _check(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> None:
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"bi_wkv: k and v must both be (N, T, C); got k {tuple(k.shape)}, v {tuple(v.shape)}")
    c = k.shape[-1]
    if w.shape != (c,) or u.shape != (c,):
        raise ValueError(f"bi_wkv: w and u must be ({c},); got w {tuple(w.shape)}, u {tuple(u.shape)}")
    if len({k.device, v.device, w.device, u.device}) != 1:
        raise ValueError("bi_wkv: k, v, w and u must be on one device")


def bi_wkv(k: Tensor, v: Tensor, w: Tensor, u: Tensor, backend: str = "auto") -> Tensor:
    """Bidirectional WKV attention of Vision-RWKV, exactly as docs §2.

    ``y_t = softmax_i(L_ti) . v_i`` with ``L_ti = k_i - (|t-i| - 1) w`` for ``i != t`` and
    ``L_tt = u + k_t``.

    Args:
        k: keys, (N, T, C).
        v: values, (N, T, C).
        w: decay per channel, (C,), already divided by T; may be negative.
        u: bonus of the token itself per channel, (C,), already divided by T.
        backend: ``"auto"``, or a name from :func:`available_backends`.

    Shape:
        (N, T, C) -> (N, T, C), dtype of ``k``.
    """
    _check(k, v, w, u)
    if backend == "auto":
        backend = os.environ.get("RWKVLAB_WKV_BACKEND", "auto")
    if backend == "auto":
        # a traced or exported graph must hold plain PyTorch operators that other runtimes (ONNX, TorchScript) run
        exporting = torch.jit.is_tracing() or torch.compiler.is_exporting()
        backend = "reference" if exporting else available_backends(k)[0]
    if backend not in _BACKENDS:
        raise ValueError(f"bi_wkv: unknown backend {backend!r}; registered: {sorted(_BACKENDS)}")
    fn, supports = _BACKENDS[backend]
    if not supports(k):
        raise ValueError(f"bi_wkv: backend {backend!r} does not support {k.dtype} tensors on {k.device}")
    if k.numel() == 0:  # the fast paths assume N, T, C >= 1
        fn = bi_wkv_reference
    return fn(k, v, w, u)
