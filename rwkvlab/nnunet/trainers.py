"""nnU-Net v2 trainers for RWKV-UNet, found by nnU-Net through ``nnUNet_extTrainer`` (docs §24).

- ``nnUNetTrainerRWKVUNetT`` / ``S`` / ``B``: RWKV-UNet of that size built from any plans' strides and patch size
  (nnU-Net's own ``nnUNetPlans`` included), so it trains under exactly the plans, preprocessing, augmentation, loss,
  optimizer and schedule of nnU-Net's U-Net.
- ``nnUNetTrainerRWKVUNet``: the network the plans' architecture names, as ``python -m rwkvlab.nnunet plans`` writes
  it (``-p nnUNetPlans_rwkv_unet3d_t``), e.g. with ablation switches in its ``arch_kwargs``.
- ``<trainer>_<E>epochs_<I>iters``: the short-budget variant of any of these or of nnU-Net's ``nnUNetTrainer``, as
  nnU-Net's own ``nnUNetTrainer_5epochs``, with its epochs and iterations per epoch in the name. nnU-Net finds a
  trainer by class name (training, ``--c`` and ``nnUNetv2_predict`` alike), so the budget travels with the name: the
  module's ``__getattr__`` makes the class on first use.

Deep supervision is off in every RWKV-UNet trainer: the network has one output head, as the paper trains it.
"""

from __future__ import annotations

import functools
import re

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from rwkvlab.engine.loop import precise_bn
from rwkvlab.nnunet.network import NETWORK, architecture, check_patch_size, model_for

__all__ = ["nnUNetTrainerRWKVUNet", "nnUNetTrainerRWKVUNetT", "nnUNetTrainerRWKVUNetS", "nnUNetTrainerRWKVUNetB",
           "short_budget", "trainer"]


class nnUNetTrainerRWKVUNet(nnUNetTrainer):
    """nnU-Net's trainer with the RWKV-UNet of the plans (``size`` ``None``) or of ``size`` and deep supervision off."""

    size: str | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net records these exact parameters (inspect.signature) to rebuild the trainer for --c and inference
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        config = configuration_manager.configuration
        where = f"plans {plans_manager.plans_name!r}, configuration {configuration_manager.data_identifier!r}"
        if cls.size is not None:
            arch = architecture(config, model_for(cls.size, len(config["patch_size"])), where)
        else:
            arch = config["architecture"]
            if arch["network_class_name"] != NETWORK:
                raise ValueError(f"{where} name the network {arch['network_class_name']!r}, not RWKV-UNet: write "
                                 f"RWKV-UNet plans with python -m rwkvlab.nnunet plans <dataset> --model <name> and "
                                 f"train with -p <those plans>, or use -tr nnUNetTrainerRWKVUNetT (S, B)")
        net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     num_input_channels, num_output_channels, allow_init=True, deep_supervision=False)
        check_patch_size(net, config["patch_size"], where)
        return net

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """RWKV-UNet has no deep-supervision outputs to switch (nnU-Net's default sets ``decoder.deep_supervision``)."""

    def on_train_end(self) -> None:
        # nnU-Net's U-Net normalises per instance; RWKV-UNet's BatchNorm validates with running statistics that trail
        # the weights, by far after a short budget (all background after 10 steps): recompute them on training
        # batches (precise BN, as our recipes' precise_bn) before nnU-Net saves the final checkpoint and validates.
        net = self.network.module if self.is_ddp else self.network
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
            batches = min(self.num_iterations_per_epoch, 50)
            precise_bn((next(self.dataloader_train)["data"].to(self.device) for _ in range(batches)), net)
        super().on_train_end()


class nnUNetTrainerRWKVUNetT(nnUNetTrainerRWKVUNet):
    size = "t"


class nnUNetTrainerRWKVUNetS(nnUNetTrainerRWKVUNet):
    size = "s"


class nnUNetTrainerRWKVUNetB(nnUNetTrainerRWKVUNet):
    size = "b"


_BASES = {t.__name__: t for t in (nnUNetTrainer, nnUNetTrainerRWKVUNet, nnUNetTrainerRWKVUNetT, nnUNetTrainerRWKVUNetS,
                                  nnUNetTrainerRWKVUNetB)}
_SHORT = re.compile(r"(?P<base>\w+?)_(?P<epochs>\d+)epochs_(?P<iterations>\d+)iters")


@functools.cache
def short_budget(base: str, epochs: int, iterations: int) -> type[nnUNetTrainer]:
    """``<base>_<epochs>epochs_<iterations>iters``: ``base`` trained for ``epochs`` of ``iterations`` batches.

    Validation runs a fifth as many batches per epoch (nnU-Net's 250 : 50), at least one.
    """
    if base not in _BASES:
        raise ValueError(f"short budget: unknown trainer {base!r}; one of {', '.join(_BASES)}")
    if epochs < 1 or iterations < 1:
        raise ValueError(f"short budget: epochs and iterations must be >= 1, got {epochs} and {iterations}")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        _BASES[base].__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        self.num_iterations_per_epoch = iterations
        self.num_val_iterations_per_epoch = max(1, iterations // 5)

    name = f"{base}_{epochs}epochs_{iterations}iters"
    return type(name, (_BASES[base],), {"__init__": __init__, "__module__": __name__, "__qualname__": name})


def trainer(name: str) -> type[nnUNetTrainer]:
    """The trainer class ``name``: one above, or a short-budget name of one of them or of ``nnUNetTrainer``."""
    if name in _BASES:
        return _BASES[name]
    match = _SHORT.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown trainer {name!r}; one of {', '.join(_BASES)}, or <one of them>_<E>epochs_<I>iters")
    return short_budget(match["base"], int(match["epochs"]), int(match["iterations"]))


def __getattr__(name: str) -> type[nnUNetTrainer]:
    # nnU-Net looks a trainer up with hasattr(module, name): a short-budget name is made here, anything else is absent
    if _SHORT.fullmatch(name):
        try:
            return trainer(name)
        except ValueError as e:
            raise AttributeError(str(e)) from e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
