"""MACs of volume models: hand counts of 3D layers, the 3D baselines' contract, and the command line at a 3D size."""

import pytest
import torch
from torch import nn

from rwkvlab import create_model, list_models
from rwkvlab.complexity import count_macs, model_complexity
from rwkvlab.complexity.__main__ import main


def conv_macs(n, c_in, c_out, size, kernel, stride, padding, groups=1):
    """Weights x output positions of a convolution, its output size from the textbook formula."""
    out = [(s + 2 * p - k) // st + 1 for s, k, st, p in zip(size, kernel, stride, padding)]
    positions = n * c_out
    for o in out:
        positions *= o
    k = 1
    for x in kernel:
        k *= x
    return positions * (c_in // groups) * k, out


def test_conv3d_formula_non_cubic():
    # Anisotropic kernel, stride and padding, groups, odd sizes: the count follows the weight shape and output size.
    conv = nn.Conv3d(4, 6, (3, 5, 1), stride=(2, 1, 3), padding=(1, 2, 0), groups=2)
    expected, out = conv_macs(2, 4, 6, (9, 10, 11), (3, 5, 1), (2, 1, 3), (1, 2, 0), groups=2)
    assert out == [5, 10, 4]
    c = count_macs(conv, (2, 4, 9, 10, 11))
    assert c.macs == {"conv": expected} and expected == 2 * 6 * 5 * 10 * 4 * 2 * 15
    assert c.params == 6 * 2 * 15 + 6


class Toy3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 8, 3, padding=1)
        self.bn = nn.BatchNorm3d(8)
        self.inorm = nn.InstanceNorm3d(8, affine=True)  # counts 0, as in 2D
        self.pool = nn.MaxPool3d(2)  # counts 0
        self.dw = nn.Conv3d(8, 8, 3, padding=1, groups=8, bias=False)
        self.up = nn.ConvTranspose3d(8, 4, 2, stride=2)
        self.tri = nn.Upsample(scale_factor=2, mode="trilinear")
        self.near = nn.Upsample(scale_factor=2, mode="nearest")  # counts 0
        self.head = nn.Conv3d(4, 3, 1)

    def forward(self, x):
        x = self.pool(self.inorm(self.bn(self.conv(x))))
        x = self.up(self.dw(x))
        x = nn.functional.interpolate(x, scale_factor=0.5, mode="trilinear")  # functional: counts 0
        return self.head(self.near(self.tri(x)))


def test_small_3d_net_by_hand():
    n, d, h, w = 2, 4, 6, 10
    v = d * h * w
    c = count_macs(Toy3d(), (n, 2, d, h, w))
    conv = n * v * 8 * 2 * 27  # 3x3x3, 2 -> 8
    dw = n * (v // 8) * 8 * 1 * 27  # depthwise at half size
    up = n * v * 4 * 8 * 8  # transposed 2x2x2, stride 2: output positions x in_chans x kernel (thop)
    # The functional halving takes the deconv's output back to v / 8 voxels; trilinear x2 gives v, nearest x2 8 v.
    head = n * (8 * v) * 3 * 4  # 1x1x1, 4 -> 3
    assert c.macs["conv"] == conv + dw + up + head
    assert c.macs["norm"] == 4 * n * 8 * v  # BatchNorm3d only
    assert c.macs["upsample"] == 31 * n * 4 * v  # trilinear, per output element
    assert set(c.macs) == {"conv", "norm", "upsample"}
    assert c.macs_g == pytest.approx((conv + dw + up + head + 4 * n * 8 * v + 31 * n * 4 * v) / 1e9)


def test_transposed_conv3d_is_eight_times_its_true_macs():
    # thop's rule, kept in 3D: output positions x in_chans x kernel, 2^3 x the products a 2x2x2/2 deconv does.
    deconv = nn.ConvTranspose3d(16, 8, 2, stride=2)
    true_macs = 1 * 4 * 4 * 4 * 16 * 8 * 8  # each input voxel meets the whole kernel once
    assert count_macs(deconv, (1, 16, 4, 4, 4)).macs["conv"] == 8 * true_macs


# The 3D baselines: registry, contract and counts.
BASELINES_3D = {"unet3d": (16, 22_625_380), "swin_unetr3d": (32, 62_186_806)}  # divisor, parameters (1 in, 4 out)


@pytest.mark.parametrize("name", BASELINES_3D)
def test_3d_baselines_contract(name):
    divisor, params = BASELINES_3D[name]
    assert name in list_models("*3d*")
    with torch.device("meta"):
        net = create_model(name, in_chans=1, num_classes=4)
        assert net.spatial_dims == 3 and net.size_divisor == (divisor,) * 3
        assert sum(p.numel() for p in net.parameters()) == params
        with pytest.raises(ValueError, match=rf"depth, height and width must be multiples of \({divisor}, {divisor}, "
                                             rf"{divisor}\).*got {divisor}x{divisor + 8}x{divisor}"):
            net(torch.zeros(1, 1, divisor, divisor + 8, divisor))
        with pytest.raises(ValueError, match=r"in_chans=1.*expected \(N, 1, D, H, W\)"):
            net(torch.zeros(1, 1, divisor, divisor))
        with pytest.raises(ValueError, match="in_chans=1"):
            net(torch.zeros(1, 2, divisor, divisor, divisor))
    with torch.device("meta"), pytest.raises(ValueError, match="num_classes"):
        create_model(name, num_classes=0)


@pytest.mark.parametrize("name", BASELINES_3D)
def test_3d_baselines_train_non_cubic(name):
    divisor, _ = BASELINES_3D[name]
    net = create_model(name, in_chans=1, num_classes=3).train()
    x = torch.randn(1, 1, divisor, divisor, 2 * divisor)
    y = net(x)
    assert y.shape == (1, 3, divisor, divisor, 2 * divisor) and torch.isfinite(y).all()
    y.square().mean().backward()
    # A conv bias right before a training-mode BatchNorm gets a zero gradient by construction (the norm removes
    # any constant), so only a missing gradient means a parameter forward never uses.
    assert not [n for n, p in net.named_parameters() if p.grad is None]


def test_unet3d_macs_scale_with_the_voxels():
    # Convolutions and BatchNorm only: every count is exactly proportional to the number of voxels.
    small, large = model_complexity("unet3d", (16, 32, 16), 2, 1), model_complexity("unet3d", 32, 2, 1)
    assert small.params == large.params and model_complexity("unet3d", 16, 2, 1).macs["conv"] * 8 == large.macs["conv"]
    assert small.macs["conv"] * 4 == large.macs["conv"] and small.macs["norm"] * 4 == large.macs["norm"]
    assert set(large.macs) == {"conv", "norm"}


def test_swin_unetr3d_books_window_attention():
    c = model_complexity("swin_unetr3d", 64, 2, in_chans=1)
    assert c.macs["attention"] > 0 and c.macs["linear"] > 0 and c.macs["conv"] > 0


def test_size_must_match_the_model_rank():
    with pytest.raises(ValueError, match="takes 3D inputs"):
        model_complexity("unet3d", (32, 32), 2)
    with pytest.raises(ValueError, match="takes 2D inputs"):
        model_complexity("unet", (32, 32, 32), 2)


def test_command_line_3d(capsys):
    assert main(["--model", "unet3d", "unet", "--size", "32", "--num-classes", "5", "--csv", "-"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "variant,params_m,macs_g,wkv_macs_g,paper_flops_g,rel_diff"
    assert [line.split(",")[0] for line in lines[1:]] == ["unet3d@32x32x32", "unet@32x32"]
    expected = model_complexity("unet3d", 32, 5, in_chans=1)  # a 3D model defaults to 1 input channel
    assert float(lines[1].split(",")[2]) == pytest.approx(expected.macs_g, abs=1e-3)
    assert main(["--model", "unet3d", "--size", "16", "32", "48", "--in-chans", "2", "--csv", "-"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[1].startswith("unet3d@16x32x48,")
    assert main(["--model", "unet3d", "--size", "32", "32"]) == 2
    assert "takes 3D inputs" in capsys.readouterr().err
    for argv in (["--size", "32"], ["--model", "unet3d"], ["--model", "unet3d", "--size", "1", "2", "3", "4"],
                 ["--model", "unet3d", "--size", "32", "--variants", "rwkv_unet_t"]):
        with pytest.raises(SystemExit):
            main(argv)


def recorded_wkv(name, input_shape, **kwargs):
    """6 x the elements of k at every Bi-WKV call of a real forward pass, recorded by wrapping the op where the model
    module calls it (independent of the counter's own mechanism)."""
    import rwkvlab.models.rwkv_unet as rwkv_unet

    seen = []
    original = rwkv_unet.bi_wkv

    def spy(k, *args, **kw):
        seen.append(k.numel())
        return original(k, *args, **kw)

    net = create_model(name, in_chans=input_shape[1], num_classes=2, **kwargs).eval()
    rwkv_unet.bi_wkv = spy
    try:
        with torch.no_grad():
            net(torch.zeros(*input_shape))
    finally:
        rwkv_unet.bi_wkv = original
    return net, 6 * sum(seen), len(seen)


RWKV_CASES = [("rwkv_unet_t", (1, 3, 32, 64), {})] + [
    (name, (1, 1, 32, 32, 64), kwargs) for name in ("rwkv_unet3d_t",)
    for kwargs in ({}, {"scan": "axes"})]


@pytest.mark.parametrize("name,shape,kwargs", RWKV_CASES, ids=lambda v: str(v) if isinstance(v, (str, dict)) else "")
def test_wkv_macs_follow_every_call_of_the_op(name, shape, kwargs):
    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    try:
        net, expected, calls = recorded_wkv(name, shape, **kwargs)
    except (TypeError, ValueError) as err:
        pytest.skip(f"{name} {kwargs}: {err}")
    assert calls > 0
    c = count_macs(net, shape)
    assert c.macs["wkv"] == expected
