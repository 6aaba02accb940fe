"""``python -m rwkvlab.evaluate``: any checkpoint, a converted release network included, scored on a prepared
dataset with the study's protocol, written only under ``--out``."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import rwkvlab
from rwkvlab import config, paths
from rwkvlab.convert import convert
from rwkvlab.data import load_prepared
from rwkvlab.data.cache import prepare
from rwkvlab.data.loader import to_tensor
from rwkvlab.data.readers import get_reader
from rwkvlab.evaluate import main
from fixtures.release import release_state

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The embedded demo set prepared at 64 x 64 under a temporary data folder."""
    data_dir = tmp_path_factory.mktemp("data")
    p = config.load(ROOT / "tests" / "params.yaml", **{"base.data_dir": str(data_dir)})
    prepare(get_reader("demo", ROOT / "data" / "demo"), (64, 64), paths.cache(p, "demo"), paths.splits_dir(p, "demo"),
            [0])
    return data_dir, p


def test_a_converted_release_network_is_scored_with_the_protocol(prepared, tmp_path, capsys):
    data_dir, p = prepared
    state = release_state("t")
    state["final_conv.weight"], state["final_conv.bias"] = torch.randn(2, 24, 1, 1) * 0.3, torch.tensor([0.2, -0.2])
    torch.save(state, tmp_path / "busi_tiny.pth")
    convert(tmp_path / "busi_tiny.pth", tmp_path / "t.pt", "rwkv_unet_t", img_size=(64, 64))
    out = tmp_path / "eval"
    before = sorted(data_dir.rglob("*"))
    assert main(["--checkpoint", str(tmp_path / "t.pt"), "--dataset", "demo", "--out", str(out),
                 "--set", f"base.data_dir={data_dir}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "metrics.json").read_text()) and 0 <= printed["dsc"] <= 100
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_case.csv", "predictions.npz"]
    assert sorted(data_dir.rglob("*")) == before  # nothing beside --out
    data = load_prepared(paths.cache(p, "demo"), paths.split_file(p, "demo", 0))
    test = data.splits["test"]
    with torch.no_grad():
        expected = rwkvlab.load_model(tmp_path / "t.pt")(to_tensor(data.images[test])).argmax(1).numpy()
    preds = np.load(out / "predictions.npz")
    for case, labels in zip(data.ids[test], expected):
        np.testing.assert_array_equal(preds[case], labels)


def test_a_checkpoint_that_does_not_fit_the_data_is_named(prepared, tmp_path, capsys):
    data_dir, _ = prepared
    torch.save(release_state("t"), tmp_path / "one_class.pth")
    convert(tmp_path / "one_class.pth", tmp_path / "t.pt", "rwkv_unet_t")
    args = ["--dataset", "demo", "--out", str(tmp_path / "eval"), "--set", f"base.data_dir={data_dir}"]
    assert main(["--checkpoint", str(tmp_path / "t.pt"), *args]) == 2
    assert f"{tmp_path / 't.pt'}: rwkv_unet_t takes 3 channel(s) and 1 classes; demo has 3 and 2" in \
        capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("junk")
    assert main(["--checkpoint", str(tmp_path / "junk.pt"), *args]) == 2
    assert f"{tmp_path / 'junk.pt'}: not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
