"""Baselines of the paper's comparison tables (docs §14), registered beside RWKV-UNet.

Each is built from a well-kept library where one exists (MONAI networks, timm backbones), loads no weights, takes
``in_chans`` and ``num_classes`` like ``rwkv_unet_t`` and declares its input-size rule as ``size_divisor``, which
``forward`` checks together with the channel count. 2D models have ``spatial_dims = 2`` and an ``int`` divisor for H
and W; 3D models have ``spatial_dims = 3`` and one divisor per axis (D, H, W), and default to ``in_chans=1``.

================  ===========================================================  ============
name              build                                                        size_divisor
================  ===========================================================  ============
``unet``          MONAI ``BasicUNet`` (32..512), BatchNorm + ReLU              16
``att_unet``      Attention U-Net (Oktay et al.) at half widths, MONAI blocks  16
``unet_pp``       MONAI ``BasicUNetPlusPlus`` (32..512), BatchNorm + ReLU      16
``r50_unet``      timm ``resnet50`` features + U-Net decoder (256..32)         32
``transunet``     timm R50-ViT-B/16 hybrid + CUP decoder (Chen et al.)         16
``swin_unet``     MONAI ``SwinUNETR`` 2D, feature size 48                      32
``unet3d``        MONAI ``BasicUNet`` 3D (32..512), BatchNorm + ReLU           (16, 16, 16)
``swin_unetr3d``  MONAI ``SwinUNETR`` 3D, feature size 48                      (32, 32, 32)
================  ===========================================================  ============
"""

from rwkvlab.models.baselines import r50_unet, swin_unet, transunet, unet  # noqa: F401  (register the baselines)
from rwkvlab.models.baselines._base import check_input

__all__ = ["check_input"]
