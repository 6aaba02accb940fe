"""Training: checkpoints every epoch, resuming (also after a kill mid-epoch) equals an uninterrupted run; the
recipe's speed and safety fields (bf16, channels_last, compile, fused AdamW, clipping, the non-finite guard,
validation every N steps) against plain fp32 steps."""

import math
import shutil
from copy import deepcopy
from dataclasses import replace

import numpy as np
import pytest
import torch

from rwkvlab.config import Recipe, recipe_with_defaults
from rwkvlab.engine import train as train_mod
from rwkvlab.engine.inference import load_trained
from rwkvlab.engine.losses import seg_loss
from rwkvlab.engine.train import NonFiniteLossError, build_optimizer, check_recipe, fit, train_step
from rwkvlab.models import create_model

RECIPE = recipe_with_defaults(epochs=3, batch_size=4, lr=1e-3, min_lr=1e-5, weight_decay=1e-4, ce_weight=0.5, dice_weight=1.0)




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


# ---- the recipe's speed and safety fields ------------------------------------------------------------------------

CPU = torch.device("cpu")
# A MONAI BasicUNet this small trains a step in well under a second: for what does not depend on the model.
SMALL = {"features": (4, 4, 8, 8, 16, 4)}


def model_and_batch(name="rwkv_unet_t", **kw):
    torch.manual_seed(0)
    extra = SMALL if name == "unet" else {"drop_path_rate": 0.0, "ccm_drop_path": 0.0}
    model = create_model(name, in_chans=3, num_classes=2, **{**extra, **kw})
    x = torch.rand(2, 3, 32, 32)
    y = (x[:, :1] > 0.5).long()
    return model, x, y


def one_step(model, x, y, recipe):
    """A copy of ``model`` after one step; the loss; its gradients; the optimizer."""
    model = deepcopy(model)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, recipe)
    loss = train_step(model, opt, seg_loss(recipe.ce_weight, recipe.dice_weight), x, y, recipe)
    return model, loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, opt


def flat(grads):
    return torch.cat([g.flatten() for g in grads.values()])


def test_gradient_clipping_bounds_the_gradient_the_update_is_made_from():
    model, x, y = model_and_batch("unet")
    _, loss, free, _ = one_step(model, x, y, RECIPE)
    norm = flat(free).norm().item()
    clip = 0.1 * norm
    clipped_model, clipped_loss, clipped, opt = one_step(model, x, y, replace(RECIPE, clip_grad=clip))
    assert clipped_loss == loss
    assert flat(clipped).norm().item() == pytest.approx(clip, rel=1e-5)
    for name, g in free.items():  # the same direction, scaled by clip / norm as torch's clip_grad_norm_ documents
        torch.testing.assert_close(clipped[name], g * (clip / norm), rtol=1e-4, atol=1e-9, msg=name)
    # AdamW's first moment after one step is (1 - beta1) * the clipped gradient: the update is built from it
    params = dict(clipped_model.named_parameters())
    for p, st in zip(opt.param_groups[0]["params"], opt.state.values()):
        name = next(n for n, q in params.items() if q is p)
        torch.testing.assert_close(st["exp_avg"], 0.1 * clipped[name], rtol=1e-5, atol=1e-10)


def test_fused_adamw_takes_the_same_step():
    model, x, y = model_and_batch("unet")
    plain, fused = (one_step(model, x, y, replace(RECIPE, fused_adamw=f))[0] for f in (False, True))
    for (k, a), b in zip(plain.state_dict().items(), fused.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)


def test_channels_last_takes_the_same_step():
    model, x, y = model_and_batch()
    _, loss, grads, _ = one_step(model, x, y, RECIPE)
    nhwc, loss_cl, grads_cl, _ = one_step(model, x, y, replace(RECIPE, channels_last=True))
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    a, b = flat(grads), flat({n: grads_cl[n] for n in grads})
    assert ((b - a).norm() / a.norm()).item() < 1e-4  # measured 5e-5: summation order only
    for name, g in grads.items():  # gradients that are float noise (exactly 0 in exact arithmetic) left out
        if g.norm() > 1e-5:
            assert ((grads_cl[name] - g).norm() / g.norm()).item() < 1e-3, name


# RWKV-UNet-T's gradients are sensitive to bf16 rounding on small inputs: measured cosine to float64 0.56 at
# 2 x 32^2 and 0.86 at 4 x 96^2 (float32: 1 - 1e-10), with or without the token mixer and the depthwise kernel.
@pytest.mark.parametrize("name,n,size,cosine", [("unet", 2, 32, 0.98), ("rwkv_unet_t", 4, 96, 0.8)])
def test_bf16_autocast_step_stays_close_to_fp32(name, n, size, cosine):
    model, _, _ = model_and_batch(name)
    x = torch.rand(n, 3, size, size)
    y = (x[:, :1] > 0.5).long()
    _, loss, grads, _ = one_step(model, x, y, RECIPE)
    _, loss_bf16, grads_bf16, _ = one_step(model, x, y, replace(RECIPE, precision="bf16"))
    assert loss_bf16 == pytest.approx(loss, rel=2e-2)  # bf16 keeps 8 bits of mantissa
    a, b = flat(grads), flat(grads_bf16)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > cosine
    assert (b.norm() / a.norm()).item() == pytest.approx(1, abs=0.1)


