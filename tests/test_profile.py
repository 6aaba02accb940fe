"""Profiles switch params.yaml between the demo and the paper's study: only their keys change, and back again
restores the file byte for byte; the paper profile gives DVC every stage of the paper's tables."""

import difflib
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rwkvlab import config
from rwkvlab.engine.runs import Configured, Variant, resolve
from rwkvlab.profile import apply_profile, main, read_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
MODELS = ["rwkv_unet_t", "rwkv_unet_s", "rwkv_unet_b", "unet", "att_unet", "unet_pp", "r50_unet", "transunet",
          "swin_unet"]
BINARY = ["busi", "cvc_clinicdb", "cvc_colondb", "kvasir_seg", "isic2017", "glas", "psvfm"]
THREE_SPLITS = {"busi", "cvc_clinicdb", "cvc_colondb", "kvasir_seg", "glas"}
TABLES_3_5 = ["synapse", "acdc", "goals", "fugc"]


def committed_params() -> bytes:
    """params.yaml as committed (git HEAD): the demo profile must restore the committed study, and a user's
    uncommitted edits to try a setting must not fail this test; the file itself outside a git checkout."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True)
    return shown.stdout if shown.returncode == 0 else (ROOT / "params.yaml").read_bytes()


def value_lines(profile: Path) -> Counter:
    """The lines a profile's values take in params.yaml, stripped: its lines less the header comments, each
    ``a.b.key: value`` line as ``key: value``."""
    lines = Counter()
    for line in profile.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, rest = line.partition(":")
            lines[line.strip() if line.startswith(" ") else f"{key.split('.')[-1]}:{rest}".strip()] += 1
    return lines


def get(tree, dotted):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.fixture
def paper(tmp_path):
    """A copy of params.yaml with the paper profile applied: (path, original text, changed keys)."""
    params = tmp_path / "params.yaml"
    params.write_bytes(committed_params())
    original = params.read_text()
    return params, original, apply_profile(params, "paper", PROFILES)


def test_both_profiles_set_the_same_keys_and_demo_is_the_committed_file():
    demo, paper = read_profile(PROFILES / "demo.yaml"), read_profile(PROFILES / "paper.yaml")
    assert set(demo.values) == set(paper.values)
    committed = yaml.safe_load(committed_params())
    assert all(get(committed, key) == value for key, value in demo.values.items())


def test_paper_changes_only_its_keys_and_demo_restores_the_file(paper):
    params, original, changed = paper
    profile = read_profile(PROFILES / "paper.yaml")
    assert changed == sorted(profile.values)  # every key differs between the two profiles
    before, after = yaml.safe_load(original), yaml.safe_load(params.read_text())
    for key, value in profile.values.items():
        assert get(after, key) == value, key
    # the lines that go are the demo profile's, the lines that come the paper profile's; all others stay in order
    removed, added = Counter(), Counter()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, original.splitlines(), params.read_text().splitlines(),
                                                       autojunk=False).get_opcodes():
        removed.update(line.strip() for line in original.splitlines()[i1:i2] if tag != "equal")
        added.update(line.strip() for line in params.read_text().splitlines()[j1:j2] if tag != "equal")
    assert removed == value_lines(PROFILES / "demo.yaml") and added == value_lines(PROFILES / "paper.yaml")
    for section in ("base", "evaluate", "report"):
        assert after[section] == before[section]
    assert {k: v for k, v in after["prepare"].items() if k != "datasets"} == \
        {k: v for k, v in before["prepare"].items() if k != "datasets"}
    assert after["train"]["recipes"] == before["train"]["recipes"] and after["erf"]["images"] == before["erf"]["images"]
    assert "# Profiles: this file holds the demo profile" in params.read_text()

    assert apply_profile(params, "paper", PROFILES) == []  # already in place
    assert apply_profile(params, "demo", PROFILES) == changed
    assert params.read_bytes() == committed_params()


def test_the_paper_profile_is_the_papers_study(paper):
    params, _, _ = paper
    p = config.load(params)
    assert p.train.recipe("fugc").consistency_weight > 0 and p.train.recipe("fugc").unlabelled == "unlabelled"
    expected = {f"{d}-{m}" for d in TABLES_3_5 + BINARY for m in MODELS}
    volumetric = {f"synapse_3d-{m}" for m in ("rwkv_unet3d_t", "unet3d", "swin_unetr3d")}  # docs §20, beyond the paper
    assert set(p.train.runs) == expected | volumetric and len(expected) == 99
    assert all(p.train.recipe(p.train.runs[r].recipe).patch_size for r in volumetric)
    for name, run in p.train.runs.items():
        # RWKV-UNet-T on Synapse trains at batch 32 (paper §4.2): its own recipe
        recipe = "synapse_t" if name == "synapse-rwkv_unet_t" else run.dataset
        # the volumetric RWKV-UNet keeps the thick CT slices in its first stage (docs §20)
        kwargs = {"strides": [[1, 2, 2], 2, 2, 2]} if name == "synapse_3d-rwkv_unet3d_t" else {}
        assert name == f"{run.dataset}-{run.model}" and run.recipe == recipe and run.kwargs == kwargs
        assert run.seeds == ((0, 1, 2) if run.dataset in THREE_SPLITS else (0,)), name
        # as in the paper, every RWKV-UNet starts from the ImageNet-pretrained encoder of its size
        expected_init = f"pretrain/{run.model.replace('unet', 'enc')}" if run.model.startswith("rwkv_unet_") else None
        assert run.init == expected_init and resolve(p, Configured(name, run.seeds[0])).recipe.init == expected_init, name
    assert (p.ablate.dataset, p.ablate.model) == ("synapse", None)
    assert {n: (x.recipe, x.pretrained) for n, x in p.ablate.protocols.items()} == {
        "scratch-100": ("ablate_synapse", False), "scratch-30": ("ablate_synapse_30", False),
        "pretrained-30": ("synapse", True)}
    # every variant has a run: its own, or the trained one of the same configuration under the same protocol
    counted_only = {v for v, x in p.ablate.variants.items() if {"ccm_width", "ccm_over"} & set(x.kwargs)}
    assert all(p.ablate.trained_as(v) is not None for v in set(p.ablate.variants) - counted_only)
    shared = {"enc_rwkv_b", "dec_k9", "glsp_default", "skips3", "ccm_rate2", "pre_none_100", "initnorm_release_post",
              "initnorm_release_post_p30"}
    assert set(p.ablate.variants) - set(p.ablate.trained) == shared | counted_only
    assert {v: p.ablate.trained_as(v) for v in shared} == {
        "enc_rwkv_b": "pre_digits", "dec_k9": "pre_digits", "skips3": "pre_digits", "ccm_rate2": "pre_digits",
        "glsp_default": "attn_spatial_mix", "pre_none_100": "attn_spatial_mix",
        "initnorm_release_post": "attn_spatial_mix", "initnorm_release_post_p30": "pre_digits"}
    assert (p.pretrain.models, p.pretrain.recipe, p.erf.n) == (("rwkv_enc_t", "rwkv_enc_s", "rwkv_enc_b"), "imagenet", 50)
    # Table 7's pretrained row starts from the encoder a pretrain stage writes, of its own base model
    assert resolve(p, Variant("pre_digits")).init.parent.name == "rwkv_enc_b"
    # Table 13's row trains and tests at 512 x 512 on Synapse prepared at that size
    assert p.ablate.dataset_of("b_512") == "synapse_512" and p.prepare.image_size["synapse_512"] == (512, 512)
    assert p.prepare.datasets["synapse_512"] == p.prepare.datasets["synapse"]


def test_dvc_lists_every_stage_of_the_paper(paper, tmp_path):
    params, _, _ = paper
    shutil.copyfile(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run([*dvc, "stage", "list"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    runs = {f"{d}-{m}" for d in TABLES_3_5 + BINARY for m in MODELS}
    assert {f"train@{r}" for r in runs} | {f"evaluate@{r}" for r in runs} <= names
    trained = yaml.safe_load(params.read_text())["ablate"]["trained"]
    assert {f"ablate@{v}" for v in trained} <= names
    assert {"pretrain@rwkv_enc_t", "pretrain@rwkv_enc_s", "pretrain@rwkv_enc_b", "ablation_tables", "report",
            "erf"} <= names
    prepared = TABLES_3_5 + BINARY + ["synapse_512"]
    assert {f"prepare@{d}" for d in prepared} <= names

    # The benchmarks' raw folders exist (empty) in the repository: a dry run of their prepare stages passes.
    for folder in ("rwkvlab", "notebooks", "data/raw"):
        (tmp_path / folder).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / folder).symlink_to(ROOT / folder)
    dry = subprocess.run([*dvc, "repro", "--dry", "--single-item", *(f"prepare@{d}" for d in prepared)],
                         cwd=tmp_path, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("Running stage 'prepare@") == len(prepared)


def test_bad_profiles_are_named(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_bytes(committed_params())
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "a.yaml").write_text("erf.n: 3\nablate.dataset: demo\n")
    (profiles / "b.yaml").write_text("erf.n: 4\n")
    (profiles / "c.yaml").write_text("erf.nn: 4\nablate.dataset: demo\n")
    with pytest.raises(ValueError, match=r"'a' and 'b' .* must set the same keys .*only in a: \['ablate.dataset'\]"):
        apply_profile(params, "a", profiles)
    (profiles / "b.yaml").unlink()
    with pytest.raises(ValueError, match=r"profiles 'a' and 'c'"):
        apply_profile(params, "a", profiles)
    (profiles / "a.yaml").write_text("erf.nn: 3\nablate.dataset: demo\n")
    with pytest.raises(ValueError, match=r"params.yaml: has no key 'erf.nn'"):
        apply_profile(params, "a", profiles)
    assert params.read_bytes() == committed_params()
    assert main(["nope", "--params", str(params), "--profiles", str(profiles)]) == 2
    assert capsys.readouterr().err.startswith("error: no profile 'nope' in ")


def test_a_rewrite_that_does_not_read_back_leaves_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("erf: {n: 8, stage: -1}   # a flow mapping: its keys share one line\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "a.yaml").write_text("erf.n: 3\n")
    with pytest.raises(ValueError, match=r"params.yaml rewritten with profile a: not valid YAML"):
        apply_profile(params, "a")
    assert params.read_text() == "erf: {n: 8, stage: -1}   # a flow mapping: its keys share one line\n"
