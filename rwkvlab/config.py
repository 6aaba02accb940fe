"""``params.yaml`` -> typed, frozen dataclasses; unknown keys and wrong types are rejected.

Relative paths in the params file are resolved against the file's own folder, so a study can
be run from a copy of the params elsewhere (the pipeline smoke test does this), and its outputs land
in the same places whatever the working directory: the repository root (papermill under DVC), the
notebook's folder (a JupyterLab or VS Code kernel) or any folder inside the project.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = ["Base", "Prepare", "PretrainRecipe", "Pretrain", "Recipe", "TrainRun", "Train", "Variant", "Protocol",
           "Ablate", "Erf", "Evaluate", "Report", "NnunetDataset", "NnunetRun", "Nnunet", "Params", "PARAMS_FILE", "find_params_file", "load",
           "recipe_with_defaults"]

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Base:
    """Settings shared by every stage."""

    seed: int
    device: str
    data_dir: Path
    reports_dir: Path
    checkpoints_dir: Path


@dataclass(frozen=True)
class Prepare:
    """Validation, split and caching of the datasets."""

    datasets: dict[str, Path]
    # (H, W) the 2D items of a dataset are resized to; a dataset of volumes only (trained in 3D on patches of its
    # native voxels, docs §20) has no entry
    image_size: dict[str, tuple[int, int]]
    # per dataset: reader options, plus ``reader`` (the reader of a dataset of your own, e.g. ``folder``)
    # and ``skip_invalid`` (leave out the cases with a problem); checked by rwkvlab.data.get_reader
    options: dict[str, dict[str, object]]
    split_seeds: tuple[int, ...]
    card_montage: int

    def size(self, dataset: str) -> tuple[int, int] | None:
        """The 2D item size of ``dataset``; ``None`` where it has no entry (checked by prepare: only a dataset
        without 2D items may leave it out)."""
        return self.image_size.get(dataset)


@dataclass(frozen=True)
class PretrainRecipe:
    """An encoder pretraining recipe (docs §6 last paragraph, §13); names follow timm's ``train.py``."""

    data: Path                   # an ImageFolder tree: data/train/<class>/*, data/val/<class>/*
    epochs: int
    batch_size: int              # global batch, split evenly over the ranks
    lr: float
    min_lr: float
    warmup_epochs: int
    warmup_lr: float
    weight_decay: float          # not applied to norms, biases and other 1-D parameters
    label_smoothing: float
    img_size: int                # training crop and evaluation size, a multiple of 16
    crop_pct: float  # evaluation: resize to img_size / crop_pct, then centre crop
    scale: tuple[float, float]  # RandomResizedCrop area range
    hflip: float
    auto_augment: str | None  # timm RandAugment string; None for none
    color_jitter: float
    interpolation: str
    drop_path: float
    ema_decay: float
    ema_warmup: bool  # timm's EMA warm-up (decay rises with the step), for short runs
    clip_grad: float  # max gradient norm; 0 for none
    amp: bool  # autocast (bf16, else fp16 + loss scaling) on CUDA only


@dataclass(frozen=True)
class Pretrain:
    """Supervised pretraining of encoders with their classification heads (``rwkvlab.engine.pretrain``): one
    stage ``pretrain@<model>`` for each of ``models``, all with ``recipes[recipe]``."""

    models: tuple[str, ...]
    recipe: str  # the entry of ``recipes`` that the stage runs
    nproc: int  # > 1: the notebook launches torchrun --nproc_per_node=nproc
    num_workers: int
    digits_train_per_class: int  # the demo ImageFolder (rwkvlab.data.digits)
    digits_val_per_class: int
    recipes: dict[str, PretrainRecipe]

    def run_recipe(self) -> PretrainRecipe:
        if self.recipe not in self.recipes:
            raise ValueError(f"params.yaml: pretrain.recipes has no recipe {self.recipe!r}; "
                             f"recipes: {sorted(self.recipes)}")
        return self.recipes[self.recipe]


