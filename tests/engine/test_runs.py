"""Configured and ad-hoc runs resolve from params.yaml alone, per split seed; a run's seeds are summarised as the
paper reports its 8:1:1 sets (mean and sample std)."""

import dataclasses
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from rwkvlab import config, paths
from rwkvlab.engine import runs

ROOT = Path(__file__).resolve().parents[2]
RUNS = {
    "demo-t": {"dataset": "demo", "model": "rwkv_unet_t", "recipe": "demo", "seeds": [0, 1, 2]},
    "demo-swin": {"dataset": "demo", "model": "swin_unet", "kwargs": {"feature_size": 24}, "recipe": "ablate_demo"},
    "demo-rwkv_unet_t": {"dataset": "demo", "model": "rwkv_unet_t", "recipe": "demo"},
}


@pytest.fixture
def p(tmp_path):
    return config.load(ROOT / "tests" / "params.yaml", **{"base.reports_dir": str(tmp_path / "reports"),
                                                "base.checkpoints_dir": str(tmp_path / "ck"), "train.runs": RUNS})


def test_configured_run_per_seed(p, tmp_path):
    run = runs.resolve(p, runs.Configured("demo-t", 2))
    assert (run.name, run.dataset, run.model, run.split_seed) == ("demo-t/seed2", "demo", "rwkv_unet_t", 2)
    assert run.recipe == p.train.recipes["demo"] and run.model_kwargs == {} and run.init is None
    assert run.checkpoints == tmp_path / "ck" / "train" / "demo-t" / "seed2"
    assert run.history == tmp_path / "reports" / "train" / "demo-t" / "seed2" / "history.csv"
    assert run.evaluation == tmp_path / "reports" / "evaluate" / "demo-t" / "seeds" / "seed2"
    swin = runs.resolve(p, runs.Configured("demo-swin", 0))
    assert swin.model_kwargs == {"feature_size": 24} and swin.recipe == p.train.recipes["ablate_demo"]
    with pytest.raises(ValueError, match=r"train.runs.demo-swin trains on split seeds \[0\], not on seed 1"):
        runs.resolve(p, runs.Configured("demo-swin", 1))
    with pytest.raises(ValueError, match="train.runs has no run 'demo-b'; runs: demo-t, demo-swin"):
        runs.resolve(p, runs.Configured("demo-b", 0))


def test_a_runs_init_replaces_its_recipes(tmp_path):
    with_init = {**RUNS, "demo-t": {**RUNS["demo-t"], "init": "pretrain/rwkv_enc_t"}}
    p = config.load(ROOT / "tests" / "params.yaml", **{"base.checkpoints_dir": str(tmp_path / "ck"), "train.runs": with_init})
    run = runs.resolve(p, runs.Configured("demo-t", 1))
    assert run.init == tmp_path / "ck" / "pretrain" / "rwkv_enc_t" / "encoder.pt"
    assert run.recipe == dataclasses.replace(p.train.recipes["demo"], init="pretrain/rwkv_enc_t")
    assert runs.resolve(p, runs.Configured("demo-swin", 0)).init is None  # the same recipe, other runs: untouched
    # an ad-hoc run of the same dataset, model and recipe but without the init is another run
    with pytest.raises(ValueError, match="'demo-t' is also a configured run"):
        runs.resolve(config.load(ROOT / "tests" / "params.yaml", **{"train.runs": {"demo-t": with_init["demo-t"]}}), runs.AdHoc("demo", "t"))


@pytest.mark.parametrize("override,where", [
    ({"train.runs": {"x": {"dataset": "demo", "model": "rwkv_unet_s", "recipe": "demo", "init": "pretrain/rwkv_enc_s"}}},
     "train.runs.x.init"),
    ({"train.recipes.demo.init": "pretrain/rwkv_enc_b"}, "train.recipes.demo.init"),
    ({"ablate.variants.pre_digits.recipe": {"init": "pretrain/rwkv_enc_b"}}, "ablate.variants.pre_digits.recipe.init"),
])
def test_an_init_must_name_a_pretrained_encoder(override, where):
    with pytest.raises(ValueError, match=rf"{where} is 'pretrain/rwkv_enc_.'; it must be pretrain/<model> with "
                                         rf"<model> one of pretrain.models \['rwkv_enc_t'\]"):
        config.load(ROOT / "tests" / "params.yaml", **override)


