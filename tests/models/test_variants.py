"""Every ablation variant of the paper is a configuration of the one model (docs §10), and travels by name + kwargs."""

import math
from pathlib import Path

import pytest
import torch

from rwkvlab import config, create_model
from rwkvlab.models.rwkv_unet import SIZES

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = config.load(ROOT / "tests" / "params.yaml").ablate.variants


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_the_paper_rows_are_all_variants():
    names = set(VARIANTS)
    assert {"attn_spatial_mix", "attn_none", "attn_mhsa", "attn_fla", "attn_bimamba"} <= names
    # the paper's tables, and Table 14 beyond the paper (docs §17)
    assert {v.table for v in VARIANTS.values()} == {"2", "6", "7", "8", "9", "10", "11", "12", "13", "14"}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_builds_by_name(name):
    v = VARIANTS[name]
    with torch.device("meta"):
        net = create_model(v.model, in_chans=1, num_classes=v.num_classes, **v.kwargs)

    def as_tuples(x):
        return tuple(map(as_tuples, x)) if isinstance(x, (list, tuple)) else x

    # the variant is what it says: every setting reaches the model's configuration, none is dropped on the way
    assert {k: as_tuples(getattr(net.cfg, k)) for k in v.kwargs} == {k: as_tuples(x) for k, x in v.kwargs.items()}


@pytest.mark.parametrize("kwargs", [{"mixer": "none"}, {"mixer": "mhsa"}, {"mixer": "focused_linear"},
                                    {"mixer": "bi_mamba"}, {"channel_mix": True}, {"mix_stages": (0, 1, 2, 3)},
                                    {"skips": 0}, {"skips": 1, "ccm": False}, {"skips": 2}, {"decoder_kernel": 3},
                                    {"ccm_rate": 4}])
def test_variants_run_non_square_and_every_parameter_learns(kwargs):
    net = create_model("rwkv_unet_t", in_chans=3, num_classes=3, drop_path_rate=0.0, ccm_drop_path=0.0, **kwargs)
    y = net.train()(torch.randn(2, 3, 32, 48))
    assert y.shape == (2, 3, 32, 48)
    y.square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_channel_mix_adds_exactly_its_layers():
    # Per mixing block of width dm: key dm x 2dm, value 2dm x dm, receptance dm x dm, two mu (dm each),
    # its LayerNorm over 2dm and the residual's LayerNorm over dm (weight + bias each).
    base, with_cmix = create_model("rwkv_unet_t"), create_model("rwkv_unet_t", channel_mix=True)
    cfg = SIZES["t"]
    dms = [int(cfg.dims[i] * cfg.expansions[i]) for i in cfg.mix_stages for _ in range(cfg.depths[i] - 1)]
    assert n_params(with_cmix) - n_params(base) == sum(5 * d * d + 2 * d + 4 * d + 2 * d for d in dms)


def test_skips_are_dropped_deepest_first():
    e0, e1, e2, _ = SIZES["t"].dims
    net = create_model("rwkv_unet_t", skips=2)
    # The stage-3 skip is gone: the first up-block after the bottleneck takes e2 channels, not 2 e2.
    assert net.decoder[1][0][0].in_channels == e2
    assert net.decoder[2][0][0].in_channels == 2 * e1 and net.decoder[3][0][0].in_channels == 2 * e0
    # CCM mixes all three stages (the paper's Table 11 FLOPs) and returns the two kept skips
    assert net.ccm.dims == (e0, e1, e2) and net.ccm.keep == 2 and len(net.ccm.out) == 2
    assert create_model("rwkv_unet_t", skips=2, ccm_over="kept").ccm.dims == (e0, e1)
    assert create_model("rwkv_unet_t", skips=0).ccm is None and create_model("rwkv_unet_t", ccm=False).ccm is None


def test_timm_encoder_widths_come_from_feature_info():
    net = create_model("rwkv_unet_t", num_classes=2, encoder="resnet18")
    widths = [f["num_chs"] for f in net.encoder.feature_info]
    assert widths == [64, 128, 256, 512]
    assert net.decoder[0][0][0].in_channels == 512 and net.ccm.dims == (64, 128, 256)
    assert net(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)


@pytest.mark.parametrize("kwargs,match", [
    ({"mixer": "lstm"}, "mixer must be none or one of"), ({"skips": 5}, "skips must be"),
    ({"decoder_kernel": 4}, "decoder_kernel must be an odd"), ({"bogus": 1}, r"unknown model keyword argument\(s\) \['bogus'\]"),
    ({"encoder": "not_a_timm_model"}, "is not a timm model"),
])
def test_bad_settings_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("rwkv_unet_t", **kwargs)


