"""RWKV-UNet as an nnU-Net v2 network: the plans' architecture entry and the constructor it names (docs §24).

nnU-Net builds a network from ``configurations.<c>.architecture = {network_class_name, arch_kwargs,
_kw_requires_import}`` by locating ``network_class_name`` and calling it with ``input_channels``, ``num_classes`` and
``arch_kwargs``. :func:`architecture` writes that entry for a registered RWKV-UNet from nnU-Net's own configuration
(its pooling strides and patch size); :func:`rwkv_unet` is what the entry names. Neither imports nnU-Net.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from rwkvlab.models import create_model, list_models, model_card

__all__ = ["NETWORK", "STAGES", "rwkv_unet", "stage_strides", "architecture", "check_patch_size", "model_for"]

NETWORK = f"{__name__}.rwkv_unet"
# RWKV-UNet downsamples in four encoder stages (docs §1); nnU-Net's U-Net has one stage per pooling op plus the first.
STAGES = 4


def rwkv_unet(input_channels: int, num_classes: int, model: str, deep_supervision: bool = False,
              **kwargs: Any) -> nn.Module:
    """The registered RWKV-UNet ``model`` with ``kwargs`` (its strides, ablation switches), as nnU-Net calls it.

    Raises:
        ValueError: for ``deep_supervision=True``: RWKV-UNet has one output head (as the paper trains it), so it
            trains with the rwkvlab trainers, which turn nnU-Net's deep supervision off.
    """
    if deep_supervision:
        raise ValueError(f"{model}: RWKV-UNet has one output head and no deep-supervision outputs; train it with "
                         f"-tr nnUNetTrainerRWKVUNet (or ...T/S/B), which turn nnU-Net's deep supervision off")
    return create_model(model, in_chans=input_channels, num_classes=num_classes, **kwargs)


def model_for(size: str, spatial_dims: int) -> str:
    """The registered RWKV-UNet of ``size`` (t, s, b) for nnU-Net's 2D or 3D configurations."""
    return f"rwkv_unet{'3d' if spatial_dims == 3 else ''}_{size}"


def stage_strides(nnunet_strides: Sequence[Sequence[int]], spatial_dims: int) -> list[int | list[int]]:
    """RWKV-UNet's four stage strides from nnU-Net's per-stage strides (its ``arch_kwargs.strides``).

    nnU-Net's first stage keeps the resolution and each later one pools; RWKV-UNet's stem keeps it too and its four
    stages pool. Stage i takes nnU-Net's pooling i, the shallowest four where nnU-Net pools more often (so the
    full-resolution stages match and the deepest poolings merge into stage 4's resolution), stride 1 where it pools
    less. A stride equal along every axis is written as one int, as the model's ``strides`` takes it.
    """
    pools = [tuple(int(s) for s in stride) for stride in nnunet_strides[1:]]
    if any(len(p) != spatial_dims for p in pools):
        raise ValueError(f"nnU-Net strides {list(map(list, nnunet_strides))} do not have {spatial_dims} axes each")
    pools = (pools + [(1,) * spatial_dims] * STAGES)[:STAGES]
    return [p[0] if len(set(p)) == 1 else list(p) for p in pools]


def check_patch_size(net: nn.Module, patch_size: Sequence[int], where: str) -> None:
    """Refuse a network whose size divisor does not divide nnU-Net's patch size, naming both and ``where``."""
    divisor = net.size_divisor
    divisors = (divisor,) * len(patch_size) if isinstance(divisor, int) else tuple(divisor)
    if len(divisors) != len(patch_size) or any(int(n) % d for n, d in zip(patch_size, divisors)):
        raise ValueError(f"{where}: the patch size {list(map(int, patch_size))} of nnU-Net's plans is not a multiple "
                         f"of the network's size divisor {divisor} (per axis); give the model strides whose product "
                         f"divides the patch size, or plan another patch size")


def architecture(configuration: dict, model: str, where: str, **kwargs: Any) -> dict:
    """The plans' ``architecture`` entry that builds RWKV-UNet ``model`` for one of nnU-Net's configurations.

    Args:
        configuration: a ``configurations.<c>`` entry of nnU-Net's plans (its ``patch_size`` and its architecture's
            ``strides``, read as nnU-Net planned them).
        model: a registered RWKV-UNet (``rwkv_unet_t`` ... for ``2d``, ``rwkv_unet3d_t`` ... for ``3d_*``).
        where: names the plans and configuration in errors.
        kwargs: model keyword arguments; ``strides`` replaces the ones derived from the plans.

    Raises:
        ValueError: naming ``where``, for a model that is no RWKV-UNet, one of the wrong rank, 2D strides that differ
            along H and W, or a size divisor that does not divide the patch size.
    """
    if model not in list_models("rwkv_unet*"):
        raise ValueError(f"{where}: --model {model!r} is not a registered RWKV-UNet; one of "
                         f"{', '.join(list_models('rwkv_unet*'))}")
    patch_size = [int(n) for n in configuration["patch_size"]]
    rank = len(patch_size)
    if model_card(model).spatial_dims != rank:
        raise ValueError(f"{where}: {model} is {model_card(model).spatial_dims}D and this configuration plans "
                         f"{rank}D patches {patch_size}; use {model_for(model[-1], rank)}")
    strides = stage_strides(configuration["architecture"]["arch_kwargs"]["strides"], rank)
    arch_kwargs = {"model": model, "strides": strides, **kwargs}
    with torch.device("meta"):  # the size divisor only: no weights
        try:
            net = rwkv_unet(1, 2, **arch_kwargs)
        except ValueError as e:
            raise ValueError(f"{where}: {model} with {arch_kwargs}: {e}") from e
    check_patch_size(net, patch_size, f"{where} ({model}, strides {arch_kwargs['strides']})")
    return {"network_class_name": NETWORK, "arch_kwargs": arch_kwargs, "_kw_requires_import": []}
