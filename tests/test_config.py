"""params.yaml -> typed config: the committed file loads, mistakes are named."""

from pathlib import Path

import pytest

from rwkvlab import config

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_load():
    p = config.load(ROOT / "params.yaml")
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in p.prepare.image_size.values())
    assert set(p.prepare.image_size) == set(p.prepare.datasets)
    assert p.base.data_dir == ROOT / "data"
    assert all(p.train.recipe(d).epochs > 0 for d in p.train.datasets)
    assert set(p.train.datasets) <= set(p.prepare.datasets)


def test_every_prepared_dataset_has_a_reader():
    from rwkvlab.data import READERS, get_reader

    get_reader("demo", ROOT)  # registers the readers
    assert set(config.load(ROOT / "params.yaml").prepare.datasets) <= set(READERS)


@pytest.mark.parametrize(
    "text,message",
    [
        ("train: {epochz: 3}", r"unknown key\(s\) \['epochz'\] in .*\.train"),
        ("prepare: {image_size: {demo: [96]}}", r"prepare.image_size.demo must have 2 items"),
        ("base: {seed: 'zero'}", r"base.seed must be int"),
        ("train: {recipes: {demo: {epochs: 1}}}", r"train.recipes.demo is missing required key\(s\) \['batch_size'"),
        ("train: {recipes: {demo: {epochs: 1, batch_size: 1, lr: 1, min_lr: 0, weight_decay: 0, ce_weight: 1, "
         "dice_weight: 1, test_checkpoint: first}}}", r"test_checkpoint must be one of"),
    ],
)
def test_bad_params_are_named(tmp_path, text, message):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        config.load(f)


def test_missing_recipe_is_named(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("train: {datasets: [busi]}")
    with pytest.raises(ValueError, match="no recipe for dataset 'busi'"):
        config.load(f).train.recipe("busi")


def test_overrides_and_relative_paths(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("base: {data_dir: d}")
    p = config.load(f, **{"base.seed": 7})
    assert p.base.seed == 7 and p.base.data_dir == tmp_path / "d"
