"""Semi-supervised training (FUGC, docs §6): the consistency term pulls the two views' predictions together, the
batched consistency equals the per-image one, the ramp-up, the labelled/unlabelled split and the unlabelled
order (the same global batches for every number of ranks), resuming, and the recipe's errors."""

import math
import os
import socket
from copy import deepcopy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from rwkvlab.config import recipe_with_defaults
from rwkvlab.data.augment import TwoViews, batch_consistency_loss, consistency_loss
from rwkvlab.engine import train as train_mod
from rwkvlab.engine.losses import seg_loss
from rwkvlab.engine.train import (build_optimizer, check_recipe, consistency_ramp, fit, semisup_step,
                                  unlabelled_order, unlabelled_pool)
from rwkvlab.models import create_model

CPU = torch.device("cpu")
SMALL = {"features": (4, 4, 8, 8, 16, 4)}  # a MONAI BasicUNet that steps in milliseconds
SEMI = recipe_with_defaults(epochs=2, batch_size=2, lr=1e-3, min_lr=1e-5, weight_decay=1e-4, ce_weight=0.5, dice_weight=1.0,
              augment="none", consistency_weight=0.5, consistency_rampup=2, unlabelled_fraction=0.5)


@pytest.fixture
def fugc_like(data):
    """The toy set with its test items as a split of unlabelled images, as the FUGC reader writes it."""
    return replace(data, splits={**data.splits, "unlabelled": data.splits["test"]})


def views_of(data, index, seed):
    """A collated batch of two views of ``data.images[index]``, as the training loop makes it."""
    return next(iter(DataLoader(train_mod._Views(data, np.asarray(index), TwoViews(seed)), batch_size=len(index))))


def test_the_consistency_term_pulls_the_two_views_together(data, one_thread):
    torch.manual_seed(0)
    init = create_model("unet", in_chans=3, num_classes=2, **SMALL)
    recipe = replace(SEMI, lr=1e-2, ce_weight=0.0, dice_weight=0.0)  # the consistency term alone
    pool = data.splits["train"][:4]
    held = views_of(data, pool, seed=99)  # measured on views never trained on

    def mse(model):
        with torch.no_grad():  # train mode: BatchNorm on the batch, as in training
            logits = model(torch.cat([held["view1"], held["view2"]]))
        return batch_consistency_loss(logits[:4], logits[4:], held["geom1"], held["geom2"]).item()

    images = torch.from_numpy(data.images[data.splits["train"][4:6]]).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(data.masks[data.splits["train"][4:6]])[:, None].long()
    after = {}
    for weight in (0.0, 1.0):
        model = deepcopy(init).train()
        opt = build_optimizer(model, recipe)
        for step in range(12):
            v = views_of(data, pool, seed=step)
            _, cons = semisup_step(model, opt, seg_loss(0.0, 0.0), images, labels, v["view1"], v["view2"],
                                   v["geom1"], v["geom2"], weight, recipe)
            assert math.isfinite(cons)
        after[weight] = mse(model)
    before = mse(deepcopy(init).train())
    assert after[1.0] < 0.1 * before  # measured: 0.013 -> 2.3e-5
    assert after[0.0] == pytest.approx(before, rel=0.05)  # nothing but weight decay moves the weights


@pytest.mark.parametrize("size", [(16, 16), (16, 24)])
def test_batched_consistency_equals_the_per_image_loss_averaged(size):
    torch.manual_seed(0)
    n = 24
    logits1 = torch.randn(n, 3, *size, dtype=torch.float64, requires_grad=True)
    logits2 = torch.randn(n, 3, *size, dtype=torch.float64, requires_grad=True)
    square = size[0] == size[1]
    rng = np.random.default_rng(0)
    ks1, ks2 = ((rng.integers(0, 4, n) if square else 2 * rng.integers(0, 2, n)) for _ in range(2))
    fl1, fl2 = (rng.integers(0, 2, n).astype(bool) for _ in range(2))
    assert len(set(zip(ks1, fl1))) == (8 if square else 4)  # every geometry occurs
    batched = batch_consistency_loss(logits1, logits2, (torch.tensor(ks1), torch.tensor(fl1)),
                                     (torch.tensor(ks2), torch.tensor(fl2)))
    reference = torch.stack([consistency_loss(logits1[i], logits2[i], (int(ks1[i]), bool(fl1[i])),
                                              (int(ks2[i]), bool(fl2[i]))) for i in range(n)]).mean()
    torch.testing.assert_close(batched, reference, rtol=1e-13, atol=0)
    grads = torch.autograd.grad(batched, (logits1, logits2))
    ref_grads = torch.autograd.grad(reference, (logits1, logits2))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-18)


