"""Generic building blocks shared by the architectures."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rwkvlab.ops.dwconv import depthwise_conv2d

__all__ = ["ConvBNAct", "DepthwiseConv2d", "q_shift"]


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
        if x.device.type != "cpu":
            return super().forward(x)
        return depthwise_conv2d(x, self.weight, self.stride[0], self.padding[0])


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation, "same" padding.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: square kernel size (odd).
        stride: convolution stride.
        groups: ``in_chs`` for a depthwise convolution.
        act_layer: activation class, or ``None`` for none.
        bn_eps: BatchNorm epsilon.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act_layer: type[nn.Module] | None = nn.ReLU,
        bn_eps: float = 1e-6,
    ) -> None:
        depthwise = groups == in_chs == out_chs > 1
        super().__init__(
            DepthwiseConv2d(in_chs, kernel_size, stride) if depthwise else
            nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_chs, eps=bn_eps),
            act_layer() if act_layer is not None else nn.Identity(),
        )


def q_shift(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """One-pixel quad-directional token shift of Vision-RWKV (SPEC §2), zero fill.

    With ``g = C // 4``: channels [0, g) take the pixel to their left, [g, 2g) the pixel to their
    right, [2g, 3g) the pixel above, [3g, 4g) the pixel below; the rest are unchanged.

    Shape:
        x: (N, T, C) with T = H * W in row-major order -> (N, T, C).
    """
    n, t, c = x.shape
    h, w = hw
    g = c // 4
    m = x.transpose(1, 2).reshape(n, c, h, w)
    out = torch.cat(
        [
            F.pad(m[:, :g, :, :-1], (1, 0, 0, 0)),
            F.pad(m[:, g : 2 * g, :, 1:], (0, 1, 0, 0)),
            F.pad(m[:, 2 * g : 3 * g, :-1, :], (0, 0, 1, 0)),
            F.pad(m[:, 3 * g : 4 * g, 1:, :], (0, 0, 0, 1)),
            m[:, 4 * g :],
        ],
        dim=1,
    )
    return out.flatten(2).transpose(1, 2)
