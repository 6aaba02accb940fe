"""Augmentation recipes (docs §6) and the invertible two views of FUGC's consistency loss."""

import numpy as np
import pytest
import torch

from rwkvlab.data.augment import TwoViews, consistency_loss, invert_view, train_transforms


@pytest.mark.parametrize("recipe,size", [("light", (32, 48)), ("acdc", (32, 32)), ("synapse", (32, 48)),
                                         ("synapse_scratch", (32, 32))])
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


# An image whose every pixel is distinct, so each output says which geometric transform made it.
GRID = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 32, 32)


def _geometry_of(out: torch.Tensor) -> str:
    """"rotation" or "mirror" when ``out`` is one of the 8 symmetries of the square applied to GRID, else "other"."""
    g = GRID[0]
    for k in range(4):
        if torch.equal(out[0], torch.rot90(g, k)):
            return "rotation"
        if torch.equal(out[0], torch.rot90(g, k).flip(-1)):
            return "mirror"
    return "other"


@pytest.mark.parametrize("recipe", ["acdc", "synapse_scratch"])
def test_release_flip_mirrors(recipe):
    """The release flips one random axis after its rot90: mirrored images occur (a flip of both axes at once
    would only ever rotate)."""
    t = train_transforms(recipe, (32, 32), seed=0)
    kinds = [_geometry_of(t({"image": GRID.clone(), "label": GRID.clone()})["label"]) for _ in range(200)]
    assert kinds.count("mirror") > 20 and kinds.count("rotation") > 20


@pytest.mark.parametrize("recipe", ["acdc", "synapse", "synapse_scratch"])
def test_release_crop_changes_the_field_of_view(recipe):
    """The crop shows a part of the image at the full size: values of the image go missing while the size
    stays (a zoom followed by a resize back would keep every value's neighbourhood and the whole view)."""
    t = train_transforms(recipe, (32, 32), seed=1)
    zoomed = 0
    for _ in range(300):
        out = t({"image": torch.ones(1, 32, 32) * 0.5, "label": GRID.clone()})["label"]
        assert out.shape == (1, 32, 32)
        present = set(out.unique().tolist()) - {0.0}
        if _geometry_of(out) == "other" and len(present) < 0.95 * 32 * 32 and present <= set(GRID.unique().tolist()):
            zoomed += 1
    assert zoomed > 5


def test_release_crop_window_is_the_resized_part():
    """With the crop forced: the output is a window of the input, resized with nearest neighbour, that keeps
    the full side exactly when the drawn ratio reaches 1."""
    from rwkvlab.data.augment import ReleaseCropd

    crop = ReleaseCropd(("image", "label"), (32, 32), prob=1.0)
    crop.set_random_state(0)
    smaller = 0
    for _ in range(50):
        out = crop({"image": GRID.clone(), "label": GRID.clone()})["label"][0]
        rows, cols = (out // 32).unique(), (out % 32).unique()
        # a contiguous window of rows and columns of the input
        assert torch.equal(rows, torch.arange(rows.min(), rows.max() + 1))
        assert torch.equal(cols, torch.arange(cols.min(), cols.max() + 1))
        assert torch.equal(out[0, 0], torch.tensor(float(rows.min() * 32 + cols.min())))
        smaller += len(rows) < 32 or len(cols) < 32
    assert 10 < smaller < 45  # r < 1 on a side about half the time


def test_release_intensity_matches_its_formula():
    from rwkvlab.data.augment import BrightnessContrastd

    t = BrightnessContrastd(prob=1.0)
    t.set_random_state(5)
    x = torch.rand(1, 8, 8) * 0.8
    rng = np.random.RandomState(5)
    rng.uniform()  # the draw that decides whether to apply
    b, c = rng.uniform(-0.2, 0.2), rng.uniform(0.8, 1.2)
    y = x.double() * (1 + b)
    expected = ((y - y.mean()) * c + y.mean()).clamp(0, 1)
    torch.testing.assert_close(t({"image": x})["image"].double(), expected, rtol=1e-5, atol=1e-6)