def test_batched_consistency_of_collated_two_views_matches_each_image(data):
    batch = views_of(data, data.splits["train"], seed=3)
    n = len(data.splits["train"])
    torch.manual_seed(1)
    pred1, pred2 = torch.randn(n, 2, 32, 32), torch.randn(n, 2, 32, 32)
    geoms = [tuple(zip(batch[g][0].tolist(), batch[g][1].tolist())) for g in ("geom1", "geom2")]
    reference = np.mean([consistency_loss(pred1[i], pred2[i], geoms[0][i], geoms[1][i]).item() for i in range(n)])
    assert batch_consistency_loss(pred1, pred2, batch["geom1"], batch["geom2"]).item() == pytest.approx(reference,
                                                                                                           rel=1e-6)
    assert set(batch) == {"view1", "view2", "geom1", "geom2"}  # no label of an unlabelled image leaves the dataset


def test_ramp_up_follows_the_formula():
    recipe = replace(SEMI, consistency_weight=0.3, consistency_rampup=4)
    for progress in (0.0, 0.5, 1.0, 2.5, 3.99):
        assert consistency_ramp(recipe, progress) == pytest.approx(0.3 * math.exp(-5 * (1 - progress / 4) ** 2),
                                                                   rel=1e-12)
    assert consistency_ramp(recipe, 4.0) == consistency_ramp(recipe, 9.0) == 0.3
    assert consistency_ramp(replace(recipe, consistency_rampup=0), 0.0) == 0.3


def test_unlabelled_fraction_splits_train_deterministically(data, fugc_like):
    train = data.splits["train"]
    labelled, pool = unlabelled_pool(data, SEMI, seed=7)
    assert len(pool) == 3 and len(labelled) == 3  # round(0.5 * 6)
    assert sorted([*labelled, *pool]) == sorted(train) and not set(labelled) & set(pool)
    again = unlabelled_pool(data, SEMI, seed=7)
    np.testing.assert_array_equal(again[0], labelled)
    np.testing.assert_array_equal(again[1], pool)
    assert len({tuple(unlabelled_pool(data, SEMI, seed=s)[1]) for s in range(8)}) > 1  # the seed draws them
    # at most n - 1 lose their labels; none without a fraction
    assert len(unlabelled_pool(data, replace(SEMI, unlabelled_fraction=0.99), seed=0)[0]) == 1
    labelled0, pool0 = unlabelled_pool(data, replace(SEMI, consistency_weight=0.0, unlabelled_fraction=0.0), 0)
    np.testing.assert_array_equal(labelled0, train)
    assert len(pool0) == 0
    # the labelled items keep the split file's order, so supervised runs draw the batches they always drew
    shuffled = replace(data, splits={**data.splits, "train": train[[3, 0, 5, 1, 4, 2]]})
    supervised = replace(SEMI, consistency_weight=0.0, unlabelled_fraction=0.0)
    np.testing.assert_array_equal(unlabelled_pool(shuffled, supervised, 0)[0], shuffled.splits["train"])
    kept = unlabelled_pool(shuffled, SEMI, 7)[0]
    np.testing.assert_array_equal(kept, [i for i in shuffled.splits["train"] if i in kept])
    # a split of unlabelled images joins the pool; train keeps all its labels without a fraction
    labelled1, pool1 = unlabelled_pool(fugc_like, replace(SEMI, unlabelled="unlabelled", unlabelled_fraction=0.0), 0)
    np.testing.assert_array_equal(labelled1, train)
    np.testing.assert_array_equal(pool1, fugc_like.splits["unlabelled"])
    _, both = unlabelled_pool(fugc_like, replace(SEMI, unlabelled="unlabelled"), seed=7)
    np.testing.assert_array_equal(both, np.sort([*pool, *fugc_like.splits["unlabelled"]]))