@pytest.mark.slow  # about 90 s on two shared cores, most of it inductor's C++ build
def test_compiled_step_equals_eager():
    # MONAI's BasicUNet does not compile in torch 2.14 (inductor: a stride mismatch in replication_pad2d_backward)
    torch.manual_seed(0)
    model = create_model("att_unet", in_chans=3, num_classes=2, channels=(4, 8, 16, 32))
    x = torch.rand(2, 3, 32, 32)
    y = (x[:, :1] > 0.5).long()
    eager, loss, grads, _ = one_step(model, x, y, RECIPE)
    compiled = deepcopy(model)
    opt = build_optimizer(compiled, RECIPE)
    try:
        loss_c = train_step(torch.compile(compiled), opt, seg_loss(0.5, 1.0), x, y, RECIPE)
    except Exception as err:  # inductor needs a C++ compiler; its absence is not this project's failure
        if "compiler" in str(err).lower() or shutil.which("g++") is None:
            pytest.skip(f"torch.compile (inductor) cannot build here: {err}")
        raise
    assert loss_c == pytest.approx(loss, rel=1e-5)
    grads_c = {n: p.grad for n, p in compiled.named_parameters()}
    a, b = flat(grads), flat({n: grads_c[n] for n in grads})
    assert ((b - a).norm() / a.norm()).item() < 1e-4
    # Adam's first step moves a weight by about lr * sign(grad): where the gradient is float noise (a conv bias
    # that a BatchNorm follows: 0 in exact arithmetic, measured up to 2.4e-7) either run may move it either way.
    for (k, w), w_c in zip(eager.state_dict().items(), compiled.state_dict().values()):
        sure = grads[k].abs() > 1e-5 if k in grads else torch.ones_like(w, dtype=torch.bool)  # noise: up to 2.4e-7
        torch.testing.assert_close(w_c[sure], w[sure], rtol=1e-4, atol=1e-5, msg=k)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    real_loss = train_mod.seg_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        fn = real_loss(*a, **k)

        def wrapped(logits, labels):
            calls["n"] += 1
            loss = fn(logits, labels)
            return loss * math.nan if calls["n"] == 4 else loss  # second batch of epoch 2 (two per epoch)

        return wrapped

    monkeypatch.setattr(train_mod, "seg_loss", poisoned)
    recipe = replace(RECIPE, epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 2 of 2 \(optimizer step 4\).*"
                                                 r"last\.pt keeps epoch 1, the last good one"):
        fit("unet", data, recipe, tmp_path / "nan", seed=1, device=CPU, model_kwargs=SMALL)
    state = torch.load(tmp_path / "nan" / "last.pt", weights_only=False)
    assert state["epoch"] == 0 and state["step"] == 2 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # the kept checkpoint is the epoch-1 state of a clean run
    monkeypatch.setattr(train_mod, "seg_loss", real_loss)
    fit("unet", data, replace(recipe, epochs=1), tmp_path / "ref", seed=1, device=CPU, model_kwargs=SMALL)
    ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    assert_same_weights(ref, state["model"])


def test_validation_every_n_steps_keeps_the_best_model_of_any_step(data, tmp_path):
    recipe = replace(RECIPE, epochs=2, val_every=1, augment="none", lr=1e-2)
    fit("unet", data, recipe, tmp_path / "v", seed=0, device=CPU, model_kwargs=SMALL)
    last = torch.load(tmp_path / "v" / "last.pt", weights_only=False)
    best = torch.load(tmp_path / "v" / "best.pt", weights_only=False)
    vals = last["validations"]
    assert [(v["epoch"], v["step"]) for v in vals] == [(1, 1), (1, 2), (2, 3), (2, 4)]  # two steps per epoch
    assert [v["val_dsc"] for v in vals[1::2]] == [h["val_dsc"] for h in last["history"]]
    top = max(vals, key=lambda v: v["val_dsc"])
    assert best["best_score"] == top["val_dsc"] and best["step"] == top["step"]
    # best.pt scores what was recorded for it, rescored from the file alone
    model, _ = load_trained(tmp_path / "v", "best", CPU)
    assert train_mod._val_dsc(model, data, 4, CPU) == pytest.approx(top["val_dsc"], abs=1e-9)


def test_recipe_errors_name_the_field():
    with pytest.raises(ValueError, match=r"batch_size 4 .* divisible by the number of processes \(3\)"):
        check_recipe(RECIPE, 3, CPU)
    with pytest.raises(ValueError, match=r"sync_bn: .*GPUs only"):
        check_recipe(replace(RECIPE, sync_bn=True), 2, CPU)
    check_recipe(replace(RECIPE, sync_bn=True), 1, CPU)  # one process: nothing to sync
    with pytest.raises(ValueError, match=r"clip_grad must be >= 0"):
        check_recipe(replace(RECIPE, clip_grad=-1.0), 1, CPU)
    with pytest.raises(ValueError, match=r"val_every must be >= 0"):
        check_recipe(replace(RECIPE, val_every=-2), 1, CPU)


def test_precise_bn_runs_without_drop_path():
    """The statistics precise_bn computes are those of the network inference runs: with drop path at 0.9 they
    equal those of the same weights without drop path, and the drop rate is restored afterwards."""
    from rwkvlab.engine.loop import precise_bn
    from timm.layers import DropPath

    torch.manual_seed(0)
    dropping = create_model("rwkv_unet_t", num_classes=2, drop_path_rate=0.9)
    plain = create_model("rwkv_unet_t", num_classes=2, drop_path_rate=0.0)
    plain.load_state_dict(dropping.state_dict())
    batches = [torch.rand(2, 3, 32, 32) for _ in range(3)]
    torch.manual_seed(1)
    precise_bn(iter(batches), dropping)
    torch.manual_seed(1)
    precise_bn(iter(batches), plain)
    for (name, a), b in zip(dropping.state_dict().items(), plain.state_dict().values()):
        if "running_" in name:
            torch.testing.assert_close(a, b, msg=name)
    assert max(m.drop_prob for m in dropping.modules() if isinstance(m, DropPath)) > 0.5
