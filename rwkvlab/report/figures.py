"""Figures: prediction overlays, dataset montages, labelled scatter plots (training curves: ``curves``).

Every figure is a :class:`matplotlib.figure.Figure` made without pyplot: no backend is chosen at import and
no global figure list grows in long loops. Saved with :func:`save_figure`, which returns it, so a notebook
cell ending in ``save_figure(...)`` shows the figure it wrote (the kernel's inline backend renders it); a
command line needs no backend at all, since ``savefig`` to PNG draws with Agg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.transforms import Bbox
from matplotlib.figure import Figure

from rwkvlab.data.cache import Prepared
from rwkvlab.io import atomic_write

__all__ = ["overlay_figure", "overlay_cases", "volume_slices", "case_view", "draw_outlines", "dataset_montage", "save_figure",
           "new_figure", "label_points"]


def new_figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (6.4, 4.8),
               **subplots: object) -> tuple[Figure, object]:
    """A figure (without pyplot) and its axes: ``fig.subplots(rows, cols, **subplots)``."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **subplots)


def save_figure(fig: Figure, path: Path) -> Figure:
    """Save a figure as PNG without leaving a partial file; returns it, for a notebook to display."""
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=120, bbox_inches="tight"))
    return fig


# Candidate label offsets (points) around an anchor: rings of growing radius, eight directions each, nearest first.
_DIRECTIONS = [(0, 1), (1, 0), (-1, 0), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1)]
_RADII = [3, 8, 14, 22, 32, 45, 60, 80, 105, 135, 170, 210, 260]


def label_points(ax: Axes, points: Sequence[tuple[float, float, str]], fontsize: float = 7,
                 marker_sizes: Sequence[float] | None = None) -> list:
    """Label each ``(x, y, text)`` of ``ax`` so that no two labels overlap.

    Greedy: each label takes the nearest free spot on rings around its point (inside the axes, off the markers
    where possible), with a leader line when it sits away from its point. Hand-written because adjustText's
    repulsion leaves overlaps when many points coincide (nine variants at one MACs count). Call it after the
    figure's layout is final (``tight_layout``): positions are computed in display space.

    Args:
        marker_sizes: the scatter sizes (points^2) of the points, kept clear of labels where possible.

    Returns:
        the annotations, in the order of ``points``.
    """
    fig = ax.figure
    renderer = fig._get_renderer()
    px = fig.dpi / 72.0
    axes_box = ax.get_window_extent(renderer)
    anchors = ax.transData.transform([(x, y) for x, y, _ in points]) if points else np.zeros((0, 2))
    radii = [np.sqrt(s) / 2 * px for s in (marker_sizes or [0.0] * len(points))]
    markers = [Bbox.from_extents(a[0] - r, a[1] - r, a[0] + r, a[1] + r) for a, r in zip(anchors, radii)]
    placed: list[Bbox] = []
    annotations = []
    for (x, y, text), anchor in zip(points, anchors):
        probe = ax.text(0, 0, text, fontsize=fontsize)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        w, h = extent.width, extent.height
        best = None
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                norm = np.hypot(dx, dy)
                ox, oy = radius * dx / norm, radius * dy / norm
                cx, cy = anchor[0] + ox * px, anchor[1] + oy * px
                # the box grows away from the anchor: left-aligned to the right, bottom-aligned above, centred on 0
                x0 = cx - w / 2 if dx == 0 else (cx if dx > 0 else cx - w)
                y0 = cy - h / 2 if dy == 0 else (cy if dy > 0 else cy - h)
                box = Bbox.from_bounds(x0, y0, w, h)
                if any(box.overlaps(b) for b in placed):
                    continue
                inside = axes_box.contains(x0, y0) and axes_box.contains(x0 + w, y0 + h)
                clear = not any(box.overlaps(m) for m in markers)
                rank = (not inside, not clear)
                if best is None or rank < best[0]:
                    best = (rank, (ox, oy), (dx, dy), box, radius)
                if rank == (False, False):
                    break
            if best is not None and best[0] == (False, False):
                break
        _, (ox, oy), (dx, dy), box, radius = best
        ha = "center" if dx == 0 else ("left" if dx > 0 else "right")
        va = "center" if dy == 0 else ("bottom" if dy > 0 else "top")
        leader = {"arrowstyle": "-", "color": "0.5", "lw": 0.5, "shrinkA": 0, "shrinkB": 2} if radius > 14 else None
        annotations.append(ax.annotate(text, (x, y), xytext=(ox, oy), textcoords="offset points", fontsize=fontsize,
                                       ha=ha, va=va, arrowprops=leader, annotation_clip=False))
        placed.append(box)
    return annotations


def draw_outlines(ax: Axes, labels: np.ndarray, color: str, num_classes: int) -> None:
    """The outline of every foreground class present in ``labels`` on ``ax``, in ``color``."""
    for c in range(1, num_classes):
        if (labels == c).any():
            ax.contour(labels == c, levels=[0.5], colors=[color], linewidths=1.2)