def test_unlabelled_order_cycles_whole_permutations_and_is_the_same_for_any_number_of_ranks(monkeypatch):
    order = unlabelled_order(5, steps=3, batch_size=4, seed=2, epoch=1)  # 12 images from a pool of 5
    assert len(order) == 12
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))  # each pass a permutation
    assert len(set(order[10:])) == 2
    np.testing.assert_array_equal(order, unlabelled_order(5, 3, 4, seed=2, epoch=1))
    assert not np.array_equal(order, unlabelled_order(5, 3, 4, seed=2, epoch=2))

    def batches(world, rank):
        monkeypatch.setattr(train_mod, "rank_world", lambda: (rank, world))
        return [b.tolist() for b in train_mod._loader(order.tolist(), 4, False, 2, 1, 0, CPU)]

    one = batches(1, 0)
    shards = [batches(2, r) for r in (0, 1)]
    assert len(one) == len(shards[0]) == len(shards[1]) == 3 and all(len(b) == 2 for s in shards for b in s)
    for j in range(3):  # global step j takes the same four images on one rank or two
        assert sorted(shards[0][j] + shards[1][j]) == sorted(one[j]) == sorted(order[4 * j : 4 * j + 4].tolist())


def test_fit_uses_the_split_the_order_and_the_ramp(data, tmp_path, monkeypatch, one_thread):
    seen = {"weights": [], "views": [], "labelled": []}
    real_step, real_views, real_arrays = train_mod.semisup_step, train_mod._Views, train_mod.SegArrays

    def step(*args):
        seen["weights"].append(args[-2])
        assert len(args[5]) == SEMI.batch_size  # also beside the labelled epoch's short last batch
        return real_step(*args)

    def views(d, index, v):
        seen["views"].append(np.asarray(index))
        return real_views(d, index, v)

    def arrays(d, split, transform=None):
        seen["labelled"].append(d.splits[split])
        return real_arrays(d, split, transform)

    monkeypatch.setattr(train_mod, "semisup_step", step)
    monkeypatch.setattr(train_mod, "_Views", views)
    monkeypatch.setattr(train_mod, "SegArrays", arrays)
    history = fit("unet", data, SEMI, tmp_path / "s", seed=3, device=CPU, model_kwargs=SMALL)
    labelled, pool = unlabelled_pool(data, SEMI, seed=3)
    np.testing.assert_array_equal(seen["labelled"][0], labelled)  # 3 labelled items: 2 steps of 2 per epoch
    # progress epoch + step / steps, rampup 2 epochs
    assert seen["weights"] == pytest.approx([0.5 * math.exp(-5 * (1 - p / 2) ** 2) for p in (0, 0.5, 1, 1.5)])
    for epoch, index in enumerate(seen["views"]):
        np.testing.assert_array_equal(index, pool[unlabelled_order(3, 2, 2, seed=3, epoch=epoch)])
        assert not set(index) & set(labelled)
    assert list(history.columns) == ["epoch", "lr", "train_loss", "val_dsc", "consistency"]
    assert (history["consistency"] > 0).all() and np.isfinite(history["train_loss"]).all()
    state = torch.load(tmp_path / "s" / "last.pt", weights_only=False)
    assert state["config"]["unlabelled_train"] == data.ids[pool].tolist()


