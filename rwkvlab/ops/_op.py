"""Bi-WKV as a ``torch.library`` custom op, shared by every fast backend (docs §2).

Two ops, ``rwkvlab::wkv_forward`` (k, v, w, u -> y, lz) and ``rwkvlab::wkv_backward`` (-> the four gradients),
run one of the :class:`Kernels` implementations, chosen by name: ``"cpu"`` (``kernels/wkv_cpu.cpp``, else the
chunked scan), ``"cuda"`` (``kernels/wkv_cuda.cu``, else the chunked scan with the kernel's 32 chunks) or
``"chunked"`` (the pure-PyTorch scan). Being registered ops with fake (shape-only) implementations, they

* stay single nodes under ``torch.compile`` (no graph break, the kernels are not traced) and on the ``meta``
  device (shape propagation for complexity counting);
* are differentiable through :func:`torch.library.register_autograd` (first order: the backward is itself an
  op, not differentiable again);
* are seen by :class:`torch.utils.flop_counter.FlopCounterMode`, which books :data:`WKV_MACS_PER_ELEMENT`
  multiply-adds per element of ``k`` forward and twice that backward, at 2 FLOPs per MAC.

Inputs of any float dtype and layout are made contiguous and cast to the accumulation dtype (float64 for
float64 inputs, float32 otherwise) unless the kernels read their dtype; ``y`` and ``lz`` come out in the
accumulation dtype, each gradient in the dtype of its input.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

logger = logging.getLogger(__name__)

__all__ = ["KERNEL_NAMES", "Kernels", "WKV_MACS_PER_ELEMENT", "accumulation_dtype", "bi_wkv_op", "kernels_for"]

KERNEL_NAMES = ("cpu", "cuda", "chunked")
# Two recurrences (one each way) and their combination; the same convention as rwkvlab.complexity's hook.
WKV_MACS_PER_ELEMENT = 6


class Kernels(Protocol):
    """A Bi-WKV implementation on contiguous tensors.

    ``k``, ``v`` and ``gy`` come in one of :attr:`dtypes` (else in the accumulation dtype); ``w`` and ``u`` in
    the accumulation dtype. ``y``, ``lz`` and the gradients are in the accumulation dtype.
    """

    dtypes: tuple[torch.dtype, ...]

    def forward(self, k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """(N, T, C) x2, (C,) x2 -> y, lz: (N, T, C)."""
        ...

    def backward(
        self, k: Tensor, v: Tensor, w: Tensor, u: Tensor, y: Tensor, lz: Tensor, gy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> gk, gv: (N, T, C); gw, gu: (C,)."""
        ...


def accumulation_dtype(k: Tensor) -> torch.dtype:
    """float64 for float64 inputs (gradcheck), float32 otherwise (bf16/fp16 are computed in fp32)."""
    return torch.float64 if k.dtype == torch.float64 else torch.float32


def kernels_for(name: str, chunks: int = 0) -> Kernels:
    """The implementation behind kernel name ``name`` (:data:`KERNEL_NAMES`); ``chunks`` only for ``chunked``
    (0: ~sqrt(T)). A kernel that cannot be built falls back to the chunked scan (logged once where built)."""
    # Imported here: _cpu and _cuda call the op, and the CUDA module is loaded only when CUDA tensors appear.
    from rwkvlab.ops._cpu import ChunkedScan, cpu_kernels

    if name == "chunked":
        return ChunkedScan(chunks or None)
    if name == "cpu":
        return cpu_kernels() or ChunkedScan()
    if name == "cuda":
        from rwkvlab.ops._cuda import CUDA_CHUNKS, cuda_kernels

        return cuda_kernels() or ChunkedScan(CUDA_CHUNKS)
    raise ValueError(f"bi_wkv: unknown kernels {name!r}; expected one of {KERNEL_NAMES}")


_announced: set[tuple[str, str]] = set()


def _announce(device_type: str, impl: Kernels) -> None:
    """Say once per (device type, implementation) which one runs; a fallback was warned about where it happened."""
    key = (device_type, type(impl).__name__)
    if key not in _announced:
        _announced.add(key)
        what = {"CpuKernels": "the C++ CPU kernel (kernels/wkv_cpu.cpp); no GPU is needed",
                "CudaKernels": "the CUDA kernel (kernels/wkv_cuda.cu)"}.get(key[1], "the pure-PyTorch chunked scan")
        logger.info("bi_wkv: %s tensors run %s", device_type.upper(), what)