@dataclass(frozen=True)
class Recipe:
    """A training recipe (docs §6); one per dataset."""

    epochs: int
    batch_size: int
    lr: float
    min_lr: float
    weight_decay: float
    ce_weight: float
    dice_weight: float
    test_checkpoint: Literal["best", "last"]
    augment: Literal["none", "light", "acdc", "synapse", "synapse_scratch", "volume"]  # rwkvlab.data.augment
    # Not in the paper: recompute BatchNorm statistics on the training images before each
    # validation. Short runs on tiny sets (the demo) otherwise validate with running statistics
    # that lag far behind the weights.
    precise_bn: bool
    # Encoder weights to start from: "pretrain/<encoder model>" loads the pretrain stage's encoder.pt
    # (the head dropped by an explicit key filter, then a strict load); None trains from scratch.
    init: str | None
    # Speed and safety (issue 10); train.recipe_defaults in params.yaml: the plain fp32 eager loop.
    precision: Literal["fp32", "bf16"]  # bf16: autocast (the WKV still accumulates in fp32)
    channels_last: bool  # NHWC weights and inputs (faster convolutions on GPUs and recent CPUs)
    compile: bool  # torch.compile the model (graph breaks at the Bi-WKV op until it is a custom op)
    fused_adamw: bool  # torch's fused AdamW kernel where the device has one (same update up to rounding)
    clip_grad: float  # max global gradient norm; 0 for none
    val_every: int  # > 0: also validate (and keep best.pt) every this many optimizer steps
    sync_bn: bool  # under DDP: SyncBatchNorm (GPUs), else per-rank statistics averaged each epoch
    # Semi-supervised training (FUGC, docs §6; rwkvlab.engine.train): each step adds, on a batch of unlabelled
    # images, consistency_weight * ramp * the MSE between the predictions on two views (rwkvlab.data.augment).
    consistency_weight: float  # > 0 turns the consistency term on; needs an unlabelled source below
    consistency_rampup: int  # epochs of the ramp exp(-5 (1 - t)^2), t advanced every optimizer step; 0: none
    unlabelled: str | None  # a split of unlabelled images (FUGC: "unlabelled")
    # this fraction of the train split, drawn with the run's seed, loses its labels and joins the unlabelled
    # pool (for sets without unlabelled images, e.g. the demo); it applies with consistency_weight 0 too, so
    # the supervised baseline on the same labels is the same recipe with the weight set to 0
    unlabelled_fraction: float
    # Volumetric models (spatial_dims 3, docs §20): training patches (D, H, W) drawn from the train volumes,
    # patches_per_volume per volume and epoch, a foreground_fraction of them centred on a labelled voxel
    # (MONAI's RandCropByPosNegLabeld); validation and test by sliding windows of patch_size with sw_overlap,
    # blended with sw_mode weights, sw_batch_size windows per forward. None for 2D models.
    patch_size: tuple[int, ...] | None
    patches_per_volume: int
    foreground_fraction: float
    sw_overlap: float
    sw_mode: Literal["gaussian", "constant"]
    sw_batch_size: int


@dataclass(frozen=True)
class TrainRun:
    """One configured training run: the stages ``train@<name>`` and ``evaluate@<name>``.

    Args:
        dataset: a dataset of ``prepare.datasets``.
        model: a registered model name.
        recipe: a recipe of ``train.recipes``.
        kwargs: model keyword arguments besides channels and classes.
        seeds: split seeds (of ``prepare.split_seeds``) it is trained on, one training each (initialised with
            ``base.seed`` + the split seed); the run's summary is the mean and sample std over them (the paper's
            ± over the three splits).
        init: encoder weights to start from, ``pretrain/<encoder model>`` (an encoder of ``pretrain.models``) or a
            checkpoint file (``.pt``, relative to the params file: e.g. the authors' ImageNet encoder converted by
            ``python -m rwkvlab.convert``); it replaces the recipe's ``init`` for this run, so runs of several
            models can share one recipe.
    """

    dataset: str
    model: str
    recipe: str
    kwargs: dict[str, Any]
    seeds: tuple[int, ...]
    init: str | None


