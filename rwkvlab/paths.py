"""Where each stage reads and writes, derived from ``params.yaml`` (``base`` section) only."""

from __future__ import annotations

from pathlib import Path

from rwkvlab.config import Params

__all__ = ["cache", "splits_dir", "split_file", "run_dir", "train_dir", "eval_dir", "summary_file", "ablation_run_dir",
           "ablation_dir", "ablations_dir", "erf_dir", "cards_dir", "figures_dir", "adhoc_dir"]


def cache(p: Params, dataset: str) -> Path:
    """Prepared cache of ``dataset`` (its folder is the prepare stage's output)."""
    return p.base.data_dir / "prepared" / dataset / "cache.h5"


def splits_dir(p: Params, dataset: str) -> Path:
    """Split files of ``dataset``."""
    return p.base.data_dir / "splits" / dataset


def split_file(p: Params, dataset: str, seed: int) -> Path:
    """The split of ``dataset`` drawn with ``seed``."""
    return splits_dir(p, dataset) / f"seed{seed}.json"


def run_dir(p: Params, name: str, seed: int) -> Path:
    """Checkpoints (``last.pt``, ``best.pt``) of the run ``name`` on split ``seed``."""
    return p.base.checkpoints_dir / "train" / name / f"seed{seed}"


def train_dir(p: Params, name: str, seed: int) -> Path:
    """Training history (``history.csv``, DVC plots) of the run ``name`` on split ``seed``."""
    return p.base.reports_dir / "train" / name / f"seed{seed}"


def eval_dir(p: Params, name: str, seed: int) -> Path:
    """Test metrics, per-case table and predictions of the run ``name`` on split ``seed``."""
    return p.base.reports_dir / "evaluate" / name / "seeds" / f"seed{seed}"


def summary_file(p: Params, name: str) -> Path:
    """The run's ``metrics.json`` over its split seeds (mean, sample std, per seed)."""
    return p.base.reports_dir / "evaluate" / name / "metrics.json"


def ablations_dir(p: Params) -> Path:
    """The ablation tables and figures (``table<N>.{md,csv}``, the bubble chart, complexity)."""
    return p.base.reports_dir / "ablations"


def ablation_run_dir(p: Params, variant: str) -> Path:
    """Checkpoints of one trained ablation variant."""
    return p.base.checkpoints_dir / "ablate" / variant


def ablation_dir(p: Params, variant: str) -> Path:
    """History and test metrics of one trained ablation variant (the stage ``ablate@<variant>``)."""
    return p.base.reports_dir / "ablate" / variant


def erf_dir(p: Params) -> Path:
    """Effective receptive fields (paper Fig. 3)."""
    return p.base.reports_dir / "erf"


def cards_dir(p: Params, dataset: str) -> Path:
    """Dataset card of ``dataset``."""
    return p.base.reports_dir / "datasets" / dataset


def figures_dir(p: Params) -> Path:
    """Figures of the report."""
    return p.base.reports_dir / "figures"


def adhoc_dir(p: Params, command: str) -> Path:
    """Where ``command`` (``train``, ``pretrain``, ``explore``) writes a run that no stage owns when no ``--out`` is
    given: one git-ignored root outside every stage's deps and outs, so an ad-hoc run never changes the study."""
    return p.base.data_dir / "adhoc" / command
