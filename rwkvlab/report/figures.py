"""Figures: prediction overlays, training curves, dataset montages."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # figures are files; notebooks display the returned Figure objects
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rwkvlab.data.cache import Prepared  # noqa: E402
from rwkvlab.io import atomic_write  # noqa: E402

__all__ = ["overlay_figure", "overlay_cases", "training_curves", "dataset_montage", "save_figure"]


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Save a figure as PNG without leaving a partial file."""
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))


def _contours(ax: plt.Axes, labels: np.ndarray, color: str, num_classes: int) -> None:
    for c in range(1, num_classes):
        if (labels == c).any():
            ax.contour(labels == c, levels=[0.5], colors=[color], linewidths=1.2)


def _outline_grid(images: np.ndarray, layers: Sequence[tuple[np.ndarray, str]], titles: Sequence[str],
                  num_classes: int, cols: int, cell: tuple[float, float]) -> plt.Figure:
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, title) in enumerate(zip(axes.flat, titles)):
        grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if images[i].ndim == 2 else {}
        ax.imshow(images[i], **grey)
        for labels, color in layers:
            _contours(ax, labels[i], color, num_classes)
        ax.set_title(title, fontsize=8)
    return fig


def overlay_figure(images: Sequence[np.ndarray], gt: Sequence[np.ndarray], pred: Sequence[np.ndarray],
                   titles: Sequence[str], num_classes: int, cols: int = 3) -> plt.Figure:
    """Images with ground truth (green) and prediction (red) outlines.

    Shape:
        images: each (H, W, 3) uint8 or (H, W) grey in [0, 1]; gt, pred: each (H, W) labels.
    """
    fig = _outline_grid(images, [(gt, "lime"), (pred, "red")], titles, num_classes, cols, (3.2, 2.6))
    fig.suptitle("test cases: ground truth (green), prediction (red)", fontsize=10)
    fig.tight_layout()
    return fig


def overlay_cases(data: Prepared, preds: Mapping[str, np.ndarray], per_case: pd.DataFrame, title: str,
                  n: int) -> plt.Figure:
    """Overlays of the first ``n`` evaluated cases; a volume shows its slice with the most foreground."""
    index = {cid: i for i, cid in enumerate(data.ids.tolist())}
    dsc = per_case.groupby("case", sort=False)["dsc"].mean()
    images, gts, outs, titles = [], [], [], []
    for cid in list(preds)[:n]:
        if cid in data.volumes:
            vol, gt = data.volumes[cid]
            z = int(np.argmax((gt > 0).sum(axis=(1, 2))))
            img, gt, pred = vol[z], gt[z], preds[cid][z]
            cid_title = f"{cid} z={z}"
        else:
            img, gt, pred = data.images[index[cid]], data.masks[index[cid]], preds[cid]
            img = img if img.dtype == np.uint8 else img[..., 0].astype(np.float32)
            cid_title = cid
        images.append(img)
        gts.append(gt)
        outs.append(pred)
        titles.append(f"{cid_title} · DSC {100 * dsc[cid]:.1f}")
    fig = overlay_figure(images, gts, outs, titles, data.num_classes)
    fig.suptitle(f"{title}\n{data.description}\nground truth (green), prediction (red)", fontsize=9)
    fig.tight_layout()
    return fig


def training_curves(histories: dict[str, pd.DataFrame]) -> plt.Figure:
    """Training loss and validation DSC per epoch, one line per model."""
    fig, (ax_loss, ax_dsc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, h in histories.items():
        ax_loss.plot(h["epoch"], h["train_loss"], marker=".", label=name)
        ax_dsc.plot(h["epoch"], h["val_dsc"], marker=".", label=name)
    ax_loss.set(xlabel="epoch", ylabel="train loss (CE + Dice)")
    ax_dsc.set(xlabel="epoch", ylabel="validation DSC (%)")
    ax_dsc.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dataset_montage(images: np.ndarray, masks: np.ndarray, titles: Sequence[str], num_classes: int,
                    cols: int = 4) -> plt.Figure:
    """Images with their mask outlines (green), for dataset cards."""
    fig = _outline_grid(images, [(masks, "lime")], titles, num_classes, cols, (2.8, 2.3))
    fig.tight_layout()
    return fig
