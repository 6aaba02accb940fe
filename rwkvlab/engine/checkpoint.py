"""Checkpoints: written atomically, loaded strictly, resumed only under the same config."""

from __future__ import annotations

import logging
import math
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "load_checkpoint", "git_revision", "load_pretrained_encoder", "HEAD_PREFIXES"]

# Keys of the classification head (docs §1: LN2d -> pool -> Linear), which a segmentation model has not.
HEAD_PREFIXES = ("head.", "head_norm.")


def git_revision() -> str:
    """The commit of the running code, or ``"unknown"`` outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves a torn checkpoint."""
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Load a checkpoint; ``None`` if absent or (when ``config`` is given) made under another config."""
    path = Path(path)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if config is not None and state.get("config") != config:
        logger.warning("%s was written with another configuration; not resuming from it", path)
        return None
    return state


def load_pretrained_encoder(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Load ``encoder.pt`` (written by :func:`rwkvlab.engine.pretrain.pretrain`, or an encoder converted by :mod:`rwkvlab.convert`) into
    ``model.encoder`` (or ``model`` itself); from the checkpoint of a whole segmentation network, its encoder.

    The classification head is dropped by an explicit key filter (:data:`HEAD_PREFIXES`); every other
    key must match the target by name and shape, then the weights load with ``strict=True``.

    Returns:
        ``{"loaded": keys, "dropped": head keys, "missing": []}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the keys whose shapes differ (with both shapes), or that one side lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder {path} not found (run the pretrain stage)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    target = model.encoder if hasattr(model, "encoder") else model
    source = state["model"]
    prefix = "encoder." if any(k.startswith("encoder.") for k in source) else ""  # a whole segmentation network
    weights = {k.removeprefix(prefix): v for k, v in source.items()
               if k.startswith(prefix) and not k.removeprefix(prefix).startswith(HEAD_PREFIXES)}
    dropped = sorted(k for k in source if not k.startswith(prefix) or k.removeprefix(prefix) not in weights)
    own = target.state_dict()
    shapes = [f"{k}: {tuple(v.shape)} in {path.name} vs {tuple(own[k].shape)} in the model"
              for k, v in weights.items() if k in own and v.shape != own[k].shape]
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if shapes or missing or unexpected:
        raise ValueError(f"{path} ({state.get('model_name')}, {state.get('model_kwargs')}) does not fit "
                         f"{type(target).__name__}: {_some(shapes)} with another shape; missing in {path.name}: "
                         f"{_some(missing)}; not in the model: {_some(unexpected)}")
    target.load_state_dict(weights, strict=True)
    logger.info("loaded %s (%s weights of epoch %s, val top-1 %.2f): %d keys loaded, %d keys dropped (%s), "
                "0 missing", path, state.get("source"), state.get("epoch"), state.get("val_top1", math.nan),
                len(weights), len(dropped), _some(dropped))
    return {"loaded": sorted(weights), "dropped": dropped, "missing": missing}


def _some(items: list[str], n: int = 8) -> str:
    """The first ``n`` items and how many there are, for an error message that stays readable."""
    return f"{len(items)} key(s)" + (f" [{'; '.join(items[:n])}{'; ...' if len(items) > n else ''}]" if items else "")