@dataclass(frozen=True)
class Train:
    """The configured runs (``runs``: name -> :class:`TrainRun`) and the recipes they name."""

    runs: dict[str, TrainRun]
    num_workers: int
    nproc: int  # > 1: the train stage runs torchrun --nproc_per_node=nproc (DDP)
    recipes: dict[str, Recipe]
    # what a recipe or run leaves out (every optional field, stated once in params.yaml)
    recipe_defaults: dict[str, Any]
    run_defaults: dict[str, Any]

    def recipe(self, name: str) -> Recipe:
        if name not in self.recipes:
            raise ValueError(f"params.yaml: train.recipes has no recipe {name!r}; recipes: {sorted(self.recipes)}")
        return self.recipes[name]

    def run(self, name: str) -> TrainRun:
        if name not in self.runs:
            raise ValueError(f"params.yaml: train.runs has no run {name!r}; runs: {', '.join(self.runs) or 'none'}")
        return self.runs[name]


@dataclass(frozen=True)
class Variant:
    """One ablation row of the paper (docs §10): a base model plus keyword arguments.

    Args:
        table: the paper table the row belongs to (``"2"``, ``"6"``, ``"8"``-``"13"``).
        row: the row's label in that table's CSV (``rwkvlab/report/paper/``), matched on its first column(s).
        model: the paper's base model of the row.
        kwargs: model keyword arguments (``RWKVUNetCfg`` switches).
        size: input size (H = W) at which the paper counts the row's FLOPs.
        num_classes: classes at which the paper counts them (Synapse: 9).
        recipe: recipe fields that override the ablation recipe when this variant is trained (e.g. ``init``).
        dataset: the prepared dataset it trains and is tested on when not ``ablate.dataset``: the same images
            prepared at another size (Table 13: ``synapse_512``, Synapse at 512 x 512), or another benchmark
            (Table 8's ACDC column: ``acdc``).
        protocol: the training protocol of this row when it is not its table's (Table 7: one per row).
    """

    table: str
    row: str
    model: str
    kwargs: dict[str, Any]
    size: int
    num_classes: int
    recipe: dict[str, Any]
    dataset: str | None
    protocol: str | None


@dataclass(frozen=True)
class Protocol:
    """How the paper trained the rows of an ablation table (docs §10).

    Args:
        recipe: the recipe of ``train.recipes`` (its epochs: 100 for the paper's scratch-100, 30 otherwise).
        pretrained: start the encoder from the pretrain stage's weights of the base model's size
            (``pretrain/rwkv_enc_<size>``); timm encoders (Table 6) have none offline and start from scratch.
    """

    recipe: str
    pretrained: bool


@dataclass(frozen=True)
class Ablate:
    """The ablation study: which variants are trained, on what, and the variants themselves."""

    dataset: str
    # The base the trained variants apply their settings to; None trains each on its paper base model.
    model: str | None
    split_seed: int  # the split of ``dataset`` (of prepare.split_seeds) the variants train on
    trained: tuple[str, ...]
    protocols: dict[str, Protocol]  # name (scratch-100, pretrained-30, ...) -> how it trains
    tables: dict[str, str | None]  # paper table -> its protocol; None: each row names its own
    variants: dict[str, Variant]
    variant_defaults: dict[str, Any]  # what a variant leaves out

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise ValueError(f"params.yaml: unknown ablation variant {name!r}; ablate.variants: "
                             f"{', '.join(sorted(self.variants))}")
        return self.variants[name]

    def protocol_of(self, name: str) -> str:
        """The training protocol of variant ``name``: its own, else its table's."""
        v = self.variant(name)
        protocol = v.protocol or self.tables.get(v.table)
        if protocol is None:
            raise ValueError(f"params.yaml: ablate.variants.{name} needs a protocol: table {v.table} has none in "
                             f"ablate.tables (its rows differ)")
        if protocol not in self.protocols:
            raise ValueError(f"params.yaml: variant {name}: protocol {protocol!r} is not in ablate.protocols "
                             f"{sorted(self.protocols)}")
        return protocol

    def base_model(self, name: str) -> str:
        """The model a trained variant applies its settings to."""
        return self.model or self.variant(name).model

    def dataset_of(self, name: str) -> str:
        """The prepared dataset variant ``name`` trains and is tested on."""
        return self.variant(name).dataset or self.dataset

    def trained_as(self, name: str) -> str | None:
        """The trained variant whose run is ``name``'s: itself if trained, else the first trained one with the same
        base model, kwargs, recipe fields, size, dataset and protocol (one configuration is one run, e.g. Table 7's "without" row and
        Table 2's default under the same recipe); ``None`` if no trained run has its configuration."""
        if name in self.trained:
            return name

        def configuration(n: str) -> tuple:
            v = self.variant(n)
            return self.base_model(n), v.kwargs, v.recipe, v.size, self.dataset_of(n), self.protocol_of(n)

        return next((t for t in self.trained if configuration(t) == configuration(name)), None)


