"""The volumetric RWKV-UNet (docs §18): shapes and gradients, the 3D Q-shift and Bi-WKV scans against float64
loops, anisotropic strides, and a guard that the 2D models did not move when the blocks learned a rank."""

import hashlib
import itertools
import math

import pytest
import torch

from rwkvlab import create_model
from rwkvlab.models.layers import q_shift, token_mix
from rwkvlab.models.rwkv_unet import SpatialMix, axis_fastest


def test_volume_keeps_its_size_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = create_model("rwkv_unet3d_t", in_chans=1, num_classes=5, drop_path_rate=0.0, ccm_drop_path=0.0)
    assert net.spatial_dims == 3 and net.size_divisor == (16, 16, 16)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 64, 64)).shape == (1, 5, 32, 64, 64)
    # the backward of 3D depthwise convolutions is slow on a CPU: a smaller volume reaches every parameter too
    # (the deepest stage still has 4 tokens: with 2, the decay multiplies distance - 1 = 0)
    y = net(torch.randn(1, 1, 16, 32, 32))
    assert y.shape == (1, 5, 16, 32, 32)
    y.square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient (built but unused?): {dead}"


def shift_loops(x, grid):
    """The six-neighbour shift by a loop over voxels and channels: group j of C // 6 reads the voxel at offset
    (-W, +W, -H, +H, -D, +D)[j], zero outside; the remaining channels stay."""
    n, t, c = x.shape
    d, h, w = grid
    g = c // 6
    offsets = [(0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0), (-1, 0, 0), (1, 0, 0)]
    m = x.reshape(n, d, h, w, c)
    out = torch.zeros_like(m)
    for z, i, j, ch in itertools.product(range(d), range(h), range(w), range(c)):
        dz, di, dj = offsets[ch // g] if ch < 6 * g else (0, 0, 0)
        if 0 <= z + dz < d and 0 <= i + di < h and 0 <= j + dj < w:
            out[:, z, i, j, ch] = m[:, z + dz, i + di, j + dj, ch]
    return out.reshape(n, t, c)


@pytest.mark.parametrize("grid,c", [((3, 4, 5), 13), ((1, 3, 2), 6), ((4, 1, 3), 8)])
def test_q_shift_3d_matches_loops(grid, c):
    x = torch.randn(2, math.prod(grid), c, dtype=torch.float64)
    torch.testing.assert_close(q_shift(x, grid), shift_loops(x, grid), rtol=0, atol=0)
    mu = torch.rand(c, dtype=torch.float64)
    (mixed,) = token_mix(x, grid, [mu])
    torch.testing.assert_close(mixed, shift_loops(x, grid) + mu * (x - shift_loops(x, grid)), rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match=r"T = D\*H\*W = 3\*4\*6"):
        token_mix(x, (3, 4, 6), [mu])


def axis_orders(grid):
    """For each axis, the row-major token indices visited with that axis fastest (the others in grid order)."""
    orders = []
    for axis in range(len(grid)):
        outer = [a for a in range(len(grid)) if a != axis] + [axis]
        seq = []
        for idx in itertools.product(*(range(grid[a]) for a in outer)):
            coord = dict(zip(outer, idx))
            seq.append(sum(coord[a] * math.prod(grid[a + 1:]) for a in range(len(grid))))
        orders.append(seq)
    return orders


def bi_wkv_loop(k, v, w, u):
    """Bi-WKV of one sequence by its definition, token by token: y_t = sum_i e^{L_ti} v_i / sum_i e^{L_ti},
    L_ti = k_i - (|t - i| - 1) w for i != t, L_tt = u + k_t. k, v: (N, T, C)."""
    n, t, c = k.shape
    y = torch.empty_like(k)
    for s in range(t):
        logits = torch.stack([u + k[:, s] if i == s else k[:, i] - (abs(s - i) - 1) * w for i in range(t)])
        weights = torch.exp(logits - logits.max(0).values)
        y[:, s] = (weights * v.transpose(0, 1)).sum(0) / weights.sum(0)
    return y


def spatial_mix_loop(mix, x, grid, scan):
    """SpatialMix (docs §2, §18) in float64 from its parameters, with the loops above."""
    xx = shift_loops(x, grid)
    k, v, r = ((xx + mu * (x - xx)) @ lin.weight.T for mu, lin in
               ((mix.mu_k, mix.key), (mix.mu_v, mix.value), (mix.mu_r, mix.receptance)))
    t = x.shape[1]
    w, u = mix.decay / t, mix.first / t
    orders = axis_orders(grid) if scan == "axes" else [list(range(t))]
    y = torch.zeros_like(k)
    for seq in orders:
        y[:, seq] += bi_wkv_loop(k[:, seq], v[:, seq], w, u) / len(orders)
    mean, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
    y = (y - mean) / torch.sqrt(var + mix.key_norm.eps) * mix.key_norm.weight + mix.key_norm.bias
    return (torch.sigmoid(r) * y) @ mix.output.weight.T


@pytest.mark.parametrize("scan", ["raster", "axes"])
def test_spatial_mix_3d_matches_float64_loops(scan):
    torch.manual_seed(0)
    grid, c = (2, 3, 4), 12
    mix = SpatialMix(c, init="vrwkv", layer=1, n_layers=3, scan=scan).double()
    with torch.no_grad():  # away from the initial values, so that position matters
        for p in (mix.decay, mix.first, mix.key_norm.weight, mix.key_norm.bias):
            p.add_(torch.randn_like(p) * 3)
    x = torch.randn(2, math.prod(grid), c, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mix(x, grid), spatial_mix_loop(mix, x, grid, scan), rtol=1e-9, atol=1e-10)


def test_axes_scan_orders_are_permutations_and_differ_from_raster():
    torch.manual_seed(0)
    for grid in ((3, 4, 5), (4, 6)):
        x = torch.randn(2, math.prod(grid), 3)
        for axis, seq in enumerate(axis_orders(grid)):
            fastest = axis_fastest(x, grid, axis)
            torch.testing.assert_close(fastest, x[:, seq], rtol=0, atol=0)
            torch.testing.assert_close(axis_fastest(fastest, grid, axis, inverse=True), x, rtol=0, atol=0)
        assert axis_orders(grid)[-1] == list(range(x.shape[1]))  # the last axis fastest is raster order
    raster, axes = SpatialMix(8, init="vrwkv"), SpatialMix(8, init="vrwkv", scan="axes")
    axes.load_state_dict(raster.state_dict())
    x = torch.randn(1, 60, 8)
    with torch.no_grad():
        assert not torch.allclose(raster(x, (3, 4, 5)), axes(x, (3, 4, 5)), atol=1e-4)


def test_anisotropic_strides_give_the_input_size_back():
    torch.manual_seed(0)
    net = create_model("rwkv_unet3d_t", in_chans=2, num_classes=3, strides=[[1, 2, 2], [2, 2, 2], 2, [1, 2, 2]],
                       scan="axes")
    assert net.size_divisor == (4, 16, 16)
    assert [f["reduction"] for f in net.encoder.feature_info] == [(1, 2, 2), (2, 4, 4), (4, 8, 8), (4, 16, 16)]
    with torch.no_grad():
        assert net(torch.randn(1, 2, 4, 32, 48)).shape == (1, 3, 4, 32, 48)
    with pytest.raises(ValueError, match=r"depth, height and width must be multiples of \(4, 16, 16\), got 6x32x48"):
        net(torch.randn(1, 2, 6, 32, 48))
    with pytest.raises(ValueError, match=r"expected \(N, 2, D, H, W\)"):
        net(torch.randn(1, 2, 32, 48))


@pytest.mark.parametrize("mixer", ["none", "mhsa", "focused_linear", "bi_mamba"])
def test_ablation_mixers_take_volumes(mixer):
    net = create_model("rwkv_unet3d_t", num_classes=2, mixer=mixer, skips=2, ccm_rate=3, decoder_kernel=3,
                       wkv_init="vrwkv", norm="pre")
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 32)).shape == (1, 2, 16, 16, 32)


