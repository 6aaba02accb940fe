"""Where each stage reads and writes, derived from ``params.yaml`` (``base`` section) only."""

from __future__ import annotations

from pathlib import Path

from rwkvlab.config import Params

__all__ = ["cache", "split_file", "run_dir", "train_dir", "eval_dir", "cards_dir", "figures_dir"]


def cache(p: Params, dataset: str) -> Path:
    """Prepared arrays of ``dataset``."""
    return p.base.data_dir / "prepared" / f"{dataset}.npz"


def split_file(p: Params, dataset: str, seed: int) -> Path:
    """The split of ``dataset`` drawn with ``seed``."""
    return p.base.data_dir / "splits" / dataset / f"seed{seed}.json"


def run_dir(p: Params, dataset: str, model: str) -> Path:
    """Checkpoints of one training run."""
    return p.base.checkpoints_dir / dataset / model


def train_dir(p: Params, model: str) -> Path:
    """Training history of ``model`` (DVC plots)."""
    return p.base.reports_dir / "train" / model


def eval_dir(p: Params, model: str) -> Path:
    """Test metrics and predictions of ``model``."""
    return p.base.reports_dir / "evaluate" / model


def cards_dir(p: Params, dataset: str) -> Path:
    """Dataset card of ``dataset``."""
    return p.base.reports_dir / "datasets" / dataset


def figures_dir(p: Params) -> Path:
    """Figures of the report."""
    return p.base.reports_dir / "figures"
