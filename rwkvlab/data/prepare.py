"""The prepare stage of one dataset: validate its raw folder, cache it, split it, describe it."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from rwkvlab.data._base import DataError
from rwkvlab.data.cache import Prepared, prepare
from rwkvlab.data.reader import get_reader
from rwkvlab.io import atomic_write
from rwkvlab.report.figures import dataset_montage, save_figure

logger = logging.getLogger(__name__)

__all__ = ["prepare_dataset", "dataset_card", "write_card"]


def prepare_dataset(name: str, raw_root: Path, image_size: tuple[int, int], seeds: Sequence[int], cache: Path,
                    splits_dir: Path, card_dir: Path, options: dict[str, Any] | None = None) -> bool:
    """Prepare ``name`` from ``raw_root``, or report and skip it when the folder holds no data.

    A skipped dataset still gets its outputs (``cache`` replaced by ``<cache>.skipped.json`` with the
    reason and expected layout, a note in ``splits_dir`` and a card saying so in ``card_dir``), so a
    pipeline over many datasets goes on.

    Args:
        options: ``prepare.options.<name>``: ``reader`` (the reader of a dataset that is not registered,
            e.g. ``folder``), ``skip_invalid`` (leave out the cases that have a problem, naming them, instead
            of stopping) and the reader's own options.

    Returns:
        ``True`` if prepared, ``False`` if skipped.

    Raises:
        DataError: the folder has data but does not match the layout (every problem listed).
    """
    options = dict(options or {})
    skip_invalid = options.get("skip_invalid", False)
    if not isinstance(skip_invalid, bool):
        raise DataError(f"prepare.options.{name}.skip_invalid must be true or false, got {skip_invalid!r}")
    reader = get_reader(name, raw_root, **options)
    raw_root = Path(raw_root)
    present = raw_root.is_dir() and any(not p.name.startswith(".") and p.name != "README.md"
                                        for p in raw_root.iterdir())
    status = Path(cache).with_suffix(".skipped.json")
    if not present:
        # Relative to the working directory where possible, so the note is the same in every checkout.
        shown = Path(os.path.relpath(raw_root)) if raw_root.resolve().is_relative_to(Path.cwd()) else raw_root
        expected = get_reader(name, shown, **options).expected()
        reason = f"{shown}: no raw data; to use {name}, put the published files there. {expected}"
        logger.warning("skipping %s: %s", name, reason)
        atomic_write(status, lambda f: f.write_text(json.dumps({"dataset": name, "skipped": reason}, indent=2)))
        for note in (Path(splits_dir) / "SKIPPED.txt", Path(card_dir) / "card.md"):
            atomic_write(note, lambda f: f.write_text(f"# {name}: skipped\n\n{reason}\n"))
        return False
    for stale in (status, Path(splits_dir) / "SKIPPED.txt"):
        stale.unlink(missing_ok=True)
    prepare(reader, image_size, Path(cache), Path(splits_dir), seeds, skip_invalid=skip_invalid)
    return True


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


def write_card(data: Prepared, description: str, out_dir: Path, montage: int) -> plt.Figure:
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