def _outline_grid(images: np.ndarray, layers: Sequence[tuple[np.ndarray, str]], titles: Sequence[str],
                  num_classes: int, cols: int, cell: tuple[float, float]) -> Figure:
    rows = max(1, -(-len(images) // cols))
    fig, axes = new_figure(rows, cols, (cell[0] * cols, cell[1] * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, title) in enumerate(zip(axes.flat, titles)):
        grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if images[i].ndim == 2 else {}
        ax.imshow(images[i], **grey)
        for labels, color in layers:
            draw_outlines(ax, labels[i], color, num_classes)
        ax.set_title(title, fontsize=8)
    return fig


def overlay_figure(images: Sequence[np.ndarray], gt: Sequence[np.ndarray], pred: Sequence[np.ndarray],
                   titles: Sequence[str], num_classes: int, cols: int = 3) -> Figure:
    """Images with ground truth (green) and prediction (red) outlines.

    Shape:
        images: each (H, W, 3) uint8 or (H, W) grey in [0, 1]; gt, pred: each (H, W) labels.
    """
    fig = _outline_grid(images, [(gt, "lime"), (pred, "red")], titles, num_classes, cols, (3.2, 2.6))
    fig.suptitle("test cases: ground truth (green), prediction (red)", fontsize=10)
    fig.tight_layout()
    return fig


def case_view(data: Prepared, cid: str, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """What to draw of test case ``cid``: (image, ground truth, prediction, label); a volume shows its slice with
    the most foreground."""
    if cid in data.volumes:
        vol, gt = data.volumes[cid]
        z = int(np.argmax((gt > 0).sum(axis=(1, 2))))
        return vol[z], gt[z], pred[z], f"{cid} z={z}"
    i = data.ids.tolist().index(cid)
    img = data.images[i]
    return (img if img.dtype == np.uint8 else img[..., 0].astype(np.float32)), data.masks[i], pred, cid


def overlay_cases(data: Prepared, preds: Mapping[str, np.ndarray], per_case: pd.DataFrame, title: str,
                  n: int) -> Figure:
    """Overlays of the first ``n`` evaluated cases; a volume shows its slice with the most foreground."""
    dsc = per_case.groupby("case", sort=False)["dsc"].mean()
    images, gts, outs, titles = [], [], [], []
    for cid in list(preds)[:n]:
        img, gt, pred, cid_title = case_view(data, cid, preds[cid])
        images.append(img)
        gts.append(gt)
        outs.append(pred)
        titles.append(f"{cid_title} · DSC {100 * dsc[cid]:.1f}")
    fig = overlay_figure(images, gts, outs, titles, data.num_classes)
    fig.suptitle(f"{title}\n{data.description}\nground truth (green), prediction (red)", fontsize=9)
    fig.tight_layout()
    return fig


def volume_slices(data: Prepared, case: str, preds: Mapping[str, np.ndarray], n: int = 6) -> Figure:
    """Slices of one test volume across its depth: one row per model (prediction in red), ground truth in green.

    The ``n`` slices are spread evenly over those that hold foreground, so the figure shows how each model's
    label map holds together along the slice axis, which one slice (:func:`overlay_cases`) cannot.

    Args:
        preds: model (row title) -> its (D, H, W) label map of ``case``.
    """
    image, gt = data.volumes[case]
    depth = np.flatnonzero((gt > 0).any(axis=(1, 2)))
    depth = depth if len(depth) else np.arange(len(gt))
    zs = depth[np.linspace(0, len(depth) - 1, min(n, len(depth))).round().astype(int)]
    fig, axes = new_figure(len(preds), len(zs), (2.0 * len(zs), 2.1 * len(preds)), squeeze=False)
    for row, (name, pred) in zip(axes, preds.items()):
        for ax, z in zip(row, zs):
            ax.imshow(image[z], cmap="gray", vmin=0, vmax=1)
            draw_outlines(ax, gt[z], "lime", data.num_classes)
            draw_outlines(ax, pred[z], "red", data.num_classes)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"z={z}", fontsize=7)
        row[0].set_ylabel(name, fontsize=7)
    spacing = data.spacings.get(case)
    fig.suptitle(f"{case}: {len(zs)} slices across its depth"
                 + (f" (voxel {' x '.join(f'{v:g}' for v in spacing)} mm)" if spacing else "")
                 + "; ground truth (green), prediction (red)", fontsize=9)
    fig.tight_layout()
    return fig


def dataset_montage(images: np.ndarray, masks: np.ndarray, titles: Sequence[str], num_classes: int,
                    cols: int = 4) -> Figure:
    """Images with their mask outlines (green), for dataset cards."""
    fig = _outline_grid(images, [(masks, "lime")], titles, num_classes, cols, (2.8, 2.3))
    fig.tight_layout()
    return fig
