"""Every baseline goes through the same engine as RWKV-UNet: one epoch of fit, a checkpoint that rebuilds the model,
the test split scored, and the complexity counted from the checkpoint alone (issue 11)."""

import dataclasses
import math

import pytest
import torch
from monai.utils import set_determinism

from rwkvlab.complexity import trained_complexity
from rwkvlab.config import recipe_with_defaults
from rwkvlab.engine.evaluate import evaluate_split, summarize
from rwkvlab.engine.inference import load_trained
from rwkvlab.engine.train import fit
from rwkvlab.models import create_model

BASELINES = ["unet", "att_unet", "unet_pp", "r50_unet", "transunet", "swin_unet"]
RECIPE = recipe_with_defaults(epochs=1, batch_size=3, lr=1e-3, min_lr=1e-5, weight_decay=1e-4, ce_weight=0.5, dice_weight=1.0)
CPU = torch.device("cpu")


@pytest.mark.parametrize("name", BASELINES)
def test_a_baseline_trains_scores_and_counts_in_the_engine(name, data, tmp_path, one_thread):
    if name == "swin_unet":  # its deepest stage is 1/32 of the input: at 32 px a single pixel, BatchNorm refuses
        up = lambda a: a.repeat(2, axis=1).repeat(2, axis=2)  # noqa: E731
        data = dataclasses.replace(data, images=up(data.images), masks=up(data.masks), sizes=data.sizes * 2)
    size = list(data.images.shape[1:3])
    history = fit(name, data, RECIPE, tmp_path, seed=0, device=CPU)
    assert len(history) == 1 and math.isfinite(history["train_loss"].iloc[0])
    model, state = load_trained(tmp_path, "last", CPU)
    assert state["model_name"] == name and state["meta"]["image_size"] == size
    per_case, preds = evaluate_split(model, data, "test", 2, CPU)
    assert sorted(preds) == ["c8", "c9"] and 0 <= summarize(per_case)["dsc"] <= 100
    counted = trained_complexity(tmp_path / "last.pt")
    assert counted.params == sum(p.numel() for p in model.parameters()) and counted.macs_g > 0
    # the optimizer step moved the weights away from the seeded initialisation fit started from
    set_determinism(0)
    init = create_model(name, **state["model_kwargs"]).state_dict()
    assert any(not torch.equal(init[k], v) for k, v in state["model"].items() if v.is_floating_point()), name
