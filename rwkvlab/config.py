"""``params.yaml`` -> typed, frozen dataclasses; unknown keys and wrong types are rejected.

Relative paths in the params file are resolved against the file's own folder, so a study can
be run from a copy of the params elsewhere (the pipeline smoke test does this).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["Base", "Prepare", "Recipe", "Train", "Evaluate", "Report", "Params", "load"]


@dataclass(frozen=True)
class Base:
    """Settings shared by every stage."""

    seed: int = 0
    device: str = "auto"
    data_dir: Path = Path("data")
    reports_dir: Path = Path("reports")
    checkpoints_dir: Path = Path("data/checkpoints")


@dataclass(frozen=True)
class Prepare:
    """Validation, split and caching of the datasets."""

    datasets: dict[str, Path] = field(default_factory=lambda: {"demo": Path("data/demo")})
    image_size: dict[str, tuple[int, int]] = field(default_factory=lambda: {"demo": (96, 128)})
    options: dict[str, dict[str, bool]] = field(default_factory=dict)
    split_seeds: tuple[int, ...] = (0, 1, 2)
    card_montage: int = 8

    def size(self, dataset: str) -> tuple[int, int]:
        if dataset not in self.image_size:
            raise ValueError(f"params.yaml: prepare.image_size has no entry for dataset {dataset!r}")
        return self.image_size[dataset]


@dataclass(frozen=True)
class Recipe:
    """A training recipe (SPEC §6); one per dataset."""

    epochs: int
    batch_size: int
    lr: float
    min_lr: float
    weight_decay: float
    ce_weight: float
    dice_weight: float
    test_checkpoint: Literal["best", "last"] = "best"
    augment: Literal["none", "light", "acdc"] = "light"  # rwkvlab.data.augment
    # Not in the paper: recompute BatchNorm statistics on the training images before each
    # validation. Short runs on tiny sets (the demo) otherwise validate with running statistics
    # that lag far behind the weights.
    precise_bn: bool = False


@dataclass(frozen=True)
class Train:
    """Which models to train on which dataset, and the recipes."""

    datasets: tuple[str, ...] = ("demo",)
    split_seed: int = 0
    models: tuple[str, ...] = ("rwkv_unet_t",)
    num_workers: int = 0
    recipes: dict[str, Recipe] = field(default_factory=dict)

    def recipe(self, dataset: str) -> Recipe:
        if dataset not in self.recipes:
            raise ValueError(f"params.yaml: train.recipes has no recipe for dataset {dataset!r}; "
                             f"recipes: {sorted(self.recipes)}")
        return self.recipes[dataset]


@dataclass(frozen=True)
class Evaluate:
    """Test-set evaluation."""

    batch_size: int = 8


@dataclass(frozen=True)
class Report:
    """Tables and figures."""

    overlay_cases: int = 6


@dataclass(frozen=True)
class Params:
    base: Base = field(default_factory=Base)
    prepare: Prepare = field(default_factory=Prepare)
    train: Train = field(default_factory=Train)
    evaluate: Evaluate = field(default_factory=Evaluate)
    report: Report = field(default_factory=Report)


def _convert(value: Any, tp: Any, where: str, root: Path) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"params: {where} must be a mapping, got {value!r}")
        names = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"params: unknown key(s) {unknown} in {where}; known: {sorted(names)}")
        missing = sorted(n for n, f in names.items() if n not in value and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"params: {where} is missing required key(s) {missing}")
        hints = typing.get_type_hints(tp)
        return tp(**{k: _convert(v, hints[k], f"{where}.{k}", root) for k, v in value.items()})
    if tp is Path:
        if not isinstance(value, str):
            raise ValueError(f"params: {where} must be a path string, got {value!r}")
        p = Path(value)
        return p if p.is_absolute() else root / p
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ValueError(f"params: {where} must be a mapping, got {value!r}")
        return {_convert(k, kt, where, root): _convert(v, vt, f"{where}.{k}", root) for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"params: {where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], where, root) for v in value)
        if len(value) != len(args):
            raise ValueError(f"params: {where} must have {len(args)} items, got {value!r}")
        return tuple(_convert(v, a, where, root) for v, a in zip(value, args))
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"params: {where} must be one of {typing.get_args(tp)}, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"params: {where} must be {tp.__name__}, got {value!r}")
    return value


def load(params_file: str | Path = "params.yaml", **overrides: Any) -> Params:
    """Read and validate the params file.

    Args:
        params_file: the YAML file; relative paths inside resolve against its folder.
        overrides: dotted keys to replace, e.g. ``**{"train.recipes.demo.epochs": 1}``.
    """
    params_file = Path(params_file)
    if not params_file.is_file():
        raise FileNotFoundError(f"params file {params_file} not found")
    raw = yaml.safe_load(params_file.read_text()) or {}
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return _convert(raw, Params, str(params_file), params_file.resolve().parent)
