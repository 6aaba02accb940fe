"""Checkpoints: written atomically, loaded strictly, resumed only under the same config."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import torch

from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "load_checkpoint", "git_revision"]


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