def _prepared(k: Tensor, v: Tensor, w: Tensor, u: Tensor, impl: Kernels) -> tuple[Tensor, ...]:
    acc = accumulation_dtype(k)
    kv_dtype = k.dtype if k.dtype in impl.dtypes and v.dtype == k.dtype else acc
    return (*(x.to(kv_dtype).contiguous() for x in (k, v)), *(x.to(acc).contiguous() for x in (w, u)))


@torch.library.custom_op("rwkvlab::wkv_forward", mutates_args=())
def wkv_forward(k: Tensor, v: Tensor, w: Tensor, u: Tensor, kernels: str, chunks: int) -> tuple[Tensor, Tensor]:
    """Bi-WKV output ``y`` and log-denominator ``lz`` (accumulation dtype), both (N, T, C)."""
    impl = kernels_for(kernels, chunks)
    _announce(k.device.type, impl)
    y, lz = impl.forward(*_prepared(k, v, w, u, impl))
    return y.contiguous(), lz.contiguous()  # the chunked scan's are views into padded buffers


@wkv_forward.register_fake
def _wkv_forward_fake(k: Tensor, v: Tensor, w: Tensor, u: Tensor, kernels: str, chunks: int) -> tuple[Tensor, Tensor]:
    acc = accumulation_dtype(k)
    return k.new_empty(k.shape, dtype=acc), k.new_empty(k.shape, dtype=acc)


@torch.library.custom_op("rwkvlab::wkv_backward", mutates_args=())
def wkv_backward(
    k: Tensor, v: Tensor, w: Tensor, u: Tensor, y: Tensor, lz: Tensor, gy: Tensor, kernels: str, chunks: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of k, v, w, u (each in its input's dtype, contiguous) from those of ``y``."""
    impl = kernels_for(kernels, chunks)
    k_, v_, w_, u_ = _prepared(k, v, w, u, impl)
    grads = impl.backward(k_, v_, w_, u_, y, lz, gy.to(k_.dtype).contiguous())
    return tuple(g.to(x.dtype).contiguous() for g, x in zip(grads, (k, v, w, u)))  # type: ignore[return-value]


@wkv_backward.register_fake
def _wkv_backward_fake(
    k: Tensor, v: Tensor, w: Tensor, u: Tensor, y: Tensor, lz: Tensor, gy: Tensor, kernels: str, chunks: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(x.new_empty(x.shape) for x in (k, v, w, u))  # type: ignore[return-value]


def _setup_context(ctx: Any, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    k, v, w, u, kernels, chunks = inputs
    ctx.save_for_backward(k, v, w, u, *output)
    ctx.kernels, ctx.chunks = kernels, chunks


def _backward(ctx: Any, gy: Tensor, _glz: Tensor | None) -> tuple[Tensor | None, ...]:
    # lz is an auxiliary output for the backward pass; nothing downstream differentiates it.
    grads = wkv_backward(*ctx.saved_tensors, gy, ctx.kernels, ctx.chunks)
    return (*grads, None, None)


wkv_forward.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.rwkvlab.wkv_forward)
def _wkv_forward_flops(k_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * WKV_MACS_PER_ELEMENT * math.prod(k_shape)


@register_flop_formula(torch.ops.rwkvlab.wkv_backward)
def _wkv_backward_flops(k_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * 2 * WKV_MACS_PER_ELEMENT * math.prod(k_shape)


def bi_wkv_op(k: Tensor, v: Tensor, w: Tensor, u: Tensor, kernels: str, chunks: int = 0) -> Tensor:
    """Bi-WKV (docs §2) through the custom op with the named kernels.

    Args:
        k: keys, (N, T, C).
        v: values, (N, T, C).
        w: decay per channel, (C,), already divided by T.
        u: bonus of the token itself per channel, (C,), already divided by T.
        kernels: one of :data:`KERNEL_NAMES`.
        chunks: pieces of the chunked scan (``kernels="chunked"`` only; 0 picks ~sqrt(T)).

    Shape:
        (N, T, C) -> (N, T, C), dtype of ``k``.
    """
    if kernels not in KERNEL_NAMES:
        raise ValueError(f"bi_wkv: unknown kernels {kernels!r}; expected one of {KERNEL_NAMES}")
    y, _ = torch.ops.rwkvlab.wkv_forward(k, v, w, u, kernels, chunks)
    return y.to(k.dtype)
