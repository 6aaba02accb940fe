"""Distributed training: a 2-process DDP step equals the textbook step on the same global batch, a stopped
2-process run resumes on two processes (as if never stopped) or on one, the launch decision and the command
line's messages."""

import json
import os
from pathlib import Path
import re
import socket
import subprocess
from copy import deepcopy
from dataclasses import replace

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.utils import set_determinism
from torch.utils.data import DistributedSampler

from rwkvlab import train as cli
from rwkvlab.config import recipe_with_defaults
from rwkvlab.data.loader import SegArrays, as_float
from rwkvlab.engine import train as train_mod
from rwkvlab.engine.distributed import check_nproc, rank_world, sum_over_ranks, torchrun_command
from rwkvlab.engine.losses import seg_loss
from rwkvlab.engine.train import build_optimizer, fit
from rwkvlab.models import create_model

STUDY_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the frozen study configuration

CPU = torch.device("cpu")
# No drop path: the reference replays no per-rank random numbers.
KWARGS = {"drop_path_rate": 0.0, "ccm_drop_path": 0.0}
RECIPE = recipe_with_defaults(epochs=1, batch_size=6, lr=1e-3, min_lr=1e-5, weight_decay=1e-4, ce_weight=0.5, dice_weight=1.0,
                augment="none")




def _worker(rank, world, port, data, recipe, run_dir, stop_after):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fit("rwkv_unet_t", data, recipe, run_dir, seed=5, device=CPU, model_kwargs=KWARGS, stop_after=stop_after)
    finally:
        dist.destroy_process_group()


def spawn2(data, recipe, run_dir, stop_after=None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, data, recipe, run_dir, stop_after), nprocs=2, join=True)
    return torch.load(run_dir / "last.pt", weights_only=False)