@dataclass(frozen=True)
class Evaluate:
    """Test-set evaluation."""

    batch_size: int


@dataclass(frozen=True)
class Erf:
    """Effective receptive fields (docs §12, paper Fig. 3): ablation variants at init and trained.

    Args:
        variants: ``ablate.variants`` names, each applied to the ablation's base model.
        images: folder of PNG/JPEG probe images.
        size: (H, W) probe size.
        n: probe images averaged (about 50 in the literature).
        stage: encoder stage index of the probed map (-1: the last, as Fig. 3).
        seed: initialisation seed of the models at init.
        checkpoint: which checkpoint of the ablation runs is probed after training.
    """

    variants: tuple[str, ...]
    images: Path
    size: tuple[int, int]
    n: int
    stage: int
    seed: int
    checkpoint: Literal["best", "last"]


@dataclass(frozen=True)
class Report:
    """Tables and figures."""

    overlay_cases: int


@dataclass(frozen=True)
class NnunetDataset:
    """A dataset in nnU-Net v2's raw layout, planned and preprocessed by nnU-Net under its ``id``."""

    id: int
    source: Path
    configuration: str


@dataclass(frozen=True)
class NnunetRun:
    """A trainer on a dataset, with nnU-Net's plans of it (``python -m rwkvlab.nnunet``, docs §24)."""

    dataset: str
    trainer: str


@dataclass(frozen=True)
class Nnunet:
    """RWKV-UNet inside nnU-Net v2 beside nnU-Net's own U-Net (docs §24).

    Args:
        root: the study's nnU-Net folders, ``<root>/<dataset>/{raw,preprocessed,results/<run>}``.
        datasets: name -> its nnU-Net id, raw folder and the configuration trained.
        runs: name -> dataset and trainer (stage ``nnunet_train@<name>``).
        epochs, iterations: the budget; other than nnU-Net's 1000 x 250 it trains the short-budget variant
            ``<trainer>_<epochs>epochs_<iterations>iters``.
        folds: nnU-Net's cross-validation folds each run trains.
        augmentation_workers: nnU-Net's data-augmentation processes (``nnUNet_n_proc_DA``); 0 augments in the
            training process, which with ``base.seed`` makes a CPU run repeat bit for bit; ``None``: nnU-Net's own
            choice (its per-machine table, at most the CPU count).
    """

    root: Path
    datasets: dict[str, NnunetDataset]
    runs: dict[str, NnunetRun]
    epochs: int
    iterations: int
    folds: tuple[int, ...]
    augmentation_workers: int | None


@dataclass(frozen=True)
class Params:
    base: Base
    prepare: Prepare
    pretrain: Pretrain
    train: Train
    evaluate: Evaluate
    ablate: Ablate
    erf: Erf
    report: Report
    nnunet: Nnunet
    # the file it was read from (absolute), so that a stage can hand the same file to its torchrun children
    file: Path | None = field(default=None, init=False, compare=False)
    # the dotted keys load() replaced, which a torchrun child must replace too to read the same params
    overrides: dict[str, Any] = field(default_factory=dict, init=False, compare=False)

    def __post_init__(self) -> None:
        _check_runs(self)