def test_input_checks_name_what_is_allowed():
    with pytest.raises(ValueError, match="in_chans=1"):
        create_model("rwkv_unet_t", in_chans=1)(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiples of 16"):
        create_model("rwkv_unet_t")(torch.randn(1, 3, 40, 32))
    with torch.device("meta"):
        maxvit = create_model("rwkv_unet_b", num_classes=9, encoder="maxvit_small_tf_224", img_size=224)
    with pytest.raises(ValueError, match="multiples of 224"):
        maxvit(torch.zeros(1, 3, 256, 256, device="meta"))


def test_any_input_size_including_512():
    with torch.device("meta"):
        net = create_model("rwkv_unet_b", num_classes=9)
        assert net(torch.zeros(1, 3, 512, 512)).shape == (1, 9, 512, 512)


@pytest.mark.parametrize("skips", [1, 2])
def test_ccm_over_all_stages_carries_the_dropped_stages_into_the_kept_skips(skips):
    """Table 11: with CCM over all three stages the kept skips depend on the deeper stages' features; over the kept
    skips only, they depend on nothing deeper than themselves."""
    for ccm_over, reaches in (("all", True), ("kept", False)):
        torch.manual_seed(0)
        model = create_model("rwkv_unet_t", num_classes=2, skips=skips, ccm_over=ccm_over).eval()
        feats = [f.detach().requires_grad_(True) for f in model.encoder.forward_intermediates(torch.rand(1, 3, 64, 64))]
        mixed = model.ccm(feats[: len(model.ccm.dims)])
        assert len(mixed) == skips and [m.shape for m in mixed] == [f.shape for f in feats[:skips]]
        grads = torch.autograd.grad(sum(m.sum() for m in mixed), feats[: len(model.ccm.dims)], allow_unused=True)
        deeper = [g for g in grads[skips:]]
        assert bool(deeper) == reaches
        assert all(g is not None and g.abs().sum() > 0 for g in deeper)


def _wkv_outputs(model, x):
    """The Bi-WKV output of the first spatial mix of ``model`` on ``x``, (N, T, C)."""
    from rwkvlab.models import rwkv_unet

    captured = []
    original = rwkv_unet.bi_wkv

    def spy(*args):
        out = original(*args)
        captured.append(out)
        return out

    rwkv_unet.bi_wkv = spy
    try:
        with torch.no_grad():
            model.encoder.forward_intermediates(x)
    finally:
        rwkv_unet.bi_wkv = original
    return captured[0]


def test_vrwkv_init_is_position_dependent_and_release_is_not():
    """At init the release's spatial mix (decay = first = 0) pools globally: its WKV output is the same at every
    token. Vision-RWKV's graded decay makes it depend on the position."""
    x = torch.rand(2, 3, 64, 64)
    spread = {}
    for init in ("release", "vrwkv"):
        torch.manual_seed(0)
        y = _wkv_outputs(create_model("rwkv_unet_t", wkv_init=init), x).double()
        spread[init] = ((y - y.mean(1, keepdim=True)).abs().max() / y.abs().max()).item()
    assert spread["release"] < 1e-5 and spread["vrwkv"] > 1e-2, spread


def test_vrwkv_init_follows_the_published_formula():
    from rwkvlab.models.rwkv_unet import SpatialMix, vrwkv_init

    model = create_model("rwkv_unet_t", wkv_init="vrwkv")
    mixes = [m for m in model.modules() if isinstance(m, SpatialMix)]
    assert len(mixes) == 4  # t: stages 3-4, depths 4 and 2, the first block of each stage does not mix
    c = mixes[-1].decay.numel()
    last = vrwkv_init(c, 3, 4)  # the deepest: r01 = 1, r1a0 = 1/4
    assert abs(last["decay"][0] + 5) < 1e-6 and abs(last["decay"][-1] - 3) < 1e-6
    h = c // 2
    assert abs(last["decay"][h] - (-5 + 8 * (h / (c - 1)) ** 2.0)) < 1e-5
    assert abs(last["mu_v"][h] - ((h / c) ** 0.25 + 0.3)) < 1e-6
    assert abs(last["first"][0] - (math.log(0.3))) < 1e-6 and abs(last["first"][1] - (math.log(0.3) + 0.5)) < 1e-6
    torch.testing.assert_close(mixes[-1].decay.detach(), last["decay"])
    torch.testing.assert_close(mixes[0].mu_k.detach(), vrwkv_init(mixes[0].decay.numel(), 0, 4)["mu_k"])


def test_pre_norm_normalises_the_mixer_input():
    """norm="pre": the mixer sees LN(x) and the residual adds its output unnormalised; "post" the reverse. Same
    parameters either way."""
    from rwkvlab.models.rwkv_unet import GLSPBlock

    torch.manual_seed(0)
    post = GLSPBlock(16, 16, 32, norm="ln", mixer="spatial_mix", mix_norm="post").eval()
    pre = GLSPBlock(16, 16, 32, norm="ln", mixer="spatial_mix", mix_norm="pre").eval()
    pre.load_state_dict(post.state_dict())
    seen = {}
    for name, block in (("post", post), ("pre", pre)):
        block.mix.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, args[0]))
        with torch.no_grad():
            block(torch.randn(1, 16, 8, 8) * 5)
    assert abs(seen["pre"].mean(-1)).max() < 1e-5 and abs(seen["pre"].std(-1, unbiased=False) - 1).max() < 1e-3
    assert seen["post"].mean(-1).min() > 0.05  # post: the mixer sees the expansion's ReLU output as it is
    assert n_params(create_model("rwkv_unet_t", norm="pre")) == n_params(create_model("rwkv_unet_t"))
