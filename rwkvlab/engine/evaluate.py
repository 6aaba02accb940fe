"""Per-case evaluation of a split with the paper's protocol (docs §7); inference is :mod:`rwkvlab.engine.inference`."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from rwkvlab.data.cache import Prepared
from rwkvlab.engine.cpu_memory import keep_freed_memory
from rwkvlab.engine.inference import (SlidingWindow, check_image_size, predict, predict_volume, predict_volume_3d,
                                      spatial_dims)
from rwkvlab.io import atomic_write
from rwkvlab.metrics import case_metrics
from rwkvlab.progress import Progress

__all__ = ["evaluate_split", "evaluate_cases", "summarize", "write_evaluation", "read_evaluation"]


@keep_freed_memory()
def evaluate_split(model: torch.nn.Module, data: Prepared, split: str, batch_size: int, device: torch.device,
                   window: SlidingWindow | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Score every case of ``split``: its 2D items per image and its volumes per volume (docs §7).

    A 2D model labels volumes slice by slice with the paper's protocol; a volumetric model (docs §20) labels
    them whole with sliding ``window`` s and never sees the 2D items. Volumes with a voxel size
    (``data.spacings``) get HD95 in mm beside HD95 in voxels.

    Returns:
        (one row per case and foreground class, :func:`evaluate_cases`'s columns; predictions by case id).
    """
    volumetric = spatial_dims(model) == 3
    if volumetric:
        if window is None:
            raise ValueError(f"{type(model).__name__} is volumetric: evaluating it needs the sliding window "
                             f"(the recipe's patch_size and sw_* fields)")
        check_image_size(model, window.roi_size, "recipe patch_size")
    else:
        check_image_size(model, data.item_size, f"prepare.image_size.{data.dataset}")
    preds: dict[str, np.ndarray] = {}
    frames = []
    idx = data.splits.get(split, np.zeros(0, np.int64))
    idx = idx[data.labelled[idx]]
    if len(idx) and not volumetric:
        pred = predict(model, data.images[idx], batch_size, device)
        frames.append(evaluate_cases(pred, data.masks[idx], data.ids[idx], data.class_names))
        preds.update(zip(data.ids[idx].tolist(), pred))
    vol_ids = data.volume_splits.get(split, [])
    if vol_ids:
        vol_pred = [predict_volume_3d(model, data.volumes[v][0], window, device) if volumetric
                    else predict_volume(model, data.volumes[v][0], data.item_size, device) for v in vol_ids]
        frames.append(evaluate_cases(vol_pred, [data.volumes[v][1] for v in vol_ids], vol_ids, data.class_names,
                                     [data.spacings.get(v) for v in vol_ids]))
        preds.update(zip(vol_ids, vol_pred))
    if not frames:
        raise ValueError(f"{data.dataset}: split {split!r} has no labelled cases to evaluate"
                         + (" (a volumetric model is scored on volumes only)" if volumetric else ""))
    return pd.concat(frames, ignore_index=True), preds


def _case_scores(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None, num_classes: int) -> np.ndarray:
    """(num_classes - 1, 3): DSC, HD95 in voxels and HD95 in mm (NaN without ``spacing``) of one case.

    Two passes with a spacing: the mm HD95 is no multiple of the voxel one (anisotropic voxels change
    which surface voxel is nearest), and the voxel columns stay the paper's bits.
    """
    voxels = case_metrics(pred, gt, num_classes)
    mm = (np.full((num_classes - 1, 1), np.nan) if spacing is None
          else case_metrics(pred, gt, num_classes, spacing)[:, 1:])
    return np.hstack([voxels, mm])


def evaluate_cases(pred: np.ndarray, gt: np.ndarray, ids: Sequence[str], class_names: Sequence[str],
                   spacings: Sequence[Sequence[float] | None] | None = None, workers: int | None = None
                   ) -> pd.DataFrame:
    """One row per (case, foreground class): DSC, HD95 in pixels/voxels (paper) and HD95 in mm.

    Args:
        pred: predicted label maps, (N, H, W) or a list of volumes.
        gt: ground-truth label maps of the same shapes.
        ids: case ids.
        class_names: class names, background first.
        spacings: per case, its pixel/voxel size in mm along its axes, or ``None`` for a case without
            one; ``None`` = no case has one.
        workers: processes scoring cases in parallel; ``None`` = ``min(cases, os.cpu_count())``,
            1 = in this process. The rows are the same, in the same order, either way.

    Returns:
        columns ``case``, ``class``, ``dsc``, ``hd95`` (pixels/voxels) and ``hd95_mm`` (NaN for a case
        without a spacing).
    """
    if not len(ids) == len(pred) == len(gt):
        raise ValueError(f"evaluate_cases: ids, predictions and ground truths must match in number, "
                         f"got {len(ids)}, {len(pred)}, {len(gt)}")
    spacings = [None] * len(ids) if spacings is None else list(spacings)
    if len(spacings) != len(ids):
        raise ValueError(f"evaluate_cases: spacings must hold one spacing (or None) per case, got {len(spacings)} "
                         f"for {len(ids)} cases")
    if workers is not None and workers < 1:
        raise ValueError(f"evaluate_cases: workers must be >= 1 (or None for one per CPU), got {workers}")
    workers = min(len(ids), workers or os.cpu_count() or 1)
    score = functools.partial(_case_scores, num_classes=len(class_names))
    progress = functools.partial(Progress, total=len(ids), desc="evaluate", unit="case")
    if workers <= 1:
        scores = list(progress(map(score, pred, gt, spacings)))
    else:
        # fork: the workers run only NumPy/SciPy, and spawn would re-import torch in each one.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            chunk = max(1, len(ids) // (8 * workers))  # few round trips for thousands of 2D images
            scores = list(progress(pool.map(score, pred, gt, spacings, chunksize=chunk)))
    rows = [{"case": str(cid), "class": name, "dsc": dsc, "hd95": hd, "hd95_mm": hd_mm}
            for cid, metrics in zip(ids, scores) for name, (dsc, hd, hd_mm) in zip(class_names[1:], metrics)]
    return pd.DataFrame(rows, columns=["case", "class", "dsc", "hd95", "hd95_mm"])


def summarize(per_case: pd.DataFrame) -> dict[str, float]:
    """Mean over cases, then over classes (docs §7): DSC in %, HD95 in pixels/voxels, and each class's means.

    Keys ``dsc``, ``hd95``, ``dsc_<class>`` and ``hd95_<class>`` (Tables 3-4); ``hd95_mm`` and
    ``hd95_mm_<class>`` only when every case has HD95 in mm (a column ``hd95_mm`` without NaN).
    """
    per_class = per_case.groupby("class", sort=False)[["dsc", "hd95"]].mean()
    summary = {"dsc": float(per_class["dsc"].mean() * 100), "hd95": float(per_class["hd95"].mean()),
               **{f"dsc_{c}": float(v * 100) for c, v in per_class["dsc"].items()},
               **{f"hd95_{c}": float(v) for c, v in per_class["hd95"].items()}}
    if "hd95_mm" in per_case and len(per_case) and per_case["hd95_mm"].notna().all():
        mm = per_case.groupby("class", sort=False)["hd95_mm"].mean()
        summary["hd95_mm"] = float(mm.mean())
        summary.update({f"hd95_mm_{c}": float(v) for c, v in mm.items()})
    return summary


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
