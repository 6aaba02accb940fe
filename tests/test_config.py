"""params.yaml -> typed config: the committed file loads, mistakes are named."""

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from rwkvlab import config

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_load():
    p = config.load(ROOT / "params.yaml")
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in p.prepare.image_size.values())
    # every 2D benchmark has its size, prepared or not; the 3D demo keeps its volumes' voxels
    assert set(p.prepare.datasets) - set(p.prepare.image_size) == {"volume_demo"}
    assert all(p.train.recipe(r.recipe).patch_size for r in p.train.runs.values() if r.dataset == "volume_demo")
    assert p.base.data_dir == ROOT / "data"
    assert all(p.train.recipe(r.recipe).epochs > 0 for r in p.train.runs.values())
    assert {r.dataset for r in p.train.runs.values()} <= set(p.prepare.datasets)
    study = config.load(ROOT / "tests" / "params.yaml")  # the frozen copy the library's tests read
    assert study.base.data_dir == p.base.data_dir and study.prepare.datasets == p.prepare.datasets
    assert study.train.run("demo-swin_unet").kwargs == {"feature_size": 24}
    assert study.train.run("demo-rwkv_unet_t").seeds == (0,)


def test_every_prepared_dataset_has_a_reader():
    from rwkvlab.data.readers import READERS, get_reader

    get_reader("demo", ROOT)  # registers the readers
    prepare = config.load(ROOT / "params.yaml").prepare
    # the paper profile's too; a name that is not a reader's says which reader it uses (synapse_512)
    readers = {prepare.options.get(name, {}).get("reader", name) for name in prepare.image_size}
    assert readers <= set(READERS)


def committed(**overrides):
    """The study's params (tests/params.yaml, a frozen copy of params.yaml) with dotted keys replaced (what every
    test below varies)."""
    return config.load(ROOT / "tests" / "params.yaml", **overrides)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"train.epochz": 3}, r"unknown key\(s\) \['epochz'\] in .*\.train"),
        ({"prepare.image_size.demo": [96]}, r"prepare.image_size.demo must have 2 items"),
        ({"base.seed": "zero"}, r"base.seed must be int"),
        ({"train.recipes.new": {"epochs": 1}}, r"train.recipes.new is missing required key\(s\) \['batch_size'"),
        ({"train.recipes.demo.test_checkpoint": "first"}, r"test_checkpoint must be one of"),
        ({"erf.n": None}, r"erf.n must be int"),
        ({"train.recipe_defaults.epochz": 1}, r"train.recipe_defaults has unknown key\(s\) \['epochz'\]"),
    ],
)
def test_bad_params_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        committed(**overrides)


