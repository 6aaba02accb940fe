"""Inference, in one place for evaluation, prediction and the report: devices, trained models, label maps."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rwkvlab.data.cache import resize_image, resize_label
from rwkvlab.data.loader import to_tensor
from rwkvlab.engine.checkpoint import load_checkpoint
from rwkvlab.models import create_model

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "model_from_checkpoint", "load_trained", "predict", "predict_volume"]


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> the GPU when there is one, else the CPU; any other torch device string as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_from_checkpoint(state: dict[str, Any], path: Path | str = "checkpoint") -> torch.nn.Module:
    """Rebuild the model a checkpoint of :func:`rwkvlab.engine.train.fit` holds (name + kwargs) and load it strictly."""
    missing = [k for k in ("model", "model_name", "model_kwargs") if k not in state]
    if missing:
        raise ValueError(f"{path}: not an rwkvlab training checkpoint (no {', '.join(missing)})")
    model = create_model(state["model_name"], **state["model_kwargs"])
    model.load_state_dict(state["model"], strict=True)
    return model


def load_trained(run_dir: Path, which: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from ``run_dir/{best,last}.pt`` and load it strictly, in eval mode on ``device``."""
    path = Path(run_dir) / f"{which}.pt"
    state = load_checkpoint(path)
    if state is None:
        raise FileNotFoundError(f"{path}: no checkpoint; run the train stage first")
    return model_from_checkpoint(state, path).to(device).eval(), state


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Label maps of cached 2D images.

    Shape:
        images (N, H, W, C), uint8 or float in [0, 1], H and W multiples of 16 -> (N, H, W) uint8 labels.
    """
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model(to_tensor(images[i : i + batch_size]).to(device)).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.uint8)


def predict_volume(model: torch.nn.Module, volume: np.ndarray, size: tuple[int, int], batch_size: int,
                   device: torch.device) -> np.ndarray:
    """The volume protocol of SPEC §7 (TransUNet): every slice resized to the network size with an
    order-3 spline, argmax, and the prediction resized back with nearest neighbour.

    Shape:
        volume (D, H, W) float in [0, 1] -> (D, H, W) uint8 labels.
    """
    d, h, w = volume.shape
    slices = np.stack([resize_image(s, size) for s in volume])[..., None]
    pred = predict(model, slices, batch_size, device)
    return np.stack([resize_label(p, (h, w)) for p in pred]) if d else np.zeros((0, h, w), np.uint8)
