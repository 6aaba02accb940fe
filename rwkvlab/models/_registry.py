"""Name -> constructor registry; the single way code outside ``models/`` builds a model."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["register_model", "create_model", "list_models", "model_from_checkpoint", "read_checkpoint", "load_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


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
