"""Augmentation recipes (docs §6) and the invertible two views of FUGC's consistency loss."""

import pytest
import torch

from rwkvlab.data.augment import TwoViews, consistency_loss, invert_view, train_transforms


@pytest.mark.parametrize("recipe,size", [("light", (32, 48)), ("acdc", (32, 32))])
def test_recipes_keep_shapes_and_labels(recipe, size):
    t = train_transforms(recipe, size, seed=0)
    label = torch.zeros(1, *size)
    label[0, 8:20, 8:20] = 2
    for _ in range(20):
        out = t({"image": torch.rand(1, *size), "label": label.clone()})
        assert out["image"].shape == (1, *size) and out["label"].shape == (1, *size)
        assert set(out["label"].unique().tolist()) <= {0.0, 2.0}  # nearest: no interpolated labels


def test_recipe_is_seeded():
    a, b = (train_transforms("acdc", (32, 32), seed=3) for _ in range(2))
    x = {"image": torch.rand(1, 32, 32), "label": torch.zeros(1, 32, 32)}
    for _ in range(5):
        torch.testing.assert_close(a(dict(x))["image"], b(dict(x))["image"])


def test_acdc_recipe_needs_square_items():
    with pytest.raises(ValueError, match="square"):
        train_transforms("acdc", (32, 48), seed=0)


@pytest.mark.parametrize("shape", [(2, 16, 16), (2, 16, 24)])
def test_two_views_invert_exactly(shape):
    views = TwoViews(seed=0)
    x = torch.arange(torch.tensor(shape).prod().item(), dtype=torch.float32).reshape(shape)
    seen = set()
    for _ in range(30):
        out = views({"image": x})
        for name in ("1", "2"):
            k, flip = out[f"geom{name}"]
            seen.add((k, flip))
            geom_only = torch.flip(torch.rot90(x, k, dims=(-2, -1)), dims=(-1,)) if flip else torch.rot90(x, k, dims=(-2, -1))
            torch.testing.assert_close(invert_view(geom_only, (k, flip)), x)
    assert len(seen) == (8 if shape[1] == shape[2] else 4)


def test_consistency_loss_is_zero_for_an_equivariant_predictor():
    views = TwoViews(seed=1)
    logits = torch.randn(3, 16, 16)
    out = views({"image": logits})
    # A perfectly equivariant model predicts the transformed map of the same logits on each view.
    pred = {n: torch.flip(torch.rot90(logits, out[f"geom{n}"][0], dims=(-2, -1)), dims=(-1,))
            if out[f"geom{n}"][1] else torch.rot90(logits, out[f"geom{n}"][0], dims=(-2, -1)) for n in ("1", "2")}
    assert consistency_loss(pred["1"], pred["2"], out["geom1"], out["geom2"]) < 1e-12
    assert consistency_loss(pred["1"], torch.randn(3, 16, 16), out["geom1"], out["geom2"]) > 1e-3