def test_a_section_without_a_value_is_named(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text((ROOT / "tests" / "params.yaml").read_text().replace("  n: 8 ", "  # n removed "))
    with pytest.raises(ValueError, match=r"erf is missing required key\(s\) \['n'\]"):
        config.load(f)


def test_config_holds_no_second_value():
    """Every value a stage uses comes from params.yaml: no field of the typed config has a default."""
    def walk(tp, seen):
        if dataclasses.is_dataclass(tp) and tp not in seen:
            seen.add(tp)
            yield tp
            for hint in typing.get_type_hints(tp).values():
                for arg in (hint, *typing.get_args(hint)):
                    yield from walk(arg, seen)

    types = list(walk(config.Params, set()))
    with_default = [f"{tp.__name__}.{f.name}" for tp in types for f in dataclasses.fields(tp)
                    if f.init and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]
    assert not with_default, f"defaults belong in params.yaml: {with_default}"
    assert {"Recipe", "TrainRun", "Variant", "Erf", "PretrainRecipe"} <= {t.__name__ for t in types}


def test_missing_recipe_is_named():
    with pytest.raises(ValueError, match="train.recipes has no recipe 'nope'"):
        committed().train.recipe("nope")


RECIPE = {"epochs": 1, "batch_size": 1, "lr": 1.0e-3, "min_lr": 0.0, "weight_decay": 0.0, "ce_weight": 1.0,
          "dice_weight": 1.0}


def with_runs(runs: str, **extra):
    protocols = {name: {"recipe": "demo", "pretrained": False} for name in committed().ablate.protocols}
    return committed(**{"prepare.datasets": {"demo": "d", "busi": "b"}, "prepare.split_seeds": [0, 1, 2],
                        "train.runs": yaml.safe_load(runs), "train.recipes": {"demo": RECIPE, "binary": RECIPE},
                        "ablate.protocols": protocols, **extra})


def test_runs_load_with_their_seeds():
    p = with_runs("{busi-unet: {dataset: busi, model: unet, recipe: binary, seeds: [2, 0]}, "
                  "demo-t: {dataset: demo, model: rwkv_unet_t, recipe: demo, kwargs: {mixer: none}}}")
    assert p.train.run("busi-unet") == config.TrainRun(dataset="busi", model="unet", recipe="binary", kwargs={},
                                                       seeds=(2, 0), init=None)
    assert p.train.run("demo-t").kwargs == {"mixer": "none"} and p.train.run("demo-t").seeds == (0,)
    assert p.train.recipe("demo").augment == "light"  # from train.recipe_defaults
    with pytest.raises(ValueError, match=r"train.runs has no run 'busi-t'; runs: busi-unet, demo-t"):
        p.train.run("busi-t")


@pytest.mark.parametrize("runs,extra,message", [
    ("{a: {dataset: demo, model: unet, recipe: nope}}", {},
     r"train.runs.a.recipe 'nope' is not in train.recipes; recipes: \['binary', 'demo'\]"),
    ("{a: {dataset: kvasir_seg, model: unet, recipe: demo}}", {},
     r"train.runs.a.dataset 'kvasir_seg' is not in prepare.datasets"),
    ("{a: {dataset: demo, model: unet, recipe: demo, seeds: [0, 3]}}", {},
     r"train.runs.a.seeds must be distinct split seeds of prepare.split_seeds \[0, 1, 2\], got \[0, 3\]"),
    ("{a: {dataset: demo, model: unet, recipe: demo, seeds: [1, 1]}}", {}, r"train.runs.a.seeds must be distinct"),
    ("{a: {dataset: demo, model: unet, recipe: demo, seeds: []}}", {}, r"train.runs.a.seeds must be"),
    ("{a/b: {dataset: demo, model: unet, recipe: demo}}", {}, r"run name 'a/b' must be letters, digits"),
    ("{a.b: {dataset: demo, model: unet, recipe: demo}}", {}, r"run name 'a.b' must be"),
    ("{a: {dataset: demo, recipe: demo}}", {}, r"train.runs.a is missing required key\(s\) \['model'\]"),
    ("{}", {"ablate.split_seed": 5}, r"ablate.split_seed 5 is not in prepare.split_seeds \[0, 1, 2\]"),
])
def test_bad_runs_are_named(runs, extra, message):
    with pytest.raises(ValueError, match=message):
        with_runs(runs, **extra)


def test_overrides_and_relative_paths(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text((ROOT / "tests" / "params.yaml").read_text())
    p = config.load(f, **{"base.seed": 7, "base.data_dir": "d"})
    assert p.base.seed == 7 and p.base.data_dir == tmp_path / "d"


def test_a_variant_shares_the_run_of_its_configuration():
    ablate = committed().ablate

    def variant(**fields):
        return config.Variant(**{**ablate.variant_defaults, **fields})

    variants = {"default": variant(table="2"), "k3": variant(table="8", kwargs={"decoder_kernel": 3}),
                "k9": variant(table="10"), "k9_p30": variant(table="8"), "pre": variant(table="7", recipe={"init": "pretrain/x"}, protocol="scratch-30"),
                "big": variant(table="13", size=512), "s": variant(table="9", model="rwkv_unet_s")}
    a = dataclasses.replace(ablate, model=None, trained=("default", "k3"), variants=variants)
    # the same settings under another protocol (Table 8: pretrained-30) are another run
    assert [a.trained_as(v) for v in variants] == ["default", "k3", "default", None, None, None, None]
    # with one base model for every variant, the S row's settings are the default's
    assert dataclasses.replace(a, model="rwkv_unet_t").trained_as("s") == "default"