def test_helpers_answer_for_a_plain_process():
    assert rank_world() == (0, 1)
    assert sum_over_ranks([1.5, 2.0], CPU) == [1.5, 2.0]
    cmd = torchrun_command(4, "rwkvlab.train", ["--dataset", "demo"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "rwkvlab.train",
                       "--dataset", "demo"]
    with pytest.raises(ValueError, match=rf"--nproc must be between 1 and the {os.cpu_count()} CPU cores .*got 99"):
        check_nproc(99, CPU, "--nproc")
    with pytest.raises(ValueError, match=r"nproc must be between 1 .*got 0"):
        check_nproc(0, CPU)


@pytest.mark.slow
def test_two_process_step_equals_the_step_of_one_process_on_the_global_batch(data, tmp_path, one_thread):
    ddp = spawn2(data, RECIPE, tmp_path / "ddp")  # 6 training images: one global step, 3 images per rank
    # one_thread: the workers run one thread; so does the reference, so that the fused BatchNorm's partial sums
    # add up in the same order (with two threads they differ at float32 rounding, which this small model amplifies)

    # Reference: each rank's shard of the sampler, BatchNorm statistics per shard, the two gradients averaged,
    # one AdamW step, the running statistics averaged over the ranks.
    train_set = SegArrays(data, "train")
    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(train_set, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(0)
        items = [train_set[i] for i in sampler]
        shards.append((as_float(torch.stack([b["image"] for b in items])),
                       torch.stack([b["label"] for b in items]).long()))
    set_determinism(5)
    model = create_model("rwkv_unet_t", in_chans=3, num_classes=2, **KWARGS)
    optimizer = build_optimizer(model, RECIPE)
    loss_fn = seg_loss(RECIPE.ce_weight, RECIPE.dice_weight)
    replicas = [deepcopy(model).train() for _ in shards]
    losses = [loss_fn(r(x), y) for r, (x, y) in zip(replicas, shards)]
    for loss in losses:
        loss.backward()
    for name, param in model.named_parameters():
        param.grad = sum(dict(r.named_parameters())[name].grad for r in replicas) / 2
    optimizer.step()
    with torch.no_grad():
        for name, buf in model.named_buffers():  # running statistics and num_batches_tracked
            buf.copy_(sum(dict(r.named_buffers())[name] for r in replicas) / 2)

    # AdamW's first moment after one step is (1 - beta1) * the averaged gradient.
    ours, theirs = optimizer.state_dict()["state"], ddp["optimizer"]["state"]
    assert ours.keys() == theirs.keys()
    names = [n for n, _ in model.named_parameters()]
    # Per element, float32 sums in another order (measured: 1.3e-7 at worst, on an entry of 2.8e-5); per tensor, a
    # relative L2 error of at most 2.5e-5 measured, except where the gradient is float noise (about 1e-9: exactly
    # 0 in exact arithmetic).
    for i in ours:
        torch.testing.assert_close(theirs[i]["exp_avg"], ours[i]["exp_avg"], rtol=1e-2, atol=1e-6,
                                   msg=lambda m, n=names[i]: f"{n}: {m}")
        if ours[i]["exp_avg"].norm() > 1e-6:
            assert ((theirs[i]["exp_avg"] - ours[i]["exp_avg"]).norm() / ours[i]["exp_avg"].norm()) < 1e-4, names[i]
    # Adam's first step moves a weight by about lr * sign(grad): where the gradient is float noise (0 in exact
    # arithmetic, e.g. the bias of a norm that a BatchNorm follows) either run may move it either way.
    grads = {n: ours[i]["exp_avg"] for i, n in enumerate(names)}
    ref = model.state_dict()
    for k, v in ddp["model"].items():
        sure = grads[k].abs() > 1e-7 if k in grads else torch.ones_like(v, dtype=torch.bool)
        torch.testing.assert_close(v[sure], ref[k][sure], rtol=1e-4, atol=1e-6, msg=k)
    assert sum(int((grads[n].abs() > 1e-7).sum()) for n in names) > 0.9 * sum(g.numel() for g in grads.values())
    # the loss is averaged over the ranks; validation (rank 0) scores the averaged model
    assert ddp["step"] == 1
    assert ddp["history"][0]["train_loss"] == pytest.approx(((losses[0] + losses[1]) / 2).item(), rel=1e-5)
    model.load_state_dict(ddp["model"])
    assert ddp["history"][0]["val_dsc"] == pytest.approx(train_mod._val_dsc(model, data, 6, CPU), abs=1e-9)


@pytest.mark.slow
def test_a_stopped_two_process_run_resumes_on_two_or_one_processes(data, tmp_path):
    recipe = replace(RECIPE, epochs=2, batch_size=4)  # 2 images per rank, 2 steps per epoch
    full = spawn2(data, recipe, tmp_path / "full")
    stopped = spawn2(data, recipe, tmp_path / "part", stop_after=1)
    assert stopped["epoch"] == 0 and len(stopped["history"]) == 1 and stopped["step"] == 2
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "last.pt").write_bytes((tmp_path / "part" / "last.pt").read_bytes())

    resumed = spawn2(data, recipe, tmp_path / "part")
    assert resumed["epoch"] == 1 and resumed["step"] == 4
    for k, v in full["model"].items():  # the checkpoint holds all the state: resuming changes nothing
        torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=0, msg=k)
    assert resumed["history"] == full["history"]

    # on one process: epoch 2 follows the single-process order, from the same epoch-1 state
    history = fit("rwkv_unet_t", data, recipe, tmp_path / "one", seed=5, device=CPU, model_kwargs=KWARGS)
    assert list(history["epoch"]) == [1, 2]
    assert history.iloc[0].to_dict() == pytest.approx(full["history"][0])
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=False)
    assert one["epoch"] == 1 and one["step"] == 4
    assert any((one["model"][k] != v).any() for k, v in full["model"].items() if v.is_floating_point())


# ---- the launch decision and the command line --------------------------------------------------------------------

