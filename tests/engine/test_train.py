"""Training: checkpoints every epoch, resuming (also after a kill mid-epoch) equals an uninterrupted run."""

import numpy as np
import pytest
import torch

from rwkvlab.config import Recipe
from rwkvlab.data import Prepared
from rwkvlab.engine import train as train_mod
from rwkvlab.engine.inference import load_trained
from rwkvlab.engine.train import fit

RECIPE = Recipe(epochs=3, batch_size=4, lr=1e-3, min_lr=1e-5, weight_decay=1e-4, ce_weight=0.5, dice_weight=1.0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, h, w = 10, 32, 32
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        r, c = rng.integers(4, 20, 2)
        masks[i, r : r + 10, c : c + 10] = 1
    images = (rng.random((n, h, w, 3)) * 80 + masks[..., None] * 120).astype(np.uint8)
    return Prepared(dataset="toy", description="toy squares", class_names=("background", "fg"), images=images,
                    masks=masks, ids=np.array([f"c{i}" for i in range(n)]), labelled=np.ones(n, bool),
                    sizes=np.full((n, 2), 32), splits={"train": np.arange(6), "val": np.arange(6, 8),
                                                       "test": np.arange(8, 10)})


def run(data, run_dir, **kw):
    return fit("rwkv_unet_t", data, RECIPE, run_dir, seed=1, device=torch.device("cpu"), **kw)


def weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=False)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_resume_equals_uninterrupted(data, tmp_path):
    full = run(data, tmp_path / "full", history_csv=tmp_path / "full.csv")
    assert list(full["epoch"]) == [1, 2, 3]
    assert (tmp_path / "full" / "best.pt").is_file()
    assert list((tmp_path / "full").iterdir()) != [] and not list((tmp_path / "full").glob(".*"))

    part = tmp_path / "part"
    assert len(run(data, part, stop_after=1)) == 1
    resumed = run(data, part)
    assert_same_weights(weights(tmp_path / "full"), weights(part))
    np.testing.assert_allclose(resumed["train_loss"], full["train_loss"], rtol=0, atol=0)


def test_kill_mid_epoch_loses_no_completed_epoch(data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = train_mod.seg_loss

    def dying_loss(*a, **k):
        fn = real_loss(*a, **k)

        def wrapped(logits, labels):
            calls["n"] += 1
            if calls["n"] == 3:  # second batch of epoch 2 (two batches per epoch)
                raise KeyboardInterrupt
            return fn(logits, labels)

        return wrapped

    monkeypatch.setattr(train_mod, "seg_loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        run(data, tmp_path / "killed")
    state = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    assert state["epoch"] == 0 and len(state["history"]) == 1  # epoch 1 kept
    monkeypatch.setattr(train_mod, "seg_loss", real_loss)
    run(data, tmp_path / "killed")
    run(data, tmp_path / "ref")
    assert_same_weights(weights(tmp_path / "ref"), weights(tmp_path / "killed"))


def test_changed_recipe_starts_fresh(data, tmp_path):
    run(data, tmp_path / "r", stop_after=1)
    other = Recipe(**{**RECIPE.__dict__, "lr": 5e-4, "epochs": 1})
    h = fit("rwkv_unet_t", data, other, tmp_path / "r", seed=1, device=torch.device("cpu"))
    assert list(h["epoch"]) == [1]
    model, state = load_trained(tmp_path / "r", "last", torch.device("cpu"))
    assert state["config"]["recipe"]["lr"] == 5e-4


def test_training_learns(data, tmp_path):
    recipe = Recipe(**{**RECIPE.__dict__, "epochs": 8, "augment": "none"})
    h = fit("rwkv_unet_t", data, recipe, tmp_path / "l", seed=0, device=torch.device("cpu"))
    assert h["train_loss"].iloc[-1] < 0.8 * h["train_loss"].iloc[0]  # a frozen model stays near 1.0


def test_precise_bn_sets_running_stats_to_training_set_statistics(data, tmp_path):
    recipe = Recipe(**{**RECIPE.__dict__, "epochs": 1, "batch_size": 8, "precise_bn": True})  # one batch of 6
    fit("rwkv_unet_t", data, recipe, tmp_path / "p", seed=0, device=torch.device("cpu"))
    model, _ = load_trained(tmp_path / "p", "last", torch.device("cpu"))
    bn = model.encoder.stem.expand[1]
    seen = []
    bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.from_numpy(data.images[data.splits["train"]]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(bn.running_mean, seen[0].mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, seen[0].var((0, 2, 3)), rtol=1e-4, atol=1e-5)
