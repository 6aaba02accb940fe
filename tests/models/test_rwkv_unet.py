"""RWKV-UNet against the counts of docs §5 and the shape contract of docs §4."""

import pytest
import torch

from rwkvlab import create_model, list_models
from rwkvlab.models.layers import q_shift


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# docs §5: encoder without head (paper Table 1), full model without head, and with the
# 1000-class head the authors' release builds (their README).
COUNTS = {"t": (2.94e6, 3.15e6, 3.31e6), "s": (9.42e6, 9.70e6, 9.90e6), "b": (16.69e6, 17.13e6, 17.37e6)}


@pytest.mark.parametrize("size", ["t", "s", "b"])
def test_parameter_counts(size):
    encoder, full, full_with_head = COUNTS[size]
    enc = create_model(f"rwkv_enc_{size}", num_classes=0)
    net = create_model(f"rwkv_unet_{size}", num_classes=1)
    no_head = n_params(net) - n_params(net.head)
    imagenet_head = n_params(create_model(f"rwkv_enc_{size}")) - n_params(enc)
    assert n_params(enc) == pytest.approx(encoder, rel=0.01)
    assert no_head == pytest.approx(full, rel=0.01)
    assert no_head + imagenet_head == pytest.approx(full_with_head, rel=0.01)


@pytest.mark.parametrize(
    "name,in_chans,num_classes,shape",
    [("rwkv_unet_t", 3, 2, (2, 64, 64)), ("rwkv_unet_t", 1, 9, (1, 48, 80)), ("rwkv_unet_s", 3, 4, (2, 32, 96)),
     ("rwkv_unet_b", 1, 1, (1, 80, 48))],
)
@pytest.mark.parametrize("train", [True, False])
def test_output_shape(name, in_chans, num_classes, shape, train):
    n, h, w = shape
    net = create_model(name, in_chans=in_chans, num_classes=num_classes).train(train)
    with torch.set_grad_enabled(train):
        y = net(torch.randn(n, in_chans, h, w))
    assert y.shape == (n, num_classes, h, w)
    assert torch.isfinite(y).all()


def test_gray_input_is_repeated_rgb():
    net = create_model("rwkv_unet_t", in_chans=1, num_classes=2).eval()
    rgb = create_model("rwkv_unet_t", in_chans=3, num_classes=2).eval()
    rgb.load_state_dict(net.state_dict(), strict=True)
    x = torch.randn(1, 1, 32, 48)
    torch.testing.assert_close(net(x), rgb(x.expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("name", list_models("rwkv_unet_*"))
def test_every_parameter_gets_a_gradient(name):
    # Without stochastic depth, which may drop a whole residual branch for a small batch.
    net = create_model(name, in_chans=3, num_classes=3, drop_path_rate=0.0, ccm_drop_path=0.0).train()
    net(torch.randn(2, 3, 32, 48)).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient (built but unused?): {dead}"


def test_bad_input_size_raises():
    net = create_model("rwkv_unet_t")
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.randn(1, 3, 40, 48))


def test_unknown_model_raises():
    with pytest.raises(ValueError, match="unknown model 'rwkv_unet_x'"):
        create_model("rwkv_unet_x")


def test_q_shift_against_loops():
    n, c, h, w = 2, 9, 3, 4
    x = torch.randn(n, h * w, c)
    m = x.transpose(1, 2).reshape(n, c, h, w)
    expected = torch.zeros_like(m)
    g = c // 4
    for i in range(h):
        for j in range(w):
            if j > 0:
                expected[:, :g, i, j] = m[:, :g, i, j - 1]  # from the left
            if j < w - 1:
                expected[:, g:2 * g, i, j] = m[:, g:2 * g, i, j + 1]  # from the right
            if i > 0:
                expected[:, 2 * g:3 * g, i, j] = m[:, 2 * g:3 * g, i - 1, j]  # from above
            if i < h - 1:
                expected[:, 3 * g:4 * g, i, j] = m[:, 3 * g:4 * g, i + 1, j]  # from below
    expected[:, 4 * g:] = m[:, 4 * g:]
    torch.testing.assert_close(q_shift(x, (h, w)), expected.flatten(2).transpose(1, 2))