def test_an_init_may_name_a_checkpoint_file_relative_to_the_params_file(tmp_path):
    p = config.load(ROOT / "tests" / "params.yaml", **{"train.recipes.demo.init": "data/release/rwkv_enc_t.pt"})
    assert runs.resolve(p, runs.AdHoc("demo", "rwkv_unet_t")).init == p.file.parent / "data/release/rwkv_enc_t.pt"
    with pytest.raises(ValueError, match=r"train.recipes.demo.init is 'enc_t'; it must be pretrain/<model> .* a "
                                         r"checkpoint file \(.pt"):
        config.load(ROOT / "tests" / "params.yaml", **{"train.recipes.demo.init": "enc_t"})


def test_train_init_replaces_the_runs_init(monkeypatch, tmp_path):
    from rwkvlab import train

    seen = []
    monkeypatch.setattr(train, "launch", lambda p, *a, **k: seen.append(p.overrides))
    monkeypatch.chdir(tmp_path)  # a file named on the command line is relative to the shell's folder
    params = ["--params", str(ROOT / "tests" / "params.yaml")]
    assert train.main(["--dataset", "demo", "--model", "rwkv_unet_t", "--init", "enc.pt", "--no-evaluate",
                       *params]) == 0
    assert train.main(["--run", "demo-rwkv_unet_t", "--init", "pretrain/rwkv_enc_t", "--no-evaluate", *params]) == 0
    assert seen == [{"train.recipes.demo.init": str(tmp_path / "enc.pt")},
                    {"train.runs.demo-rwkv_unet_t.init": "pretrain/rwkv_enc_t"}]


def test_each_split_seed_trains_with_its_own_seed(p, monkeypatch):
    seen = []
    monkeypatch.setattr("rwkvlab.engine.train.fit", lambda *args, seed, **kwargs: seen.append(seed))
    for split in (0, 2):
        runs.train(p, runs.resolve(p, runs.Configured("demo-t", split)), torch.device("cpu"), data=object())
    assert seen == [p.base.seed, p.base.seed + 2]


def test_load_data_reads_the_runs_split(p, monkeypatch):
    monkeypatch.setattr(runs, "load_prepared", lambda cache, split: (cache, split))
    assert runs.load_data(p, runs.resolve(p, runs.Configured("demo-t", 1))) == (
        p.base.data_dir / "prepared" / "demo" / "cache.h5", p.base.data_dir / "splits" / "demo" / "seed1.json")
    ablation = runs.load_data(p, runs.resolve(config.load(ROOT / "tests" / "params.yaml", **{"ablate.split_seed": 2}), runs.Variant("attn_none")))
    assert ablation[1].name == "seed2.json"


def test_ad_hoc_runs(p, tmp_path):
    run = runs.resolve(p, runs.AdHoc("demo", "unet", seed=1))
    assert run.name == "demo-unet/seed1" and run.recipe == p.train.recipes["demo"] and run.split_seed == 1
    assert run.checkpoints == tmp_path / "ck" / "train" / "demo-unet" / "seed1"
    other = runs.resolve(p, runs.AdHoc("demo", "unet", recipe="ablate_demo"))
    assert other.recipe == p.train.recipes["ablate_demo"] and other.split_seed == 0
    variant = runs.resolve(p, runs.AdHoc("demo", "rwkv_unet_t", variant="pre_digits"))
    assert variant.name == "demo-rwkv_unet_t-pre_digits/seed0" and variant.model_kwargs == {}
    assert variant.init == tmp_path / "ck" / "pretrain" / "rwkv_enc_t" / "encoder.pt"
    # --variant trains under the variant's protocol recipe (Table 7's pretrained-30), as its ablation stage does
    protocol = p.ablate.protocols[p.ablate.protocol_of("pre_digits")]
    assert protocol.recipe != "demo" and variant.recipe == runs.resolve(p, runs.Variant("pre_digits")).recipe
    assert variant.recipe.epochs == p.train.recipes[protocol.recipe].epochs
    # the same settings as a configured run: the same run, sharing its folder
    configured = runs.resolve(p, runs.Configured("demo-rwkv_unet_t", 0))
    assert runs.resolve(p, runs.AdHoc("demo", "rwkv_unet_t")).checkpoints == configured.checkpoints
    with pytest.raises(ValueError, match=r"'demo-rwkv_unet_t' is also a configured run .* --run demo-rwkv_unet_t"):
        runs.resolve(p, runs.AdHoc("demo", "rwkv_unet_t", recipe="ablate_demo"))
    with pytest.raises(ValueError, match=r"split seed 7 is not one of prepare.split_seeds \[0, 1, 2\]"):
        runs.resolve(p, runs.AdHoc("demo", "unet", seed=7))
    with pytest.raises(ValueError, match="train.recipes has no recipe 'busi_typo'"):
        runs.resolve(p, runs.AdHoc("demo", "unet", recipe="busi_typo"))