# Run names become folder names and DVC stage names (train@<name>) and params keys (train.runs.<name>).
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def _check_runs(p: Params) -> None:
    """Cross-section checks: what a configured run or the ablation names must exist in its own section."""
    seeds = set(p.prepare.split_seeds)
    for name, run in p.train.runs.items():
        where = f"params: train.runs.{name}"
        if not _RUN_NAME.fullmatch(name):
            raise ValueError(f"params: train.runs: run name {name!r} must be letters, digits, '_' and '-' "
                             f"(it names folders and DVC stages)")
        if run.recipe not in p.train.recipes:
            raise ValueError(f"{where}.recipe {run.recipe!r} is not in train.recipes; recipes: "
                             f"{sorted(p.train.recipes)}")
        if run.dataset not in p.prepare.datasets:
            raise ValueError(f"{where}.dataset {run.dataset!r} is not in prepare.datasets; datasets: "
                             f"{sorted(p.prepare.datasets)}")
        if not run.seeds or len(set(run.seeds)) != len(run.seeds) or not set(run.seeds) <= seeds:
            raise ValueError(f"{where}.seeds must be distinct split seeds of prepare.split_seeds "
                             f"{list(p.prepare.split_seeds)}, got {list(run.seeds)}")
    for name in p.ablate.trained:
        dataset = p.ablate.dataset_of(name)
        if dataset not in p.prepare.datasets:
            where = f"ablate.variants.{name}.dataset" if p.ablate.variant(name).dataset else "ablate.dataset"
            raise ValueError(f"params: {where} {dataset!r} (trained variant {name}) is not in prepare.datasets; "
                             f"datasets: {sorted(p.prepare.datasets)}")
    for table, protocol in p.ablate.tables.items():
        if protocol is not None and protocol not in p.ablate.protocols:
            raise ValueError(f"params: ablate.tables.{table} names protocol {protocol!r}, not one of ablate.protocols "
                             f"{sorted(p.ablate.protocols)}")
    for name, protocol in p.ablate.protocols.items():
        if protocol.recipe not in p.train.recipes:
            raise ValueError(f"params: ablate.protocols.{name}.recipe {protocol.recipe!r} is not in train.recipes")
    for name in p.ablate.variants:
        p.ablate.protocol_of(name)
    if p.ablate.split_seed not in seeds:
        raise ValueError(f"params: ablate.split_seed {p.ablate.split_seed} is not in prepare.split_seeds "
                         f"{list(p.prepare.split_seeds)}")
    for name, run in p.nnunet.runs.items():
        if not _RUN_NAME.fullmatch(name):
            raise ValueError(f"params: nnunet.runs: run name {name!r} must be letters, digits, '_' and '-'")
        if run.dataset not in p.nnunet.datasets:
            raise ValueError(f"params: nnunet.runs.{name}.dataset {run.dataset!r} is not in nnunet.datasets; "
                             f"datasets: {sorted(p.nnunet.datasets)}")
    if p.nnunet.epochs < 1 or p.nnunet.iterations < 1 or not p.nnunet.folds:
        raise ValueError(f"params: nnunet.epochs and nnunet.iterations must be >= 1 and nnunet.folds not empty, got "
                         f"{p.nnunet.epochs}, {p.nnunet.iterations}, {list(p.nnunet.folds)}")
    models = p.pretrain.models
    if not models or len(set(models)) != len(models) or not all(_RUN_NAME.fullmatch(m) for m in models):
        raise ValueError(f"params: pretrain.models must be distinct registered encoder names (e.g. [rwkv_enc_t]), "
                         f"got {list(models)}")
    inits = {f"train.runs.{n}.init": r.init for n, r in p.train.runs.items()}
    inits |= {f"train.recipes.{n}.init": r.init for n, r in p.train.recipes.items()}
    inits |= {f"ablate.variants.{n}.recipe.init": v.recipe.get("init") for n, v in p.ablate.variants.items()}
    for where, init in inits.items():
        kind, _, model = (init or "").partition("/")
        if init is None or (kind == "pretrain" and model in models) or (kind != "pretrain" and
                                                                         init.endswith((".pt", ".pth"))):
            continue
        raise ValueError(f"params: {where} is {init!r}; it must be pretrain/<model> with <model> one of "
                         f"pretrain.models {list(models)} (the encoders the pretrain stages write), a checkpoint "
                         f"file (.pt: one of ours, or a release encoder converted by python -m rwkvlab.convert), "
                         f"or null")


