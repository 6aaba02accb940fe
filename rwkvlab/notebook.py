"""What every study notebook does first: find and load the params, send the log to a file.

A notebook runs where a person opens it (JupyterLab and VS Code start the kernel in ``notebooks/``) as well
as under papermill from the repository root: :func:`start` finds the project's ``params.yaml`` from the
working directory when no file is given, and every path of the params resolves against that file's folder, so
the outputs land in the same places either way. The INFO log of rwkvlab goes to
``<reports>/logs/<stage>.log`` (appended, one header per start); the notebook itself shows warnings and errors
only, beside the progress bars and the tables that matter.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rwkvlab import config

__all__ = ["start", "log_to_file", "epoch_summary"]

_MARK = "_rwkvlab_notebook"


def log_to_file(log_file: Path, logger_name: str = "rwkvlab") -> Path:
    """Route ``logger_name``'s INFO records to ``log_file`` and only WARNING and above to stderr (the notebook).

    Calling it again (a rerun cell) replaces the handlers it installed before instead of adding more.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(logger_name)
    for handler in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(handler)
        handler.close()
    to_file = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    to_notebook = logging.StreamHandler()
    to_notebook.setLevel(logging.WARNING)
    to_notebook.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for handler in (to_file, to_notebook):
        setattr(handler, _MARK, True)
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler (logging.basicConfig) would print every INFO line again
    logger.info("---- %s, log of %s", datetime.datetime.now().isoformat(timespec="seconds"), log_file.stem)
    return log_file


def start(stage: str, params_file: str | Path | None = None, **overrides: Any) -> config.Params:
    """Load the study's params and log the stage to ``<reports>/logs/<stage>.log``.

    Args:
        stage: names the log file, e.g. ``02_train_demo-rwkv_unet_t`` (the executed notebook's name).
        params_file: the params file; ``None`` finds the project's ``params.yaml`` from the working
            directory (:func:`rwkvlab.config.find_params_file`).
        overrides: dotted keys to replace, as :func:`rwkvlab.config.load` takes them.
    """
    p = config.load(params_file, **overrides)
    log_to_file(p.base.reports_dir / "logs" / f"{stage}.log")
    logging.getLogger(__name__).info("params %s", p.file)
    return p


def epoch_summary(history: pd.DataFrame, rows: int = 6) -> pd.DataFrame:
    """A few rows of a training history: evenly spaced epochs, the last one and the best by ``val_dsc``
    (``val_top1`` for pretraining), marked in a ``note`` column; the whole history is in its CSV."""
    if history.empty:
        return history
    score = "val_dsc" if "val_dsc" in history else "val_top1" if "val_top1" in history else None
    picks = set(np.linspace(0, len(history) - 1, min(rows, len(history))).round().astype(int).tolist())
    best = int(history[score].fillna(-np.inf).to_numpy().argmax()) if score else None
    if best is not None:
        picks.add(best)
    out = history.iloc[sorted(picks)].copy()
    out["note"] = ["best" if i == best else "" for i in sorted(picks)]
    if len(history) - 1 in picks and out["note"].iloc[-1] == "":
        out.iloc[-1, out.columns.get_loc("note")] = "last"
    return out
