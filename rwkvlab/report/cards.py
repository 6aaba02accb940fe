"""Dataset cards: what a prepared dataset holds (cases per split, sizes, class frequencies) and a montage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rwkvlab.data.cache import Prepared
from rwkvlab.io import atomic_write
from rwkvlab.report.figures import dataset_montage, save_figure

__all__ = ["dataset_card", "write_card"]


def dataset_card(data: Prepared) -> dict[str, pd.DataFrame]:
    """Tables of a prepared dataset: cases per split, original image sizes, class pixel frequencies."""
    counts = pd.DataFrame([{"split": s, "2d_items": len(idx), "volumes": len(data.volume_splits.get(s, []))}
                           for s, idx in data.splits.items()])
    labels = [data.masks[data.labelled]] + [lab for _, lab in data.volumes.values()]
    pixels = sum(np.bincount(a.ravel(), minlength=data.num_classes) for a in labels)
    present = sum(np.array([[(m == c).any() for c in range(data.num_classes)] for m in a]).sum(0)
                  for a in [data.masks[data.labelled], [lab for _, lab in data.volumes.values()]] if len(a))
    freq = pd.DataFrame({"class": data.class_names, "pixel_fraction": np.round(pixels / max(pixels.sum(), 1), 5),
                         "cases_present": present})
    shapes = [f"{h}x{w}" for h, w in data.sizes] + [f"{d}x{h}x{w}" for d, h, w in
                                                    (img.shape for img, _ in data.volumes.values())]
    size_table = (pd.Series(shapes, dtype=str).value_counts().rename_axis("original size (HxW or DxHxW)")
                  .reset_index(name="cases").head(15))
    return {"cases per split": counts, "original image sizes": size_table, "class pixel frequencies": freq}


def write_card(data: Prepared, description: str, out_dir: Path, montage: int) -> Figure:
    """Write ``out_dir/card.md`` and ``out_dir/montage.png``; returns the montage figure."""
    tables = dataset_card(data)
    n, h, w = data.masks.shape
    vol = ", ".join(f"{vid} {tuple(img.shape)}" for vid, (img, _) in list(data.volumes.items())[:12])
    skipped = "".join(f"- `{cid}`: {problem}\n" for cid, problem in data.skipped.items())
    md = (f"# Dataset card: {data.dataset}\n\n{description}\n\n"
          f"2D items prepared at {h}x{w} (HxW): {n}. Volumes (original size, D x H x W): "
          f"{len(data.volumes)}{': ' + vol if vol else ''}.\n\n"
          + (f"## Skipped cases\n\n{len(data.skipped)} case(s) with a problem were left out "
             f"(prepare.options.{data.dataset}.skip_invalid):\n\n{skipped}\n" if skipped else "")
          + "".join(f"## {title.capitalize()}\n\n{t.to_markdown(index=False)}\n\n" for title, t in tables.items())
          + "![montage](montage.png)\n")
    atomic_write(Path(out_dir) / "card.md", lambda p: p.write_text(md))
    pick = np.linspace(0, n - 1, min(montage, n)).astype(int) if n else np.zeros(0, int)
    images = data.images[pick]
    fig = dataset_montage(images if images.dtype == np.uint8 else images[..., 0].astype(np.float32),
                          data.masks[pick], data.ids[pick].tolist(), data.num_classes)
    fig.suptitle(f"{data.dataset}: {data.description}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, Path(out_dir) / "montage.png")
    return fig