def _convert(value: Any, tp: Any, where: str, root: Path) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:  # free-form (model keyword arguments): checked where used
        return value
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where, root)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"params: {where} must be a mapping, got {value!r}")
        names = {f.name: f for f in dataclasses.fields(tp) if f.init}
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
        # normalised (../data from a params file in a subfolder is <project>/data), symbolic links kept
        return p if p.is_absolute() else Path(os.path.normpath(root / p))
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


# Entries of params.yaml that may leave fields out, and where the values they leave out are stated:
# (section, entries, defaults, entry type). Nothing here holds a value: the defaults are params.
_ENTRY_DEFAULTS = (("train", "recipes", "recipe_defaults", Recipe), ("train", "runs", "run_defaults", TrainRun),
                   ("ablate", "variants", "variant_defaults", Variant))


def _fill_entries(raw: dict[str, Any]) -> None:
    """Complete each recipe, run and variant of ``raw`` with its section's ``*_defaults`` (in place)."""
    for section, entries, defaults_key, tp in _ENTRY_DEFAULTS:
        node = raw.get(section)
        if not isinstance(node, dict) or not isinstance(node.get(defaults_key), dict):
            continue  # a missing or malformed defaults mapping is reported by _convert, naming its key
        defaults = node[defaults_key]
        unknown = sorted(set(defaults) - {f.name for f in dataclasses.fields(tp)})
        if unknown:
            raise ValueError(f"params: {section}.{defaults_key} has unknown key(s) {unknown}; known: "
                             f"{sorted(f.name for f in dataclasses.fields(tp))}")
        if isinstance(node.get(entries), dict):
            node[entries] = {name: {**defaults, **entry} if isinstance(entry, dict) else entry
                             for name, entry in node[entries].items()}


def recipe_with_defaults(params_file: str | Path | None = None, **fields: Any) -> Recipe:
    """A :class:`Recipe` of ``fields`` completed with ``train.recipe_defaults`` of the project's params file, as
    a recipe of ``train.recipes`` is (for code and tests that build a recipe without naming every field)."""
    path = find_params_file(params_file)
    defaults = (yaml.safe_load(path.read_text()) or {}).get("train", {}).get("recipe_defaults")
    if not isinstance(defaults, dict):
        raise ValueError(f"{path}: train.recipe_defaults is missing")
    return _convert({**defaults, **fields}, Recipe, "recipe", path.parent)


def find_params_file(params_file: str | Path | None = None, start: str | Path | None = None) -> Path:
    """The params file a stage or notebook reads, as an absolute path.

    An explicit ``params_file`` is taken as given (relative to the working directory). Without one, the
    project's ``params.yaml`` is found by walking up from ``start`` (default: the working directory, which
    is the notebook's folder in a Jupyter kernel and the repository root under DVC) to the first folder
    that holds one.

    Raises:
        FileNotFoundError: the explicit file does not exist, or no folder from ``start`` up holds a params.yaml.
    """
    if params_file is not None:
        path = Path(params_file)
        if not path.is_file():
            raise FileNotFoundError(f"params file {path} not found (working directory {Path.cwd()})")
        return path.resolve()
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / PARAMS_FILE).is_file():
            return folder / PARAMS_FILE
    raise FileNotFoundError(f"no {PARAMS_FILE} in {here} or any folder above it; open the notebook inside the "
                            f"project, or pass params_file explicitly")


def load(params_file: str | Path | None = None, **overrides: Any) -> Params:
    """Read and validate the params file.

    Args:
        params_file: the YAML file; relative paths inside resolve against its folder. ``None``: the project's
            ``params.yaml`` found from the working directory (:func:`find_params_file`).
        overrides: dotted keys to replace, e.g. ``**{"train.recipes.demo.epochs": 1}``.
    """
    params_file = find_params_file(params_file)
    raw = yaml.safe_load(params_file.read_text()) or {}
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    _fill_entries(raw)
    params = _convert(raw, Params, str(params_file), params_file.parent)
    object.__setattr__(params, "file", params_file)
    object.__setattr__(params, "overrides", dict(overrides))
    return params