@pytest.mark.parametrize("kwargs,match", [
    ({"strides": [[1, 2], 2, 2, 2]}, r"one per axis \(D, H, W\)"),
    ({"strides": [2, 2, 2]}, "one stride per stage"),
    ({"scan": "zigzag"}, "scan must be one of raster, axes"),
    ({"scan": "axes", "mixer": "mhsa"}, "scan='axes' orders the Bi-WKV of mixer='spatial_mix'"),
    ({"spatial_dims": 2}, "rwkv_unet3d_t is volumetric"),
    ({"encoder": "resnet50"}, "spatial_dims=3 needs encoder='rwkv'"),
])
def test_bad_volume_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("rwkv_unet3d_t", **kwargs)


def test_images_refuse_anisotropic_strides():
    with pytest.raises(ValueError, match="anisotropic strides are for volumes"):
        create_model("rwkv_unet_t", strides=[[1, 2], 2, 2, 2])


def fingerprint(name, **kwargs):
    """State-dict keys and shapes (hashed), a position-weighted float64 checksum of the initial weights (catches a
    changed RNG order) and one of the eval-mode output on a fixed 32x48 image."""
    torch.manual_seed(0)
    net = create_model(name, in_chans=1, num_classes=3, **kwargs).eval()
    sd = net.state_dict()
    keys = hashlib.sha256("\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items()).encode()).hexdigest()[:16]
    weights = sum((i + 1) * (v.double().flatten() * torch.cos(torch.arange(v.numel(), dtype=torch.float64))).sum()
                  for i, v in enumerate(sd.values()) if v.is_floating_point()).item()
    with torch.no_grad():
        y = net(torch.linspace(-2, 2, 32 * 48).reshape(1, 1, 32, 48))
    out = (y.double() * torch.cos(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape)).sum().item()
    return keys, weights, out


# Measured on the code before the blocks took a spatial rank (docs §18), the weights and outputs re-measured when
# the CCM began keeping PyTorch's default initialisation as the release does (docs §21; the keys did not move).
# Keys must not move at all. The weights' sum moves in its ninth digit between CPUs whose vector units evaluate the
# initialisers' float32 math differently (AMD EPYC AVX2 against Intel Xeon AVX512), so it is compared to 1e-7, a
# far finer than any change of an initialiser (the CCM's default init moved it by 30%); the
# output checksum has a float32 tolerance for the same reason.
FINGERPRINTS_2D = [
    ({}, ("7234be74cce5d946", 4968.680323988173, 0.45578975242108577)),
    ({"wkv_init": "vrwkv", "norm": "pre", "channel_mix": True},
     ("9d81303a1a1f0563", 12523.237134791976, 0.6101346523495104)),
    ({"mixer": "focused_linear", "skips": 1}, ("abe24cf1aad1076c", 17158.486014784732, -0.006828573890388911)),
]


@pytest.mark.parametrize("kwargs,expected", FINGERPRINTS_2D)
def test_2d_model_did_not_move(kwargs, expected):
    keys, weights, out = fingerprint("rwkv_unet_t", **kwargs)
    assert keys == expected[0]
    assert weights == pytest.approx(expected[1], rel=1e-7)
    assert out == pytest.approx(expected[2], rel=1e-4, abs=1e-6)