def write_seed(p, name, seed, metrics):
    out = paths.eval_dir(p, name, seed)
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(metrics))


def test_summarize_seeds_is_mean_and_sample_std(p):
    rng = np.random.default_rng(3)
    per_seed = {s: {"dsc": float(rng.uniform(60, 90)), "hd95": float(rng.uniform(2, 30)),
                    "dsc_lesion": float(rng.uniform(60, 90))} for s in (0, 1, 2)}
    for s, m in per_seed.items():
        write_seed(p, "demo-t", s, m)
    summary = runs.summarize_seeds(p, "demo-t")
    for metric in ("dsc", "hd95", "dsc_lesion"):
        values = [per_seed[s][metric] for s in (0, 1, 2)]
        assert summary["mean"][metric] == pytest.approx(statistics.fmean(values), rel=1e-12)
        assert summary["std"][metric] == pytest.approx(statistics.stdev(values), rel=1e-12)  # n - 1
    assert summary["per_seed"] == {str(s): m for s, m in per_seed.items()}
    assert {k: summary[k] for k in ("dataset", "model", "kwargs", "recipe", "seeds", "n_seeds")} == {
        "dataset": "demo", "model": "rwkv_unet_t", "kwargs": {}, "recipe": "demo", "seeds": [0, 1, 2], "n_seeds": 3}
    assert json.loads(paths.summary_file(p, "demo-t").read_text()) == summary == runs.read_summary(p, "demo-t")
    assert paths.summary_file(p, "demo-t") == p.base.reports_dir / "evaluate" / "demo-t" / "metrics.json"


def test_one_seed_has_std_zero(p):
    write_seed(p, "demo-swin", 0, {"dsc": 71.5, "hd95": 9.0})
    summary = runs.summarize_seeds(p, "demo-swin")
    assert summary["mean"] == {"dsc": 71.5, "hd95": 9.0} and summary["std"] == {"dsc": 0.0, "hd95": 0.0}
    assert summary["kwargs"] == {"feature_size": 24} and summary["n_seeds"] == 1


def test_summarize_seeds_names_what_is_missing(p):
    write_seed(p, "demo-t", 0, {"dsc": 70.0, "hd95": 9.0})
    write_seed(p, "demo-t", 2, {"dsc": 70.0, "hd95": 9.0})
    with pytest.raises(FileNotFoundError, match=r"seeds/seed1/metrics.json: seed 1 of run 'demo-t' is not evaluated"):
        runs.summarize_seeds(p, "demo-t")
    write_seed(p, "demo-t", 1, {"dsc": 70.0})
    with pytest.raises(ValueError, match=r"seed1/metrics.json has metrics \['dsc'\], seed 0 has \['dsc', 'hd95'\]"):
        runs.summarize_seeds(p, "demo-t")
    assert not paths.summary_file(p, "demo-t").exists()
    with pytest.raises(FileNotFoundError, match="run 'demo-t' has no summary; run its evaluate stage"):
        runs.read_summary(p, "demo-t")


def test_a_setting_resolves_as_the_variant_with_its_settings(p, tmp_path):
    v = p.ablate.variant("attn_mhsa")
    setting = runs.resolve(p, runs.Setting("mhsa", dict(v.kwargs), p.ablate.protocol_of("attn_mhsa")))
    variant = runs.resolve(p, runs.Variant("attn_mhsa"))
    assert (setting.model, setting.model_kwargs, setting.recipe, setting.dataset, setting.split_seed) == (
        variant.model, variant.model_kwargs, variant.recipe, variant.dataset, variant.split_seed)
    assert setting.checkpoints == paths.adhoc_dir(p, "explore") / "mhsa" != variant.checkpoints
    shorter = runs.resolve(p, runs.Setting("short", {}, recipe_fields={"epochs": 1}))
    assert shorter.recipe.epochs == 1
    with pytest.raises(ValueError, match=r"try_setting has unknown recipe field\(s\) \['epoch'\]"):
        runs.resolve(p, runs.Setting("typo", {}, recipe_fields={"epoch": 1}))
    with pytest.raises(ValueError, match="protocol 'nope' is not one of ablate.protocols"):
        runs.resolve(p, runs.Setting("x", {}, protocol="nope"))
    with pytest.raises(TypeError, match="Configured, Variant, AdHoc or Setting"):
        runs.resolve(p, "demo-t")
