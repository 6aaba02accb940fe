"""Depthwise 2D convolution with a fast CPU weight gradient (issue 10: CPU training speed).

On the CPU, PyTorch's backward of a depthwise convolution spends most of its time on the weight gradient
(measured at (4, 64, 112, 112), 5x5, channels_last, 2 threads, interleaved: forward 34-41 ms, input gradient
33-41 ms, weight gradient 104-156 ms; this kernel 20-32 ms). :func:`depthwise_conv2d` keeps PyTorch's forward and input gradient
and computes the float32 CPU weight gradient with ``kernels/dwconv_cpu.cpp`` (one pass over the input and the
output gradient, all taps at once, channels innermost). Other devices and dtypes, or a machine where the kernel
cannot be built, take PyTorch's own weight gradient. The weight gradient is the custom op
``rwkvlab::dw_conv_weight_grad``, so ``torch.compile`` and ``meta`` tensors see one node with a fake
implementation.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from rwkvlab.ops._cpu import KERNELS_DIR, build_library

logger = logging.getLogger(__name__)

__all__ = ["depthwise_conv2d", "dw_conv_weight_grad"]


@functools.cache
def _library() -> Any:
    """The CPU kernel through ctypes, built on first call; ``None`` (logged once) if it cannot be built."""
    try:
        path = build_library("rwkvlab_dwconv_cpu", [KERNELS_DIR / "dwconv_cpu.cpp"],
                             extra_cflags=["-O3", "-fopenmp", "-fno-trapping-math"], extra_ldflags=["-fopenmp"])
    except Exception as err:  # noqa: BLE001 - any build failure means: PyTorch's own weight gradient
        logger.warning("depthwise conv: CPU weight-gradient kernel unavailable (%s); using PyTorch's", err)
        return None
    lib = ctypes.CDLL(path)
    lib.dw_weight_grad_f32.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 9 + [ctypes.c_int]
    return lib


def _torch_weight_grad(x: Tensor, gy: Tensor, weight_shape: list[int], stride: int, padding: int) -> Tensor:
    _, gw, _ = torch.ops.aten.convolution_backward(
        gy, x, x.new_empty(weight_shape), None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], x.shape[1],
        [False, True, False])
    return gw


@torch.library.custom_op("rwkvlab::dw_conv_weight_grad", mutates_args=())
def dw_conv_weight_grad(x: Tensor, gy: Tensor, weight_shape: list[int], stride: int, padding: int) -> Tensor:
    """Gradient of a depthwise conv's weight (C, 1, K, K) from its input ``x`` (N, C, H, W) and output gradient."""
    lib = _library() if x.device.type == "cpu" and x.dtype == gy.dtype == torch.float32 else None
    if lib is None:
        return _torch_weight_grad(x, gy, weight_shape, stride, padding)
    n, c, h, w = x.shape
    ho, wo = gy.shape[-2:]
    # (N, H, W, C) in memory: free when the tensors are channels_last already.
    x_, gy_ = (t.permute(0, 2, 3, 1).contiguous() for t in (x, gy))
    gw = x.new_empty(weight_shape)
    lib.dw_weight_grad_f32(ctypes.c_void_p(x_.data_ptr()), ctypes.c_void_p(gy_.data_ptr()),
                           ctypes.c_void_p(gw.data_ptr()), n, h, w, c, ho, wo, weight_shape[-1], stride, padding,
                           torch.get_num_threads())
    return gw


@dw_conv_weight_grad.register_fake
def _dw_conv_weight_grad_fake(x: Tensor, gy: Tensor, weight_shape: list[int], stride: int, padding: int) -> Tensor:
    return x.new_empty(weight_shape)


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx, _, _ = torch.ops.aten.convolution_backward(gy, x, weight, None, [s] * 2, [p] * 2, [1, 1], False,
                                                           [0, 0], x.shape[1], [True, False, False])
        if ctx.needs_input_grad[1]:
            gw = dw_conv_weight_grad(x, gy, list(weight.shape), s, p)
        return gx, gw, None, None


def depthwise_conv2d(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0) -> Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=padding, groups=C)`` without bias, with the fast CPU weight
    gradient of the module docstring.

    Args:
        x: input, (N, C, H, W); channels_last is fastest on the CPU.
        weight: (C, 1, K, K).
        stride: the same in both directions.
        padding: the same on every side.

    Shape:
        (N, C, H, W) -> (N, C, (H + 2 padding - K) // stride + 1, (W + 2 padding - K) // stride + 1).
    """
    if weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"depthwise_conv2d: weight must be (C, 1, K, K) with C = {x.shape[1]} input channels, "
                         f"got {tuple(weight.shape)}")
    if torch.is_autocast_enabled(x.device.type):
        # Autocast casts inside F.conv2d, so the saved float32 tensors would not match a bfloat16 output gradient;
        # the kernel is float32-only anyway.
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])
    return _DepthwiseConv2d.apply(x, weight, stride, padding)
