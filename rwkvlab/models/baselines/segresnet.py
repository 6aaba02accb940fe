"""SegResNet baselines (Myronenko, 2018: "3D MRI brain tumor segmentation using autoencoder regularization"), MONAI's
``SegResNet`` without its variational branch, in 2D and 3D.

No table of the RWKV-UNet paper has it. It is the residual, GroupNorm encoder-decoder that MONAI's tutorials and
the BraTS winners of 2018 start from, so it is a yardstick of a kind the paper's U-Net family lacks: pre-activation
residual blocks, one transposed path of additive skips, and linear upsampling.

* ``segresnet``: 2D, MONAI's defaults (8 initial filters, blocks (1, 2, 2, 4) down, (1, 1, 1) up, GroupNorm of 8
  groups, ReLU), 0.40M parameters at 3 channels in and 2 classes.
* ``segresnet3d``: the same in 3D, 1.18M parameters at 1 channel in and 2 classes.
"""

from __future__ import annotations

from typing import Literal, Sequence

from torch import Tensor, nn

from rwkvlab.models._registry import ModelCard, register_model
from rwkvlab.models.baselines._base import check_channels, check_input

__all__ = ["SegResNet"]


class SegResNet(nn.Module):
    """MONAI's ``SegResNet`` behind the rwkvlab model contract.

    Args:
        in_chans: input channels.
        num_classes: output classes, background included.
        init_filters: channels of the first stage, doubled at each of the three downsamplings.
        blocks_down: residual blocks per encoder stage (four stages).
        spatial_dims: 2 for images, 3 for volumes.

    Shape:
        2D: x: (N, in_chans, H, W), H and W multiples of 8 (three stride-2 convolutions) -> (N, num_classes, H, W).
        3D: x: (N, in_chans, D, H, W), D, H and W multiples of 8 -> (N, num_classes, D, H, W).

    Attributes:
        size_divisor: 8 in 2D, (8, 8, 8) in 3D.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 2, init_filters: int = 8,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), spatial_dims: Literal[2, 3] = 2) -> None:
        super().__init__()
        from monai.networks.nets import SegResNet as MonaiSegResNet

        check_channels(in_chans, num_classes)
        if init_filters < 8 or init_filters % 8:
            raise ValueError(f"init_filters must be a positive multiple of 8 (GroupNorm of 8 groups), got {init_filters}")
        if len(blocks_down) != 4 or min(blocks_down) < 1:
            raise ValueError(f"blocks_down must be 4 positive block counts, got {tuple(blocks_down)}")
        self.in_chans, self.num_classes, self.spatial_dims = in_chans, num_classes, spatial_dims
        self.size_divisor: int | tuple[int, ...] = 8 if spatial_dims == 2 else (8,) * spatial_dims
        self.net = MonaiSegResNet(spatial_dims=spatial_dims, init_filters=init_filters, in_channels=in_chans,
                                  out_channels=num_classes, blocks_down=tuple(blocks_down))

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans, self.size_divisor, type(self).__name__)
        return self.net(x)


@register_model(ModelCard("SegResNet", "MONAI SegResNet 2D (8 filters, blocks 1-2-2-4)", size_divisor=8))
def segresnet(in_chans: int = 3, num_classes: int = 2, init_filters: int = 8,
              blocks_down: Sequence[int] = (1, 2, 2, 4)) -> SegResNet:
    """SegResNet (Myronenko, 2018) in 2D: MONAI ``SegResNet``, 0.40M parameters (3 in, 2 classes)."""
    return SegResNet(in_chans, num_classes, init_filters, blocks_down)


@register_model(ModelCard("SegResNet-3D", "MONAI SegResNet 3D (8 filters, blocks 1-2-2-4)", spatial_dims=3,
                          size_divisor=(8, 8, 8)))
def segresnet3d(in_chans: int = 1, num_classes: int = 2, init_filters: int = 8,
                blocks_down: Sequence[int] = (1, 2, 2, 4)) -> SegResNet:
    """SegResNet (Myronenko, 2018) in 3D: MONAI ``SegResNet``, 1.18M parameters (1 in, 2 classes).

    Shape: x: (N, in_chans, D, H, W), D, H and W multiples of 8 -> (N, num_classes, D, H, W).
    """
    return SegResNet(in_chans, num_classes, init_filters, blocks_down, spatial_dims=3)