def test_a_stopped_semi_supervised_run_resumes_as_if_never_stopped(data, tmp_path, one_thread):
    recipe = replace(SEMI, augment="light")
    full = fit("unet", data, recipe, tmp_path / "full", seed=1, device=CPU, model_kwargs=SMALL)
    fit("unet", data, recipe, tmp_path / "part", seed=1, device=CPU, model_kwargs=SMALL, stop_after=1)
    resumed = fit("unet", data, recipe, tmp_path / "part", seed=1, device=CPU, model_kwargs=SMALL)
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=False)["model"] for d in ("full", "part"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    np.testing.assert_array_equal(resumed["consistency"], full["consistency"])
    # another labelled/unlabelled split is another run: it starts afresh
    other = fit("unet", data, replace(recipe, unlabelled_fraction=0.3, epochs=1), tmp_path / "part", seed=1,
                device=CPU, model_kwargs=SMALL)
    assert list(other["epoch"]) == [1]


def test_a_supervised_run_records_no_consistency(data, tmp_path, one_thread):
    recipe = replace(SEMI, epochs=1, consistency_weight=0.0, unlabelled_fraction=0.0)
    history = fit("unet", data, recipe, tmp_path / "sup", seed=0, device=CPU, model_kwargs=SMALL,
                  history_csv=tmp_path / "h.csv")
    assert history["consistency"].tolist() == [0.0]
    assert (tmp_path / "h.csv").read_text().splitlines()[0] == "epoch,lr,train_loss,val_dsc,consistency"


@pytest.mark.parametrize("fields, message", [
    ({"consistency_weight": -0.1}, r"consistency_weight must be >= 0"),
    ({"consistency_rampup": -1}, r"consistency_rampup must be >= 0"),
    ({"unlabelled_fraction": 1.0}, r"unlabelled_fraction must be in \[0, 1\)"),
    ({"unlabelled_fraction": -0.2}, r"unlabelled_fraction must be in \[0, 1\)"),
    ({"unlabelled_fraction": 0.0}, r"consistency_weight 0.5 needs unlabelled images: set unlabelled .* or "
                                   r"unlabelled_fraction"),
])
def test_bad_semi_supervised_recipes_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        check_recipe(replace(SEMI, **fields), 1, CPU)


def test_bad_unlabelled_sources_name_the_field(data, fugc_like):
    with pytest.raises(ValueError, match=r"recipe unlabelled: dataset toy has no split 'unlabeled'; splits: "):
        unlabelled_pool(fugc_like, replace(SEMI, unlabelled="unlabeled"), 0)
    with pytest.raises(ValueError, match=r"recipe unlabelled: split 'train' shares 6 item\(s\) with the train split"):
        unlabelled_pool(data, replace(SEMI, unlabelled="train"), 0)
    empty = replace(fugc_like, splits={**fugc_like.splits, "unlabelled": np.zeros(0, np.int64)})
    with pytest.raises(ValueError, match=r"consistency_weight 0.5: no unlabelled image in toy"):
        unlabelled_pool(empty, replace(SEMI, unlabelled="unlabelled", unlabelled_fraction=0.0), 0)
    tiny = replace(data, splits={**data.splits, "train": data.splits["train"][:2]})
    with pytest.raises(ValueError, match=r"unlabelled_fraction 0.1 of 2 train items rounds to 0"):
        unlabelled_pool(tiny, replace(SEMI, unlabelled_fraction=0.1), 0)


def _worker(rank, world, port, data, recipe, run_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fit("unet", data, recipe, run_dir, seed=4, device=CPU, model_kwargs=SMALL)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # about 50 s on two shared cores, most of it starting the processes
def test_two_process_semi_supervised_run_takes_the_steps_of_one(data, tmp_path):
    recipe = replace(SEMI, batch_size=4, unlabelled_fraction=0.3)  # 4 labelled: one step of 2 per rank, per epoch
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, data, recipe, tmp_path / "ddp"), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    one = fit("unet", data, recipe, tmp_path / "one", seed=4, device=CPU, model_kwargs=SMALL)
    assert ddp["step"] == 2 and [h["epoch"] for h in ddp["history"]] == [1, 2]
    assert all(h["consistency"] > 0 and math.isfinite(h["train_loss"]) for h in ddp["history"])
    assert ddp["config"]["unlabelled_train"] == torch.load(tmp_path / "one" / "last.pt", weights_only=False)[
        "config"]["unlabelled_train"]
    assert one["consistency"].gt(0).all()
