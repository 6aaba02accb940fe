"""The prepare stage of one dataset: validate its raw folder, cache it, split it (its card: ``rwkvlab.report.cards``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from rwkvlab.data._base import DataError
from rwkvlab.data.cache import prepare
from rwkvlab.data.readers import get_reader
from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["prepare_dataset"]


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
