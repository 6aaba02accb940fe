"""Baselines of the paper's comparison tables (docs §14), registered beside RWKV-UNet.

Each is built from a well-kept library where one exists (MONAI networks, timm backbones), loads no weights, takes
``in_chans`` and ``num_classes`` like ``rwkv_unet_t`` and declares its input-size rule as ``size_divisor``, which
``forward`` checks together with the channel count. 2D models have ``spatial_dims = 2`` and an ``int`` divisor for H
and W; 3D models have ``spatial_dims = 3`` and one divisor per axis (D, H, W), and default to ``in_chans=1``.

What each one is (its build, label, rows of the paper and counts) is on its card beside its constructor:
``rwkvlab.models.model_cards()``. A new baseline is one module here and its name in the import line below.
"""

# the import order is the order of the report's rows
from rwkvlab.models.baselines import unet, r50_unet, transunet, swin_unet, segresnet  # noqa: F401  (register the baselines)
from rwkvlab.models.baselines._base import check_input

__all__ = ["check_input"]
