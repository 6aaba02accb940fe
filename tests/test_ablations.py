"""Ablation runs resolve from params.yaml alone; the tables quote the paper's rows for each variant."""

import dataclasses
import re
from pathlib import Path

import pandas as pd
import pytest

from rwkvlab import config
from rwkvlab.engine.runs import AdHoc, Variant, resolve, resolve_init
from rwkvlab.report.ablations import (ablation_setting, ablation_tables, bubble_chart, paper_row,
                                      write_ablation_tables)

ROOT = Path(__file__).resolve().parents[1]
P = config.load(ROOT / "tests" / "params.yaml")


def test_ablation_run_applies_the_variant():
    run = resolve(P, Variant("pre_digits"))
    assert run.model == P.ablate.model and run.dataset == P.ablate.dataset
    # Table 7's "with, 30": the pretrained-30 protocol, from the encoder of the base model's size
    assert P.ablate.protocol_of("pre_digits") == "pretrained-30"
    assert run.recipe.epochs == P.train.recipes[P.ablate.protocols["pretrained-30"].recipe].epochs
    assert run.init == P.base.checkpoints_dir / "pretrain" / "rwkv_enc_t" / "encoder.pt"
    assert run.checkpoints == P.base.checkpoints_dir / "ablate" / "pre_digits"
    mhsa = resolve(P, Variant("attn_mhsa"))
    assert mhsa.model_kwargs == {"mixer": "mhsa"} and mhsa.init is None
    adhoc = resolve(P, AdHoc("demo", "rwkv_unet_t", variant="attn_mhsa"))
    assert adhoc.checkpoints.parent.name == "demo-rwkv_unet_t-attn_mhsa"


def test_a_variant_can_train_on_its_own_dataset(tmp_path):
    # Table 13: Synapse prepared at 512 x 512, beside the 224 x 224 of the other variants
    datasets = {**{k: str(v) for k, v in P.prepare.datasets.items()}, "synapse_512": str(tmp_path)}
    with_512 = {"prepare.datasets": datasets, "ablate.trained": ["attn_spatial_mix", "b_512"]}
    p = config.load(ROOT / "tests" / "params.yaml", **with_512)
    run = resolve(p, Variant("b_512"))
    assert (run.dataset, run.model_kwargs) == ("synapse_512", {}) and p.prepare.image_size["synapse_512"] == (512, 512)
    assert resolve(p, Variant("attn_spatial_mix")).dataset == P.ablate.dataset
    assert p.ablate.trained_as("b_512") == "b_512"
    setting = ablation_setting(p.ablate)
    assert "on their own dataset: b_512 on synapse_512)" in setting and "pre_none_100 = attn_spatial_mix" in setting
    assert "own dataset" not in ablation_setting(P.ablate)
    with pytest.raises(ValueError, match=r"ablate.variants.b_512.dataset 'synapse_512' \(trained variant b_512\) "
                                         r"is not in prepare.datasets"):
        config.load(ROOT / "tests" / "params.yaml", **{"ablate.trained": ["b_512"]})


def test_paper_base_when_no_demo_model():
    p = config.load(ROOT / "tests" / "params.yaml", **{"ablate.model": None})
    assert resolve(p, Variant("s_shallow_attn")).model == "rwkv_unet_s"


@pytest.mark.parametrize("override,match", [
    ({"ablate.variants.attn_mhsa.recipe": {"epochs_typo": 3}}, r"unknown recipe field\(s\) \['epochs_typo'\]"),
    ({"ablate.variants.attn_mhsa.recipe": {"init": "imagenet"}}, "recipe.init is 'imagenet'; it must be pretrain/<model>"),
])
def test_bad_variant_settings(override, match):
    with pytest.raises(ValueError, match=match):
        resolve(config.load(ROOT / "tests" / "params.yaml", **override), Variant("attn_mhsa"))


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown ablation variant 'attn_lstm'.*attn_mhsa"):
        resolve(P, Variant("attn_lstm"))
    assert resolve_init(P, None) is None


def test_paper_rows():
    assert paper_row("2", "Bi-Mamba") == {"dsc": 78.13, "hd95": 29.10, "flops_g": 14.53}
    assert paper_row("11", "1,with") == {"dsc": 83.19, "hd95": 10.37, "flops_g": 10.96}
    assert paper_row("7", "with,30") == {"dsc": 84.29, "hd95": 8.85, "flops_g": None}
    assert paper_row("13", "RWKV-UNet (ours)")["flops_g"] == 58.05
    with pytest.raises(ValueError, match="has no row 'Bi-Mambo'"):
        paper_row("2", "Bi-Mambo")
    assert paper_row("8", "3", "acdc") == {"dsc": 92.07, "hd95": None, "flops_g": 10.97}
    for name, v in P.ablate.variants.items():  # every row named in params.yaml exists
        paper_row(v.table, v.row, v.dataset)


