"""Bi-WKV as a torch.library custom op: schema and fake checks, torch.compile without graph breaks, meta
tensors, FLOP counting, and what the first call says (issue 10)."""

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from rwkvlab.ops import bi_wkv
from rwkvlab.ops._op import WKV_MACS_PER_ELEMENT
from rwkvlab.ops._reference import bi_wkv_reference


def make_inputs(n=2, t=40, c=6, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, t, c, generator=g, dtype=dtype)
    v = torch.randn(n, t, c, generator=g, dtype=dtype)
    w = torch.linspace(-10, 10, c, dtype=dtype) / t
    u = torch.randn(c, generator=g, dtype=dtype) / t
    return [k, v, w, u]


@pytest.mark.parametrize("kernels", ["cpu", "chunked"])
def test_opcheck_forward_and_backward(kernels):
    # Schema, fake (shape/dtype/strides of the real outputs), autograd registration and dispatch consistency.
    k, v, w, u = (x.double().requires_grad_() for x in make_inputs())
    torch.library.opcheck(torch.ops.rwkvlab.wkv_forward.default, (k, v, w, u, kernels, 0))
    y, lz = torch.ops.rwkvlab.wkv_forward(k.detach(), v.detach(), w.detach(), u.detach(), kernels, 0)
    gy = torch.randn_like(y)
    torch.library.opcheck(torch.ops.rwkvlab.wkv_backward.default,
                          (k.detach(), v.detach(), w.detach(), u.detach(), y, lz, gy, kernels, 0))


def test_compiled_without_graph_breaks_matches_eager_and_reference():
    k, v, w, u = make_inputs()
    gy = torch.randn_like(k)

    def loss(k, v, w, u):
        return (bi_wkv(k, v, w, u) * gy).sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break is an error
    leaves = [x.clone().requires_grad_() for x in (k, v, w, u)]
    compiled(*leaves).backward()
    ref = [x.double().requires_grad_() for x in (k, v, w, u)]
    (bi_wkv_reference(*ref) * gy.double()).sum().backward()
    for a, b in zip(leaves, ref):
        assert ((a.grad.double() - b.grad).norm() / b.grad.norm()).item() <= 1e-5


def test_compile_counts_one_graph_with_the_op():
    k, v, w, u = make_inputs()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda *a: bi_wkv(*a).sum())(k, v, w, u)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    assert "rwkvlab.wkv_forward" in str(explanation.graphs[0].code)


def test_meta_tensors_propagate_shapes_through_the_fake():
    k, v, w, u = (x.to("meta") for x in make_inputs(3, 17, 5))
    y = bi_wkv(k, v, w, u)
    assert y.device.type == "meta" and y.shape == (3, 17, 5) and y.dtype == torch.float32
    y16 = bi_wkv(k.bfloat16(), v.bfloat16(), w, u)
    assert y16.dtype == torch.bfloat16


def test_flop_counter_books_the_op_forward_and_backward():
    k, v, w, u = (x.requires_grad_() for x in make_inputs())
    with FlopCounterMode(display=False) as counter:
        bi_wkv(k, v, w, u).sum().backward()
    flops = counter.get_flop_counts()["Global"]
    assert flops[torch.ops.rwkvlab.wkv_forward] == 2 * WKV_MACS_PER_ELEMENT * k.numel()
    assert flops[torch.ops.rwkvlab.wkv_backward] == 4 * WKV_MACS_PER_ELEMENT * k.numel()


def test_low_precision_gradients_keep_input_dtypes():
    k, v, w, u = make_inputs()
    leaves = [k.bfloat16().requires_grad_(), v.bfloat16().requires_grad_(), w.requires_grad_(), u.requires_grad_()]
    bi_wkv(*leaves).float().sum().backward()
    assert [x.grad.dtype for x in leaves] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]


def test_first_call_says_which_backend_once_and_not_torchs_cuda_warning():
    # A fresh process: the cpp_extension import (and its warning) happens in the first call.
    code = (
        "import logging, torch; logging.basicConfig(level=logging.INFO)\n"
        "from rwkvlab.ops import bi_wkv\n"
        "x = torch.randn(1, 8, 4); w = torch.zeros(4)\n"
        "bi_wkv(x, x, w, w); bi_wkv(x, x, w, w)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert "No CUDA runtime is found" not in out.stderr
    assert out.stderr.count("bi_wkv: CPU tensors run") == 1, out.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cuda(dtype):
    k, v, w, u = (x.cuda() for x in make_inputs())
    k, v = k.to(dtype).requires_grad_(), v.to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.rwkvlab.wkv_forward.default, (k, v, w, u, "cuda", 0))
    compiled = torch.compile(lambda *a: bi_wkv(*a).float().sum(), fullgraph=True)
    compiled(k, v, w, u).backward()
    assert k.grad.dtype == dtype and torch.isfinite(k.grad).all()