@pytest.mark.parametrize("selection, expected", [
    ({"dataset": "demo", "model": "rwkv_unet_t", "variant": "attn_none", "seed": 0, "out": "adhoc"},
     ["--dataset", "demo", "--model", "rwkv_unet_t", "--seed", "0", "--out", "adhoc", "--variant", "attn_none"]),
    ({"run": "demo-rwkv_unet_t", "seed": 0}, ["--run-name", "demo-rwkv_unet_t", "--seed", "0", "--stage"]),
])
def test_launch_runs_torchrun_when_nproc_is_above_one(tmp_path, monkeypatch, selection, expected):
    overrides = {"base.reports_dir": str(tmp_path / "reports"), "base.checkpoints_dir": str(tmp_path / "ck"),
                 "train.recipes.demo.epochs": 2, "train.recipes.demo.precision": "bf16"}
    selection = dict(selection)
    seed, name = selection.pop("seed"), selection.pop("run", None)
    if "out" in selection:  # the children write where the command was told to, or where the stage writes
        selection["out"] = tmp_path / selection["out"]
        expected = [str(tmp_path / a) if a == "adhoc" else a for a in expected]
    run = cli._run(cli.config.load(STUDY_PARAMS, **overrides), seed, name, **selection)
    calls = []

    def fake_run(cmd, check):  # what rank 0 of the torchrun job leaves behind
        calls.append(cmd)
        run.history.parent.mkdir(parents=True)
        pd.DataFrame({"epoch": [1], "lr": [1e-3], "train_loss": [0.5], "val_dsc": [50.0]}).to_csv(run.history)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    monkeypatch.setattr(cli.runs, "train", lambda *a, **k: pytest.fail("trained in process"))
    history = cli.launch(cli.config.load(STUDY_PARAMS, **overrides), name, seed, nproc=2, **selection)
    (cmd,) = calls
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    args = cmd[6:]
    n = 4 + len(expected)
    # the children read the very file the stage loaded, by its absolute path
    assert args[:n] == ["rwkvlab.train", "--params", str(STUDY_PARAMS), *expected, "--no-evaluate"]
    assert args[n::2] == ["--set"] * len(overrides)
    assert cli.parse_overrides(args[n + 1::2]) == overrides  # the children load the same params
    assert history["val_dsc"].tolist() == [50.0]