def test_tables_put_ours_beside_the_paper(tmp_path):
    variants = {k: P.ablate.variants[k] for k in ("attn_spatial_mix", "attn_none", "attn_bimamba", "skips1", "ccm_rate3",
                                                  "dec_k3_acdc")}
    complexity = pd.DataFrame({"variant": list(variants), "params_m": [17.1, 3.1, 26.9, 16.9, 17.2, 17.0],
                               "macs_g": [11.126, 4.5, 14.52, 9.59, 11.7, 10.9]})
    ablate = dataclasses.replace(P.ablate, variants=variants)
    tables = ablation_tables(ablate, complexity, {"attn_none": {"dsc": 70.0, "hd95": 12.345}})
    assert list(tables) == ["2", "8", "11", "12"]
    assert tables["8"].iloc[0][["dataset", "paper_dsc", "protocol"]].tolist() == ["acdc", 92.07, "pretrained-30"]
    assert set(tables["2"]["protocol"]) == {"scratch-100"} and set(tables["11"]["protocol"]) == {"pretrained-30"}
    t2 = tables["2"].set_index("variant")
    assert t2.loc["attn_none", "dsc"] == 70.0 and t2.loc["attn_none", "hd95"] == 12.35
    assert pd.isna(t2.loc["attn_bimamba", "dsc"]) and t2.loc["attn_bimamba", "paper_dsc"] == 78.13
    assert t2.loc["attn_bimamba", "rel_diff_%"] == pytest.approx(100 * (14.52 / 14.53 - 1), abs=0.01)
    assert tables["11"].iloc[0]["paper_flops_g"] == 10.96
    write_ablation_tables(tables, tmp_path, {"11": "CCM note"}, "demo setting")
    text = (tmp_path / "table11.md").read_text()
    assert text.startswith("# Table 11") and "CCM note" in text and "demo setting" in text
    assert (tmp_path / "table2.csv").read_text().startswith("variant,paper_row,protocol,dataset,dsc,hd95")
    bubble_chart(tables, "test")


# The protocol column of rwkvlab/report/paper/README.md: how the paper trained each ablation table.
PAPER_PROTOCOLS = {"2": "scratch-100", "6": "pretrained-30", "8": "pretrained-30", "9": "scratch-100",
                   "10": "scratch-100", "11": "pretrained-30", "12": "pretrained-30", "13": "pretrained-30"}
TABLE7 = {"without,30": "scratch-30", "without,100": "scratch-100", "with,30": "pretrained-30"}


def _paper_profile(tmp_path):
    from rwkvlab.profile import apply_profile

    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "tests" / "params.yaml").read_text())
    apply_profile(params, "paper", ROOT / "profiles")
    return config.load(params)


def test_paper_profile_trains_each_table_under_the_papers_protocol(tmp_path):
    readme = (ROOT / "rwkvlab/report/paper/README.md").read_text()
    for table, protocol in PAPER_PROTOCOLS.items():  # the README states what this test checks
        assert re.search(rf"\| Table {table} \|.*\| {protocol} \|", readme), table
    p = _paper_profile(tmp_path)
    for name, v in p.ablate.variants.items():
        if v.table == "14":  # beyond the paper: each row names its protocol
            expected = "pretrained-30" if name.endswith("_p30") else "scratch-100"
        else:
            expected = TABLE7[v.row] if v.table == "7" else PAPER_PROTOCOLS[v.table]
        assert p.ablate.protocol_of(name) == expected, name
        if name not in p.ablate.trained and p.ablate.trained_as(name) is None:
            continue
        run = resolve(p, Variant(p.ablate.trained_as(name)))
        epochs = {"scratch-100": 100, "scratch-30": 30, "pretrained-30": 30}[expected]
        assert run.recipe.epochs == epochs, name
        pretrained = expected == "pretrained-30" and v.kwargs.get("encoder", "rwkv") == "rwkv"
        assert (run.init is not None) == pretrained, name
        if pretrained:
            assert run.init.parent.name == p.ablate.base_model(name).replace("rwkv_unet_", "rwkv_enc_")
    # every variant of the paper's tables is trained, or shares the run of a trained one under its protocol
    # every row of the paper is trained, or shares the run of a trained one under its protocol (rows beyond the
    # paper's, e.g. Table 6's other CCM rule, are counted only)
    beyond = {"ccm_width", "ccm_over"}  # switches of rows the paper does not have
    untrained = [v for v, x in p.ablate.variants.items()
                 if x.row and not beyond & set(x.kwargs) and p.ablate.trained_as(v) is None]
    assert not untrained, untrained
    assert p.train.recipe(p.train.run("synapse-rwkv_unet_t").recipe).batch_size == 32
    assert p.ablate.trained_as("dec_k9") == p.ablate.trained_as("skips3") == "pre_digits"
    assert p.ablate.trained_as("pre_none_100") == "attn_spatial_mix"
