"""Effective receptive fields (docs §12) against cases with a known answer."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from rwkvlab import config, create_model
from rwkvlab.data import DataError
from rwkvlab.engine.checkpoint import save_checkpoint
from rwkvlab.erf import main
from rwkvlab.report.erf import (area_ratio, area_ratio_table, erf_figure, erf_map, load_images, probe_model,
                                scale_erf, variant_erfs, write_erf)

ROOT = Path(__file__).resolve().parents[2]
ROOT_IMAGES = ROOT / "data" / "demo" / "images"


class ConvStack(nn.Module):
    """k x k convolutions (stride 1, zero padding) with positive weights, as an encoder: every stage
    map is linear in the input with a positive weight on each pixel of its theoretical field."""

    def __init__(self, layers: int = 3, k: int = 3, chs: int = 4, out_chs: int = 4) -> None:
        super().__init__()
        widths = [3] + [chs] * (layers - 1) + [out_chs]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, k, padding=k // 2, bias=False) for a, b in zip(widths, widths[1:]))
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.uniform_(0.1, 1.0)

    def forward_intermediates(self, x):
        feats = []
        for conv in self.convs:
            x = conv(x)
            feats.append(x)
        return feats


class GlobalAttention(nn.Module):
    """A 1x1 embedding then one multi-head self-attention layer over all pixels: a global field."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 1)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward_intermediates(self, x):
        x = self.embed(x)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = self.attn(t, t, t, need_weights=False)[0]
        return [t.transpose(1, 2).reshape(n, c, h, w)]