def test_a_configured_run_trains_each_seed(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(cli.runs, "train", lambda p, run, device, data=None: trained.append(run))
    sets = ["--set", "train.runs.demo-unet.seeds=[2, 0]", "--set", f"base.checkpoints_dir={tmp_path / 'ck'}"]
    assert cli.main(["--run", "demo-unet", "--no-evaluate", *sets]) == 0
    assert [(r.name, r.split_seed, r.model, r.checkpoints.name) for r in trained] == [
        ("demo-unet/seed2", 2, "unet", "seed2"), ("demo-unet/seed0", 0, "unet", "seed0")]
    # a command's run goes under the ad-hoc root; only --stage writes where the stage train@demo-unet does
    assert trained[0].checkpoints == Path("data/adhoc/train/demo-unet/seed2").resolve()
    assert cli.main(["--run", "demo-unet", "--seed", "0", "--no-evaluate", "--stage", *sets]) == 0
    assert [r.split_seed for r in trained[2:]] == [0]
    assert trained[2].checkpoints == tmp_path / "ck" / "train" / "demo-unet" / "seed0"


def test_an_ad_hoc_run_on_several_seeds_prints_and_writes_their_mean_and_sample_std(tmp_path, monkeypatch, capsys):
    import statistics

    scores = {0: 60.0, 1: 64.0, 2: 71.0}
    trained = []

    def fake_evaluate(p, run, device, data=None):  # what runs.evaluate leaves: the seed's metrics file
        run.evaluation.mkdir(parents=True)
        metrics = {"dsc": scores[run.split_seed], "hd95": 10.0 + run.split_seed}
        (run.evaluation / "metrics.json").write_text(json.dumps(metrics))
        return metrics, None, None

    monkeypatch.setattr(cli.runs, "train", lambda p, run, device, data=None: trained.append(run.split_seed))
    monkeypatch.setattr(cli.runs, "evaluate", fake_evaluate)
    assert cli.main(["--dataset", "demo", "--model", "rwkv_unet_t", "--variant", "initnorm_vrwkv_pre",
                     "--recipe", "ablate_demo", "--seed", "0", "1", "2", "--out", str(tmp_path / "out")]) == 0
    assert trained == [0, 1, 2]
    printed = json.loads(capsys.readouterr().out)
    run = tmp_path / "out" / "demo-rwkv_unet_t-initnorm_vrwkv_pre"
    assert sorted(f.relative_to(run).as_posix() for f in run.rglob("*.json")) == [
        "metrics.json", *(f"seed{k}/evaluation/metrics.json" for k in range(3))]
    written = json.loads((run / "metrics.json").read_text())
    assert printed == {"run": "demo-rwkv_unet_t-initnorm_vrwkv_pre", **written}
    assert written["mean"]["dsc"] == pytest.approx(statistics.mean(scores.values()))
    assert written["std"]["dsc"] == pytest.approx(statistics.stdev(scores.values()))
    assert written["seeds"] == [0, 1, 2] and written["variant"] == "initnorm_vrwkv_pre"
    assert written["kwargs"] == {"wkv_init": "vrwkv", "norm": "pre"} and written["recipe"] == "ablate_demo"


def test_overrides_are_read_as_yaml():
    assert cli.parse_overrides(["a.b=2", "c=1.0e-3", "d=[x, 3]", "e=null", "f=bf16", "g=true"]) == {
        "a.b": 2, "c": 1e-3, "d": ["x", 3], "e": None, "f": "bf16", "g": True}


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nowhere", "--model", "rwkv_unet_t"], r"--dataset: no recipe train\.recipes\.nowhere"),
    (["--dataset", "demo", "--model", "unet", "--recipe", "nope"], r"--recipe: no recipe train\.recipes\.nope"),
    (["--dataset", "demo", "--model", "unet", "--seed", "9"], r"--seed: 9 is not one of prepare\.split_seeds"),
    (["--dataset", "demo", "--model", "unet", "--seed", "1", "1"], r"--seed: \[1, 1\] names a seed twice"),
    (["--dataset", "demo", "--model", "swin_unet", "--recipe", "demo_semi"],
     r"'demo-swin_unet' is also a configured run .* --run demo-swin_unet"),
    (["--run", "demo-nope"], r"train\.runs has no run 'demo-nope'; runs: demo-rwkv_unet_t, "),
    (["--run", "demo-unet", "--seed", "1"], r"train\.runs\.demo-unet trains on split seeds \[0\], not on seed 1"),
    (["--run", "demo-unet", "--model", "unet"], r"--run names a configured run: give it without --model"),
    (["--dataset", "demo", "--model", "unet", "--stage"], r"--stage writes the outputs of the stage train@<run>"),
    (["--run", "demo-unet", "--stage", "--out", "x"], r"give it with --run and without --out"),
    (["--model", "unet"], r"give --run NAME \(a run of train\.runs\) or both --dataset and --model"),
    (["--dataset", "demo", "--model", "no_such_net"], r"--model: unknown model 'no_such_net'; registered: .*rwkv_unet_t"),
    (["--dataset", "demo", "--model", "rwkv_unet_t", "--variant", "zz"], r"unknown ablation variant 'zz'"),
    (["--dataset", "demo", "--model", "rwkv_unet_t", "--set", "train.bogus=1"], r"unknown key\(s\) \['bogus'\]"),
    (["--dataset", "demo", "--model", "rwkv_unet_t", "--set", "train.recipes.demo.clip_grad=-1"],
     r"clip_grad must be >= 0"),
    (["--dataset", "demo", "--model", "rwkv_unet_t", "--set", "epochs"], r"--set expects key=value"),
    (["--dataset", "demo", "--model", "rwkv_unet_t", "--nproc", "999"], r"--nproc must be between 1 and the"),
    (["--dataset", "demo", "--model", "rwkv_unet_t", "--set", "train.nproc=999"], r"train\.nproc must be between"),
])
def test_command_line_errors_are_one_message(args, message, capsys, monkeypatch):
    # Stop a run that got past its checks before it trains: each case must fail first.
    monkeypatch.setattr(cli.runs, "train", lambda *a, **k: pytest.fail("the bad input was not caught"))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize("run", ["demo-rwkv_unet_t", None])
def test_torchrun_passes_the_selection_to_the_script(run):
    # torchrun's own parser reads an abbreviation of its options anywhere, e.g. --run as --run-path
    from torch.distributed.run import get_args_parser

    from rwkvlab.train import _selection_args

    out = None if run else Path("/tmp/adhoc")  # a configured run as its stage (--stage); an ad-hoc one under --out
    args = _selection_args(0, run, "demo", "rwkv_unet_t", None, None, out)
    parsed = get_args_parser().parse_args(torchrun_command(2, "rwkvlab.train", args)[3:])
    assert parsed.module and parsed.training_script == "rwkvlab.train" and parsed.training_script_args == args
