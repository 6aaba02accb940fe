"""Generic building blocks shared by the architectures.

:func:`token_mix`, :func:`relu_sq` and :func:`sigmoid_gate` are the elementwise chains of the RWKV mixers, and
:func:`batch_norm_act` a training-mode BatchNorm with its activation (what :class:`ConvBNAct` runs). On float32
CPU tensors they run ``kernels/fused_cpu.cpp`` (issue 10: a CPU training step is memory-bound, and autograd
spends 5 slices, 4 pads, a cat and 3-4 passes per lerp, and 5 passes on a BatchNorm and its activation's
backward, where one or two passes do); elsewhere (other devices and dtypes, ``meta`` tensors, as in
:mod:`rwkvlab.complexity`, ``torch.compile``, or a machine where the kernel cannot be built) they run the plain
PyTorch formulation, which is also their specification.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rwkvlab.ops._cpu import KERNELS_DIR, build_library
from rwkvlab.ops.dwconv import depthwise_conv2d

logger = logging.getLogger(__name__)

__all__ = ["ChannelLayerNorm", "ConvBNAct", "DepthwiseConv2d", "SqueezeExcite", "batch_norm_act", "batch_norm_nd",
           "check_tokens", "conv_nd", "q_shift", "relu_sq", "sigmoid_gate", "token_mix"]

# Axis names of a token grid by spatial rank, for shapes in messages.
_AXES = {2: ("H", "W"), 3: ("D", "H", "W")}


def _check_rank(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes); got {spatial_dims!r}")


def conv_nd(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv2d`` for images (``spatial_dims=2``), ``nn.Conv3d`` for volumes (3).

    Raises:
        ValueError: ``spatial_dims`` is not 2 or 3.
    """
    _check_rank(spatial_dims)
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def batch_norm_nd(spatial_dims: int) -> type[nn.BatchNorm2d] | type[nn.BatchNorm3d]:
    """``nn.BatchNorm2d`` for images (``spatial_dims=2``), ``nn.BatchNorm3d`` for volumes (3).

    Raises:
        ValueError: ``spatial_dims`` is not 2 or 3.
    """
    _check_rank(spatial_dims)
    return nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a map of any spatial rank (timm's ``LayerNorm2d`` for images and volumes).

    Args:
        chs: channels C.
        eps: LayerNorm epsilon.

    Shape:
        x: (N, C, *spatial) -> (N, C, *spatial).
    """

    def __init__(self, chs: int, eps: float = 1e-6) -> None:
        super().__init__(chs, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.movedim(-1, 1)


class SqueezeExcite(nn.Module):
    """Squeeze-excite with as many hidden channels as inputs (timm's ``SEModule`` with ``rd_channels=chs``, same
    keys), over images or volumes.

    Args:
        chs: channels C.
        act_layer: activation between the two 1x1 convolutions.
        spatial_dims: 2 for (N, C, H, W) maps, 3 for (N, C, D, H, W).

    Shape:
        x: (N, C, *spatial) -> (N, C, *spatial).
    """

    def __init__(self, chs: int, act_layer: type[nn.Module] = nn.SiLU, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.fc1 = conv(chs, chs, 1)
        self.act = act_layer()
        self.fc2 = conv(chs, chs, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.fc2(self.act(self.fc1(x.mean(tuple(range(2, x.dim())), keepdim=True))))
        return x * torch.sigmoid(s)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (groups = in = out channels, no bias) whose CPU backward computes the weight
    gradient with :func:`rwkvlab.ops.dwconv.depthwise_conv2d` (several times faster than PyTorch's); other
    devices run ``nn.Conv2d`` unchanged. Same parameters and state-dict keys as ``nn.Conv2d``.

    Args:
        chs: channels.
        kernel_size: square kernel size (odd; "same" padding).
        stride: convolution stride.
    """

    def __init__(self, chs: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(chs, chs, kernel_size, stride, kernel_size // 2, groups=chs, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, C, H / stride, W / stride) (rounded up)."""
        if x.device.type != "cpu" or torch.jit.is_tracing():  # a traced graph holds only PyTorch operators
            return super().forward(x)
        return depthwise_conv2d(x, self.weight, self.stride[0], self.padding[0])


class DepthwiseConv3d(nn.Conv3d):
    """A depthwise ``nn.Conv3d`` (groups = in = out channels, no bias) that runs in the channels-last layout on the
    CPU: there PyTorch sends a contiguous depthwise 3D convolution with a kernel above 3 to its unvectorised
    ``slow_conv3d`` (its backward took 6.4 s against 0.13 s channels-last for 5x5x5 on 64 x 8 x 24 x 24), while
    channels-last goes to oneDNN. Same parameters and state-dict keys as ``nn.Conv3d``; other devices unchanged.

    Args:
        chs: channels.
        kernel_size: cubic kernel size (odd; "same" padding).
        stride: convolution stride, one for all axes or one per axis.
    """

    def __init__(self, chs: int, kernel_size: int, stride: int | tuple[int, ...] = 1) -> None:
        super().__init__(chs, chs, kernel_size, stride, kernel_size // 2, groups=chs, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, D, H, W) -> (N, C, D / stride, H / stride, W / stride) (rounded up), contiguous."""
        if x.device.type != "cpu":
            return super().forward(x)
        layout = torch.channels_last_3d
        out = F.conv3d(x.contiguous(memory_format=layout), self.weight.contiguous(memory_format=layout), None,
                       self.stride, self.padding, groups=self.groups)
        return out.contiguous()


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> activation, "same" padding, over images (2D) or volumes (3D).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: kernel size along every axis (odd).
        stride: convolution stride, one for all axes or one per axis.
        groups: ``in_chs`` for a depthwise convolution.
        act_layer: activation class, or ``None`` for none.
        bn_eps: BatchNorm epsilon.
        spatial_dims: 2 (``nn.Conv2d``; a depthwise one is :class:`DepthwiseConv2d`) or 3 (``nn.Conv3d``; a depthwise
            one is :class:`DepthwiseConv3d`).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int | tuple[int, ...] = 1,
        groups: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU,
        bn_eps: float = 1e-6,
        spatial_dims: int = 2,
    ) -> None:
        depthwise = groups == in_chs == out_chs > 1
        if depthwise and spatial_dims == 3:
            conv = DepthwiseConv3d(in_chs, kernel_size, stride)
        elif depthwise and isinstance(stride, int):  # the CPU weight-gradient kernel takes one stride only
            conv = DepthwiseConv2d(in_chs, kernel_size, stride)
        else:
            conv = conv_nd(spatial_dims)(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups,
                                         bias=False)
        super().__init__(
            conv,
            batch_norm_nd(spatial_dims)(out_chs, eps=bn_eps),
            act_layer() if act_layer is not None else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, in_chs, *spatial) -> (N, out_chs, *spatial / stride); BN and activation by :func:`batch_norm_act`."""
        conv, bn, act = self
        return batch_norm_act(conv(x), bn, act)


def q_shift(x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """One-voxel token shift of Vision-RWKV from the face neighbours (docs §2, §18), zero fill.

    Channels are cut into ``2 * len(grid)`` groups of ``g = C // (2 * len(grid))``, two per axis, the last axis
    first: on an image (H, W) groups 0-3 take the pixel to their left, right, above and below (quarters); on a
    volume (D, H, W) groups 0-5 take the voxel at -W, +W, -H, +H, -D, +D (sixths). The remaining ``C mod
    (2 * len(grid))`` channels are unchanged.

    Shape:
        x: (N, T, C) with T = prod(grid) in row-major order -> (N, T, C).
    """
    n, t, c = x.shape
    rank = len(grid)
    g = c // (2 * rank)
    m = x.transpose(1, 2).reshape(n, c, *grid)
    parts = []
    for j, axis in enumerate(range(rank + 1, 1, -1)):
        size = m.shape[axis]
        # F.pad lists (before, after) pairs from the last axis on
        before = [0] * (2 * rank)
        after = [0] * (2 * rank)
        before[2 * j] = after[2 * j + 1] = 1
        lo, hi = m[:, 2 * j * g : (2 * j + 1) * g], m[:, (2 * j + 1) * g : (2 * j + 2) * g]
        parts.append(F.pad(lo.narrow(axis, 0, size - 1), before))  # from the previous voxel along the axis
        parts.append(F.pad(hi.narrow(axis, 1, size - 1), after))  # from the next one
    out = torch.cat([*parts, m[:, 2 * rank * g :]], dim=1)
    return out.flatten(2).transpose(1, 2)


def check_tokens(x: Tensor, grid: tuple[int, ...], who: str) -> None:
    """Raise ``ValueError`` unless ``x`` is (N, T, C) with T the number of cells of the 2D or 3D ``grid``."""
    if len(grid) not in _AXES or x.dim() != 3 or x.shape[1] != math.prod(grid):
        names = "*".join(_AXES.get(len(grid), ("?",) * len(grid)))
        raise ValueError(f"{who}: x must be (N, T, C) with T = {names} = {'*'.join(map(str, grid))}; "
                         f"got {tuple(x.shape)}")


@functools.cache
def _fused_library() -> Any:
    """``kernels/fused_cpu.cpp`` through ctypes, built on first call; ``None`` (logged once) if it cannot be built."""
    try:
        path = build_library("rwkvlab_fused_cpu", [KERNELS_DIR / "fused_cpu.cpp"],
                             extra_cflags=["-O3", "-fopenmp", "-fno-trapping-math"], extra_ldflags=["-fopenmp"])
    except Exception as err:  # noqa: BLE001 - any build failure means: the plain PyTorch formulation
        logger.warning("fused token-mixer CPU kernels unavailable (%s); using plain PyTorch", err)
        return None
    lib = ctypes.CDLL(path)
    ptr, ptrs, i64 = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64
    lib.token_mix_fwd_f32.argtypes = [ptr, ptr, ptrs] + [i64] * 5 + [ctypes.c_int]
    lib.token_mix_bwd_f32.argtypes = [ptr, ptr, ptrs, ptr, ptr] + [i64] * 5 + [ctypes.c_int]
    lib.relu_sq_fwd_f32.argtypes = [ptr, ptr, i64, ctypes.c_int]
    lib.relu_sq_bwd_f32.argtypes = [ptr, ptr, ptr, i64, ctypes.c_int]
    lib.sigmoid_gate_bwd_f32.argtypes = [ptr] * 5 + [i64, ctypes.c_int]
    lib.bn_act_fwd_f32.argtypes = [ptr] * 7 + [i64, i64, ctypes.c_double, ctypes.c_int, ctypes.c_int]
    lib.bn_act_bwd_f32.argtypes = [ptr] * 9 + [i64, i64, ctypes.c_int, ctypes.c_int]
    return lib


def _fused(*tensors: Tensor) -> Any:
    """The fused kernels if every tensor is a float32 CPU tensor outside ``torch.compile``, ``torch.export`` and
    ``torch.jit.trace`` (which would record the ctypes calls as Python calls no other runtime can run), else
    ``None``."""
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)):
        return None
    return _fused_library()


def _ptr(x: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(x.data_ptr())


def _ptr_array(xs: Sequence[Tensor]) -> Any:
    return (ctypes.c_void_p * len(xs))(*(x.data_ptr() for x in xs))


class _TokenMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, h: int, w: int, *mus: Tensor) -> tuple[Tensor, ...]:
        x, mu = x.contiguous(), torch.stack(mus).contiguous()
        outs = [torch.empty_like(x) for _ in mus]
        _fused_library().token_mix_fwd_f32(_ptr(x), _ptr(mu), _ptr_array(outs), x.shape[0], h, w, x.shape[2],
                                           len(mus), torch.get_num_threads())
        ctx.save_for_backward(x, mu)
        ctx.hw = h, w
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        x, mu = ctx.saved_tensors
        grads = [g.contiguous() for g in grads]
        gx, gmu = torch.empty_like(x), torch.empty_like(mu)
        _fused_library().token_mix_bwd_f32(_ptr(x), _ptr(mu), _ptr_array(grads), _ptr(gx), _ptr(gmu), x.shape[0],
                                           *ctx.hw, x.shape[2], mu.shape[0], torch.get_num_threads())
        return gx, None, None, *gmu.unbind(0)


def token_mix(x: Tensor, grid: tuple[int, ...], mus: Sequence[Tensor]) -> list[Tensor]:
    """``[torch.lerp(q_shift(x, grid), x, mu) for mu in mus]``: the token-shift mixes of the RWKV mixers (docs §2),
    fused on the CPU for images (module docstring); volumes take the plain path.

    Args:
        x: tokens (N, T, C), T = H * W (or D * H * W) row-major.
        grid: the grid (H, W) or (D, H, W).
        mus: mixing weights, each (C,); cast to ``x``'s dtype.

    Shape:
        (N, T, C) -> ``len(mus)`` tensors (N, T, C).
    """
    check_tokens(x, grid, "token_mix")
    mus = [mu.to(x.dtype) for mu in mus]
    if any(mu.shape != (x.shape[2],) for mu in mus):
        raise ValueError(f"token_mix: each mu must have shape ({x.shape[2]},); got {[tuple(m.shape) for m in mus]}")
    if len(grid) != 2 or _fused(x, *mus) is None:
        xx = q_shift(x, grid)
        return [torch.lerp(xx, x, mu) for mu in mus]
    return list(_TokenMix.apply(x, *grid, *mus))


class _ReluSq(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.contiguous()
        y = torch.empty_like(x)
        _fused_library().relu_sq_fwd_f32(_ptr(x), _ptr(y), x.numel(), torch.get_num_threads())
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        g, gx = g.contiguous(), torch.empty_like(x)
        _fused_library().relu_sq_bwd_f32(_ptr(x), _ptr(g), _ptr(gx), x.numel(), torch.get_num_threads())
        return gx


def relu_sq(x: Tensor) -> Tensor:
    """``torch.square(torch.relu(x))`` (the Channel Mix activation, docs §2), fused on the CPU."""
    if _fused(x) is None:
        return torch.square(torch.relu(x))
    return _ReluSq.apply(x)


class _SigmoidGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, r: Tensor, v: Tensor) -> Tensor:
        s, v = torch.sigmoid(r).contiguous(), v.contiguous()
        ctx.save_for_backward(s, v)
        return s * v

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        s, v = ctx.saved_tensors
        g = g.contiguous()
        gr, gv = torch.empty_like(s), torch.empty_like(s)
        _fused_library().sigmoid_gate_bwd_f32(_ptr(s), _ptr(v), _ptr(g), _ptr(gr), _ptr(gv), s.numel(),
                                              torch.get_num_threads())
        return gr, gv


def sigmoid_gate(r: Tensor, v: Tensor) -> Tensor:
    """``torch.sigmoid(r) * v`` (the receptance gate, docs §2), its backward fused on the CPU; ``r`` and ``v``
    of one shape there (broadcasting takes the plain path)."""
    if r.shape != v.shape or _fused(r, v) is None:
        return torch.sigmoid(r) * v
    return _SigmoidGate.apply(r, v)


# The activations bn_act_fwd_f32 applies after the BatchNorm, by the kernel's code.
_BN_ACTS = {nn.Identity: 0, nn.ReLU: 1, nn.SiLU: 2}


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float, act: int) -> tuple[Tensor, ...]:
        c = x.shape[1]
        weight, bias = weight.contiguous(), bias.contiguous()
        y = torch.empty_like(x)
        mean, invstd, var = x.new_empty(3, c)
        _fused_library().bn_act_fwd_f32(*map(_ptr, (x, weight, bias, y, mean, invstd, var)), x.numel() // c, c, eps,
                                        act, torch.get_num_threads())
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.act = act
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx: Any, gy: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, invstd = ctx.saved_tensors
        c = x.shape[1]
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        gw, gb = torch.empty_like(weight), torch.empty_like(bias)
        _fused_library().bn_act_bwd_f32(*map(_ptr, (x, gy, weight, bias, mean, invstd)),
                                        ctypes.c_void_p(None if gx is None else gx.data_ptr()), _ptr(gw), _ptr(gb),
                                        x.numel() // c, c, ctx.act, torch.get_num_threads())
        return gx, gw, gb, None, None


def batch_norm_act(x: Tensor, bn: nn.BatchNorm2d | nn.BatchNorm3d, act: nn.Module) -> Tensor:
    """``act(bn(x))``, fused on the CPU (module docstring) for a training-mode ``bn`` that tracks running
    statistics with a momentum, ``act`` an ``nn.Identity``, ``nn.ReLU`` or ``nn.SiLU`` and ``x`` a channels_last
    image; anything else (volumes too) calls the two modules. The fused path updates ``bn``'s running statistics and
    batch count as ``nn.BatchNorm2d`` does (running = (1 - momentum) running + momentum batch, unbiased variance).

    Shape:
        x: (N, C, *spatial) -> (N, C, *spatial).
    """
    kind = _BN_ACTS.get(type(act))
    fast = (kind is not None and bn.training and bn.track_running_stats and bn.momentum is not None and bn.affine
            and x.dim() == 4 and x.numel() > x.shape[1] and x.is_contiguous(memory_format=torch.channels_last)
            and _fused(x, bn.weight, bn.bias) is not None)
    if not fast:
        return act(bn(x))
    y, mean, var = _BatchNormAct.apply(x, bn.weight, bn.bias, bn.eps, kind)
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        bn.running_mean.lerp_(mean, bn.momentum)
        bn.running_var.lerp_(var, bn.momentum)
    return y
