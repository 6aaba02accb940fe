"""The depthwise convolution with the fast CPU weight gradient against float64 PyTorch, and RWKV-UNet-T's
outputs and gradients with it against nn.Conv2d (issue 10)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rwkvlab.models import create_model
from rwkvlab.models.layers import ConvBNAct, DepthwiseConv2d
from rwkvlab.ops.dwconv import depthwise_conv2d


def rel_err(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("n,c,h,w,k,stride", [(2, 5, 13, 11, 5, 1), (2, 7, 12, 15, 5, 2), (1, 17, 9, 10, 9, 1),
                                              (3, 3, 6, 7, 3, 2), (1, 4, 3, 3, 5, 1)])
def test_matches_float64_conv(n, c, h, w, k, stride, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt).requires_grad_()
    weight = torch.randn(c, 1, k, k, requires_grad=True)
    y = depthwise_conv2d(x, weight, stride, k // 2)
    gy = torch.randn_like(y)
    y.backward(gy)
    xd, wd = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = F.conv2d(xd, wd, stride=stride, padding=k // 2, groups=c)
    ref.backward(gy.double())
    assert y.shape == ref.shape
    assert rel_err(y, ref) <= 1e-6
    assert rel_err(x.grad, xd.grad) <= 1e-6
    assert rel_err(weight.grad, wd.grad) <= 1e-6


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_autocast_trains_as_conv2d(stride):
    # the float32 leaves get float32 gradients from a bfloat16 forward, as nn.Conv2d's under autocast
    x = torch.randn(2, 6, 10, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(6, 1, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = depthwise_conv2d(x, weight, stride, 2)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    xr, wr = x.detach().requires_grad_(), weight.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.conv2d(xr, wr, stride=stride, padding=2, groups=6)
    ref.float().square().sum().backward()
    torch.testing.assert_close(y, ref)
    assert x.grad.dtype == weight.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(weight.grad, wr.grad)


def test_float64_gradcheck():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv2d(a, b, 2, 1), (x, weight))


def test_bad_weight_raises():
    with pytest.raises(ValueError, match=r"weight must be \(C, 1, K, K\)"):
        depthwise_conv2d(torch.zeros(1, 4, 5, 5), torch.zeros(3, 1, 3, 3))


def test_conv_bn_act_keeps_state_dict_keys():
    dw, dense = ConvBNAct(8, 8, 5, groups=8), ConvBNAct(8, 16, 1)
    assert isinstance(dw[0], DepthwiseConv2d) and type(dense[0]) is nn.Conv2d
    assert list(dw.state_dict()) == list(nn.Sequential(nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False),
                                                       nn.BatchNorm2d(8), nn.SiLU()).state_dict())


def test_model_outputs_and_gradients_unchanged(monkeypatch):
    torch.manual_seed(0)
    # no drop path: the two runs must see the same network, not two random draws of its residual branches
    model = create_model("rwkv_unet_t", in_chans=3, num_classes=4, drop_path_rate=0.0,
                         ccm_drop_path=0.0).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 48).contiguous(memory_format=torch.channels_last)

    def run():
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out, grads = run()
    monkeypatch.setattr(DepthwiseConv2d, "forward", nn.Conv2d.forward)  # PyTorch's own depthwise path
    ref_out, ref_grads = run()
    assert rel_err(out, ref_out.double()) <= 1e-6
    for name, g in grads.items():
        assert rel_err(g, ref_grads[name].double()) <= 1e-4, name
