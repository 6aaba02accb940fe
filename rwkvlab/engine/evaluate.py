"""Inference and per-case evaluation (SPEC §7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rwkvlab.data.cache import Prepared, resize_image, resize_label
from rwkvlab.data.loader import to_tensor
from rwkvlab.engine.checkpoint import load_checkpoint
from rwkvlab.io import atomic_write
from rwkvlab.metrics import case_metrics
from rwkvlab.models import create_model

__all__ = ["predict", "predict_volume", "evaluate_split", "load_trained", "evaluate_cases", "summarize",
           "write_evaluation", "read_evaluation"]


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


def evaluate_split(model: torch.nn.Module, data: Prepared, split: str, batch_size: int,
                   device: torch.device) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Score every case of ``split``: its 2D items per image and its volumes per volume (SPEC §7).

    Returns:
        (one row per case and foreground class, predictions by case id).
    """
    preds: dict[str, np.ndarray] = {}
    frames = []
    idx = data.splits.get(split, np.zeros(0, np.int64))
    idx = idx[data.labelled[idx]]
    if len(idx):
        pred = predict(model, data.images[idx], batch_size, device)
        frames.append(evaluate_cases(pred, data.masks[idx], data.ids[idx], data.class_names))
        preds.update(zip(data.ids[idx].tolist(), pred))
    vol_ids = data.volume_splits.get(split, [])
    if vol_ids:
        size = data.images.shape[1:3]
        vol_pred = [predict_volume(model, data.volumes[v][0], size, batch_size, device) for v in vol_ids]
        frames.append(evaluate_cases(vol_pred, [data.volumes[v][1] for v in vol_ids], vol_ids, data.class_names))
        preds.update(zip(vol_ids, vol_pred))
    if not frames:
        raise ValueError(f"{data.dataset}: split {split!r} has no labelled cases to evaluate")
    return pd.concat(frames, ignore_index=True), preds


def load_trained(run_dir: Path, which: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from ``run_dir/{best,last}.pt`` (name + config) and load it strictly."""
    path = Path(run_dir) / f"{which}.pt"
    state = load_checkpoint(path)
    if state is None:
        raise FileNotFoundError(f"{path}: no checkpoint; run the train stage first")
    model = create_model(state["model_name"], in_chans=state["config"]["in_chans"],
                         num_classes=state["config"]["num_classes"])
    model.load_state_dict(state["model"], strict=True)
    return model.to(device).eval(), state


def evaluate_cases(pred: np.ndarray, gt: np.ndarray, ids: Sequence[str], class_names: Sequence[str],
                   spacing: Sequence[float] | None = None) -> pd.DataFrame:
    """One row per (case, foreground class): DSC and HD95 with the paper's protocol.

    Args:
        pred: predicted label maps, (N, H, W) or a list of volumes.
        gt: ground-truth label maps of the same shapes.
        ids: case ids.
        class_names: class names, background first.
        spacing: pixel/voxel size for HD95 in physical units; ``None`` = pixels (paper).
    """
    rows = []
    for cid, p, g in tqdm(list(zip(ids, pred, gt)), desc="evaluate", unit="case", leave=False):
        for name, (dsc, hd) in zip(class_names[1:], case_metrics(p, g, len(class_names), spacing)):
            rows.append({"case": str(cid), "class": name, "dsc": dsc, "hd95": hd})
    return pd.DataFrame(rows, columns=["case", "class", "dsc", "hd95"])


def summarize(per_case: pd.DataFrame) -> dict[str, float]:
    """Mean over cases, then over classes; DSC in %, HD95 in pixels (SPEC §7)."""
    per_class = per_case.groupby("class", sort=False)[["dsc", "hd95"]].mean()
    return {"dsc": float(per_class["dsc"].mean() * 100), "hd95": float(per_class["hd95"].mean()),
            **{f"dsc_{c}": float(v * 100) for c, v in per_class["dsc"].items()}}


def write_evaluation(out_dir: Path, per_case: pd.DataFrame, preds: dict[str, np.ndarray]) -> dict[str, float]:
    """Write ``per_case.csv``, ``predictions.npz`` (by case id) and ``metrics.json`` (the summary)."""
    out_dir = Path(out_dir)
    summary = summarize(per_case)
    atomic_write(out_dir / "per_case.csv", lambda f: per_case.to_csv(f, index=False))
    atomic_write(out_dir / "predictions.npz", lambda f: np.savez_compressed(f, **preds))
    atomic_write(out_dir / "metrics.json", lambda f: f.write_text(json.dumps(summary, indent=2) + "\n"))
    return summary


def read_evaluation(out_dir: Path) -> tuple[dict[str, float], pd.DataFrame, dict[str, np.ndarray]]:
    """What :func:`write_evaluation` wrote: (summary, per-case table, predictions by case id)."""
    out_dir = Path(out_dir)
    with np.load(out_dir / "predictions.npz") as f:
        preds = {k: f[k] for k in f.files}
    per_case = pd.read_csv(out_dir / "per_case.csv", dtype={"case": str})
    return json.loads((out_dir / "metrics.json").read_text()), per_case, preds