class Segmenter(nn.Module):
    """A model whose encoder is probed through ``model.encoder`` (as RWKVUNet)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder


def images(n, h, w):
    return torch.rand(n, 3, h, w) * 0.5 + 0.5  # > 0 so that every centre output is positive


def square(shape, half, centre=None):
    h, w = shape
    ch, cw = centre or (h // 2, w // 2)
    inside = np.zeros(shape, bool)
    inside[max(ch - half, 0) : ch + half + 1, max(cw - half, 0) : cw + half + 1] = True
    return inside


@pytest.mark.parametrize("shape", [(17, 17), (16, 20), (21, 14)])
@pytest.mark.parametrize("stage,half", [(0, 1), (1, 2), (2, 3), (-1, 3)])
def test_conv_stack_erf_is_its_receptive_field(shape, stage, half):
    erf = erf_map(Segmenter(ConvStack()), images(3, *shape), stage=stage)
    inside = square(shape, half)  # (2 * layers + 1)^2 square of 3x3 convs around (h // 2, w // 2)
    assert erf.shape == shape
    assert (erf[~inside] == 0).all() and (erf[inside] > 0).all()


def test_single_conv_erf_is_its_kernel():
    """One conv, one output channel: d out[c] / d x[c + d] = w[d], summed over the colour channels."""
    enc = ConvStack(layers=1, out_chs=1)
    with torch.no_grad():  # the probe enables gradients itself
        erf = erf_map(enc, images(2, 9, 11))
    expected = np.zeros((9, 11))
    expected[3:6, 4:7] = enc.convs[0].weight[0].sum(0).double().detach().numpy()
    np.testing.assert_allclose(erf, expected, rtol=1e-6)


def test_global_attention_erf_reaches_far_from_the_centre():
    shape = (24, 24)
    erf = erf_map(GlobalAttention(), images(3, *shape))
    far = ~square(shape, 6)  # more than 6 pixels from the centre: beyond a 3-layer 3x3 stack's field
    assert np.isfinite(erf).all() and (erf >= 0).all()
    assert (erf[far] > 0).mean() > 0.9
    assert erf[far].sum() / erf.sum() > 0.5
    conv = erf_map(ConvStack(), images(3, *shape))
    assert area_ratio(erf)["0.5"] > 4 * area_ratio(conv)["0.5"]


class SquaredInput(ConvStack):
    """The conv stack on x^2: its input gradient depends on the input (a NaN pixel makes it NaN)."""

    def forward_intermediates(self, x):
        return super().forward_intermediates(x * x)


def test_nan_maps_are_skipped(caplog):
    enc = SquaredInput()
    good = images(2, 13, 13)
    bad = good[:1].clone()
    bad[0, 0, 6, 6] = float("nan")
    with caplog.at_level(logging.WARNING, logger="rwkvlab.report.erf"):
        erf = erf_map(enc, torch.cat([good[:1], bad, good[1:]]))
    np.testing.assert_allclose(erf, erf_map(enc, good))
    assert "skipped 1 of 3" in caplog.text
    with pytest.raises(ValueError, match="not finite"):
        erf_map(enc, bad)


def test_erf_map_rejects_bad_input():
    with pytest.raises(ValueError, match="images must lie in"):
        erf_map(ConvStack(), torch.full((1, 3, 8, 8), 2.0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        erf_map(ConvStack(), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="stage 3 is out of range"):
        erf_map(ConvStack(), images(1, 8, 8), stage=3)
    with pytest.raises(ValueError, match="forward_intermediates"):
        erf_map(nn.Conv2d(3, 3, 3), images(1, 8, 8))


def test_rwkv_unet_t_erf_peaks_near_the_centre():
    net = create_model("rwkv_unet_t")
    erf = erf_map(net, load_images(ROOT_IMAGES, (64, 64), 2))
    assert not net.training
    assert erf.shape == (64, 64) and np.isfinite(erf).all() and (erf >= 0).all() and erf.max() > 0
    # At init the field is broad and noisy (the peak pixel wanders): compare 16x16 blocks.
    blocks = erf.reshape(4, 16, 4, 16).mean((1, 3))
    assert set(np.unravel_index(blocks.argmax(), blocks.shape)) <= {1, 2}  # one of the 4 central blocks
    assert erf[square((64, 64), 4)].mean() > erf.mean()


@pytest.mark.parametrize("n", [101, 201])
def test_area_ratio_of_a_uniform_map_is_close_to_t(n):
    ratios = area_ratio(np.ones((n, n)))
    for t in (0.2, 0.3, 0.5, 0.99):
        # The smallest odd side s with s^2 > t n^2 is below sqrt(t) n + 2.
        assert 0 < ratios[f"{t:g}"] - t <= 4 / n + 4 / n**2


@pytest.mark.parametrize("shape,expected", [
    # odd, non-square 5x7, centre (2, 3): squares 1, 3x3, 5x5, then 5x7 (cut by the grid)
    ((5, 7), {"0.2": 9 / 35, "0.3": 25 / 35, "0.5": 25 / 35, "0.99": 1.0}),
    # even 4x6, centre (2, 3): 1, 3x3, 4x5 (rows 0..4 cut to 0..3), then the grid
    ((4, 6), {"0.2": 9 / 24, "0.3": 9 / 24, "0.5": 20 / 24, "0.99": 1.0}),
])
def test_area_ratio_of_a_uniform_map_on_a_small_grid(shape, expected):
    assert area_ratio(np.full(shape, 3.0)) == pytest.approx(expected)


@pytest.mark.parametrize("shape", [(9, 9), (8, 10), (1, 1)])
def test_area_ratio_of_a_central_pixel_is_one_pixel(shape):
    erf = np.zeros(shape)
    erf[shape[0] // 2, shape[1] // 2] = 5.0
    assert area_ratio(erf) == {k: 1 / (shape[0] * shape[1]) for k in ("0.2", "0.3", "0.5", "0.99")}


def test_area_ratio_uses_the_displayed_scaling():
    """log10(erf + 1) flattens a peak: the ratio is taken on the scaled map, as displayed."""
    erf = np.zeros((3, 3))
    erf[1, 1] = 99.0  # scaled: 1 at the centre
    erf[0, 0] = 9.0  # scaled: 0.5, one third of the total; unscaled it would be under a tenth
    assert scale_erf(erf)[0, 0] == pytest.approx(0.5)
    assert area_ratio(erf, (0.6, 0.7)) == {"0.6": pytest.approx(1 / 9), "0.7": 1.0}


def test_area_ratio_rejects_bad_input():
    with pytest.raises(ValueError, match="thresholds"):
        area_ratio(np.ones((3, 3)), (1.0,))
    with pytest.raises(ValueError, match="zero everywhere"):
        area_ratio(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        area_ratio(-np.ones((3, 3)))


def test_write_erf(tmp_path):
    erf = np.random.default_rng(0).random((12, 16))
    ratios = write_erf(tmp_path / "out", erf, "random")
    assert json.loads((tmp_path / "out/area_ratio.json").read_text()) == ratios == area_ratio(erf)
    assert list(ratios) == ["0.2", "0.3", "0.5", "0.99"]
    np.testing.assert_array_equal(np.load(tmp_path / "out/erf.npy"), erf)
    assert (tmp_path / "out/erf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["area_ratio.json", "erf.npy", "erf.png"]


def test_figure_and_table():
    centre = np.zeros((9, 9))
    centre[4, 4] = 1.0
    maps = {"at init": {"a": np.ones((9, 9)), "b": centre}, "after training": {"a": centre, "b": np.ones((9, 9))}}
    fig = erf_figure(maps)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"] and fig.axes[2].get_ylabel() == "after training"
    table = area_ratio_table(maps)
    assert table[["variant", "state"]].values.tolist() == [["a", "at init"], ["a", "after training"],
                                                           ["b", "at init"], ["b", "after training"]]
    assert table["t=0.99"].tolist() == [100.0, round(100 / 81, 2), round(100 / 81, 2), 100.0]


def test_load_images(tmp_path):
    Image.fromarray(np.full((10, 20, 3), (255, 0, 51), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    x = load_images(tmp_path, (8, 16), 2)
    assert x.shape == (2, 3, 8, 16) and x.dtype == torch.float32
    assert (x[0] == 0).all()  # sorted by name: a.jpg first
    torch.testing.assert_close(x[1, :, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    grey = load_images(tmp_path, (8, 16), 2, in_chans=1)
    torch.testing.assert_close(grey[1, 0, 0, 0], torch.tensor(0.299 + 0.114 * 0.2))
    with pytest.raises(DataError, match="2 PNG/JPEG image"):
        load_images(tmp_path, (8, 16), 3)
    with pytest.raises(DataError, match="folder not found"):
        load_images(tmp_path / "missing", (8, 16), 1)


def test_probe_model_at_init_and_trained(tmp_path):
    a, _ = probe_model("rwkv_unet_t", {"decoder_kernel": 5}, seed=3)
    b, _ = probe_model("rwkv_unet_t", {"decoder_kernel": 5}, seed=3)
    assert not a.training and a.cfg.decoder_kernel == 5
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    trained = create_model("rwkv_unet_t", in_chans=1, num_classes=3)
    kwargs = {"in_chans": 1, "num_classes": 3}
    save_checkpoint(tmp_path / "last.pt", {"model": trained.state_dict(), "model_name": "rwkv_unet_t",
                                           "config": kwargs, "model_kwargs": kwargs})
    model, in_chans = probe_model("rwkv_unet_t", {}, tmp_path / "last.pt")
    assert in_chans == 1
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(ValueError, match="trained as 'rwkv_unet_t'"):
        probe_model("rwkv_unet_s", {}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="other settings"):
        probe_model("rwkv_unet_t", {"num_classes": 2}, tmp_path / "last.pt")


def test_command_line(tmp_path, capsys):
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), np.uint8)).save(tmp_path / f"{i}.png")
    assert main(["--model", "rwkv_unet_t", "--images", str(tmp_path), "--size", "32", "48", "--n", "2",
                 "--out", str(tmp_path / "out"), "--stage", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "out/area_ratio.json").read_text())
    assert np.load(tmp_path / "out/erf.npy").shape == (32, 48)
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load((ROOT / "tests" / "params.yaml").read_text())
    raw["ablate"].update(trained=[], variants={"lp": {"table": "2", "kwargs": {"mixer": "none"}}})
    params.write_text(yaml.safe_dump(raw))
    assert main(["--model", "rwkv_enc_t", "--variant", "lp", "--params", str(params), "--images", str(tmp_path),
                 "--size", "32", "32", "--n", "1", "--out", str(tmp_path / "lp"), "--seed", "4"]) == 0
    torch.manual_seed(4)
    expected = erf_map(create_model("rwkv_enc_t", mixer="none"), load_images(tmp_path, (32, 32), 1))
    np.testing.assert_allclose(np.load(tmp_path / "lp/erf.npy"), expected)


def test_variant_erfs_probes_each_variant_at_init_and_trained(tmp_path):
    p = config.load(ROOT / "tests" / "params.yaml", **{
        "base.device": "cpu", "base.checkpoints_dir": str(tmp_path / "ckpt"), "base.reports_dir": str(tmp_path / "reports"),
        "ablate.model": "rwkv_unet_t", "ablate.trained": [],
        "ablate.variants": {"v_none": {"table": "2", "kwargs": {"mixer": "none"}}, "v_mix": {"table": "2"}},
        "erf.variants": ["v_none", "v_mix"], "erf.images": str(ROOT_IMAGES), "erf.size": [32, 32], "erf.n": 1,
        "erf.stage": -1, "erf.seed": 5, "erf.checkpoint": "last"})
    trained = {}
    for variant, kwargs in (("v_none", {"mixer": "none"}), ("v_mix", {})):
        trained[variant] = create_model("rwkv_unet_t", **kwargs)
        save_checkpoint(tmp_path / f"ckpt/ablate/{variant}/last.pt",
                        {"model": trained[variant].state_dict(), "model_name": "rwkv_unet_t",
                         "config": {"in_chans": 3, "num_classes": 2},
                         "model_kwargs": {"in_chans": 3, "num_classes": 2, **kwargs}})
    images = load_images(ROOT_IMAGES, (32, 32), 1)
    maps = variant_erfs(p, images)
    assert list(maps) == ["at init", "after training"] and list(maps["at init"]) == ["v_none", "v_mix"]
    for variant, kwargs in (("v_none", {"mixer": "none"}), ("v_mix", {})):
        np.testing.assert_allclose(maps["after training"][variant], erf_map(trained[variant], images))
        torch.manual_seed(5)
        np.testing.assert_allclose(maps["at init"][variant], erf_map(create_model("rwkv_unet_t", **kwargs), images))
        for state in ("init", "trained"):
            assert (tmp_path / f"reports/erf/{variant}/{state}/area_ratio.json").is_file()
