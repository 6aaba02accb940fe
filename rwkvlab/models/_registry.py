"""Name -> constructor registry with one card per model; the single way code outside ``models/`` builds a model.

A model is declared once: ``@register_model(ModelCard(...))`` beside its constructor, as timm keeps a
``pretrained_cfg`` next to ``@register_model``. The card holds what reports, complexity counts, pretraining and tests
need to know without building it (its label, the paper's rows and counts, its input rule, its pretraining encoder).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

__all__ = ["ModelCard", "PaperCount", "register_model", "create_model", "list_models", "model_card", "model_cards",
           "model_from_checkpoint", "read_checkpoint", "load_model"]


@dataclass(frozen=True)
class PaperCount:
    """A setting the paper counts the model at: one ``size`` x ``size`` image with ``num_classes`` classes (0: an
    encoder without its head), and the FLOPs (G) it prints there (``None``: the paper prints none)."""

    size: int
    num_classes: int
    flops_g: float | None


@dataclass(frozen=True)
class ModelCard:
    """What is known about a registered model without building it.

    Attributes:
        label: its short name in tables and figures ("U-Net", "RWKV-UNet-T").
        build: how it is built, in one line ("MONAI BasicUNet (32..512), deconv up").
        spatial_dims: 2 for images, 3 for volumes.
        size_divisor: the input-size rule of its default build (``int`` for H and W, one per axis in 3D); the built
            model declares the same as ``size_divisor``.
        task: ``segmentation``, or ``classification`` for an encoder with its pretraining head.
        paper_rows: comparison table (``rwkvlab.report.comparison.COMPARISON_TABLES`` key: binary, table3, ...) ->
            the method's row name in that published table; our rows of the model follow it.
        paper_counts: the settings the paper counts parameters and FLOPs at (docs §11); the first is the model's
            row of the complexity table, the others are labelled ``name@<size>x<classes>``.
        pretrain_encoder: the registered encoder whose pretraining weights a pretrained protocol starts it from.
        notes: why the build or its counts differ from the paper's (one or two sentences).
    """

    label: str
    build: str
    spatial_dims: Literal[2, 3] = 2
    size_divisor: int | tuple[int, ...] = 16
    task: Literal["segmentation", "classification"] = "segmentation"
    paper_rows: dict[str, str] = field(default_factory=dict)
    paper_counts: tuple[PaperCount, ...] = ()
    pretrain_encoder: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.label or not self.build:
            raise ValueError(f"a model card needs a label and a build line, got {self}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.task not in ("segmentation", "classification"):
            raise ValueError(f"task must be segmentation or classification, got {self.task!r}")
        rule = self.size_divisor
        if isinstance(rule, tuple) != (self.spatial_dims == 3) or (isinstance(rule, tuple) and len(rule) != 3):
            raise ValueError(f"size_divisor {rule!r}: an int for a 2D model, one per axis (D, H, W) for a 3D one")


_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CARDS: dict[str, ModelCard] = {}


def register_model(card: ModelCard) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register the decorated constructor under its function name, with its card.

    Example:
        >>> @register_model(ModelCard("My-UNet", "MONAI BasicUNet, 16..256", size_divisor=16))
        ... def my_unet(in_chans: int = 3, num_classes: int = 2) -> nn.Module: ...
    """
    if not isinstance(card, ModelCard):
        raise TypeError(f"register_model takes the model's ModelCard, got {type(card).__name__}: "
                        f"write @register_model(ModelCard(...)) above the constructor")

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _MODELS[fn.__name__], _CARDS[fn.__name__] = fn, card
        return fn

    return register


def model_card(name: str) -> ModelCard:
    """The card of registered model ``name``."""
    if name not in _CARDS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _CARDS[name]


def model_cards(task: str | None = None) -> dict[str, ModelCard]:
    """Every registered model's card in the order of registration, or those of one ``task``."""
    return {n: c for n, c in _CARDS.items() if task is None or c.task == task}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model("rwkv_unet_t", in_chans=3, num_classes=2)``."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


def model_from_checkpoint(state: dict[str, Any], path: Path | str = "checkpoint") -> nn.Module:
    """Rebuild the model an rwkvlab checkpoint holds (``model_name`` + ``model_kwargs``) and load its ``model``
    weights strictly."""
    missing = [k for k in ("model", "model_name", "model_kwargs") if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path}: not an rwkvlab checkpoint (no {', '.join(missing)}); a release .pth converts "
                         f"with python -m rwkvlab.convert")
    model = create_model(state["model_name"], **state["model_kwargs"])
    model.load_state_dict(state["model"], strict=True)
    return model


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The contents of a checkpoint file, unpickled with ``weights_only=True``: tensors and plain values, never code.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming ``path``, when it is no PyTorch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is no checkpoint
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from e


def load_model(path: Path | str, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an rwkvlab checkpoint (training, pretraining or :mod:`rwkvlab.convert`), ready in eval mode.

    Example:
        >>> net = rwkvlab.load_model("data/checkpoints/train/demo-rwkv_unet_t/seed0/best.pt")  # doctest: +SKIP
    """
    return model_from_checkpoint(read_checkpoint(path), path).to(device).eval()
