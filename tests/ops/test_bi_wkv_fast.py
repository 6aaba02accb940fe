"""Fast Bi-WKV paths against the float64 reference (docs §2, issue 3).

Paths: the ``cpu`` backend (C++ kernel), the pure-PyTorch chunked scan with its default chunking and
with the CUDA kernel's (its CPU mirror), and the ``cuda`` backend where a GPU is present. Without a
GPU, the CUDA kernel's source is also run on the CPU under an emulation of CUDA threads and barriers.
"""

import ctypes
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rwkvlab.ops import available_backends, bi_wkv
from rwkvlab.ops._cpu import BUILD_ROOT, KERNELS_DIR, bi_wkv_chunked, cpu_kernels
from rwkvlab.ops._cuda import CUDA_CHUNKS
from rwkvlab.ops._reference import bi_wkv_reference

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PATHS = {
    "cpu": ("cpu", functools.partial(bi_wkv, backend="cpu")),
    "chunked": ("cpu", bi_wkv_chunked),
    "chunked-cuda-layout": ("cpu", functools.partial(bi_wkv_chunked, chunks=CUDA_CHUNKS)),
    "cuda": ("cuda", functools.partial(bi_wkv, backend="cuda")),
}
CPU_PATHS = ["cpu", "chunked", "chunked-cuda-layout"]
ALL_PATHS = CPU_PATHS + [pytest.param("cuda", marks=[pytest.mark.cuda, gpu])]

# (N, T, C): C = 5, 17 are not multiples of the kernels' channel blocks (16 on the CPU, 8 on CUDA);
# T = 4096 keeps C small so that the dense reference fits in memory.
SHAPES = [(2, 1, 5), (3, 2, 5), (2, 31, 17), (2, 196, 5), (2, 784, 5), (1, 4096, 4)]


def rel_err(a, b):
    """Relative L2 error; the absolute norm where the reference is exactly 0 (e.g. grad of w at T = 2)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm() if b.norm() > 0 else a.norm()).item()


def make_inputs(n, t, c, seed=0, wt=20.0, kscale=2.0):
    """float32 k, v, w, u; |w T| reaches ``wt``, negative decays included."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n, t, c, generator=g) * kscale
    v = torch.randn(n, t, c, generator=g)
    w = torch.linspace(-wt, wt, c) / t
    u = torch.randn(c, generator=g) * 3 / t
    return [k, v, w, u]


def forward_backward(fn, inputs, gy):
    leaves = [x.detach().requires_grad_() for x in inputs]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, gy))


@functools.cache
def reference_case(n, t, c):
    """Inputs, output gradient and float64 reference output and gradients (computed once per shape)."""
    inputs = make_inputs(n, t, c)
    gy = torch.randn(n, t, c, generator=torch.Generator().manual_seed(1))
    ref = forward_backward(bi_wkv_reference, [x.double() for x in inputs], gy.double())
    return inputs, gy, [r.detach() for r in ref]


def run_path(path, inputs, gy):
    device, fn = PATHS[path]
    out = forward_backward(fn, [x.to(device) for x in inputs], gy.to(device))
    return [o.detach().cpu() for o in out]


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("n,t,c", SHAPES)
def test_float32_matches_reference(path, n, t, c):
    inputs, gy, ref = reference_case(n, t, c)
    out = run_path(path, inputs, gy)
    assert out[0].dtype == torch.float32
    for name, a, b in zip(["y", "grad k", "grad v", "grad w", "grad u"], out, ref):
        assert rel_err(a, b) <= 1e-5, f"{name}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_reference(path, dtype):
    inputs = [x.to(dtype) for x in make_inputs(2, 196, 9)]
    gy = torch.randn(2, 196, 9).to(dtype)
    ref = forward_backward(bi_wkv_reference, [x.double() for x in inputs], gy.double())
    out = run_path(path, inputs, gy)
    assert all(o.dtype == dtype for o in out)
    for a, b in zip(out, ref):
        assert rel_err(a, b) <= 1e-2


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("wt,kmax", [(50.0, 30.0), (-50.0, 30.0)])
def test_extreme_decays_and_keys(path, wt, kmax):
    # exp(|k| + |w T|) overflows float32: only a running maximum keeps this finite.
    t, c = 64, 4
    k = torch.where(torch.arange(t)[:, None] % 3 == 0, kmax, -kmax).expand(1, t, c).clone()
    inputs = [k, torch.randn(1, t, c), torch.full((c,), wt / t), torch.zeros(c)]
    gy = torch.randn(1, t, c)
    ref = forward_backward(bi_wkv_reference, [x.double() for x in inputs], gy.double())
    out = run_path(path, inputs, gy)
    assert all(torch.isfinite(o).all() for o in out)
    for a, b in zip(out, ref):
        assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("path", ALL_PATHS)
def test_non_contiguous_inputs(path):
    n, t, c = 2, 50, 6
    k = torch.randn(n, c, t).transpose(1, 2)  # channels not contiguous
    v = torch.randn(n, t, 2 * c)[..., ::2]  # strided channels
    w = (torch.linspace(-20, 20, 2 * c) / t)[::2]
    u = (torch.randn(c, 2) / t)[:, 0]
    inputs = [k, v, w, u]
    assert not any(x.is_contiguous() for x in inputs)
    gy = torch.randn(n, c, t).transpose(1, 2)
    ref = forward_backward(bi_wkv_reference, [x.double() for x in inputs], gy.double())
    for a, b in zip(run_path(path, inputs, gy), ref):
        assert rel_err(a, b) <= 1e-5


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("n,t,c", [(2, 9, 3), (1, 40, 2)])
def test_gradcheck_float64(path, n, t, c):
    _, fn = PATHS[path]
    inputs = [x.double().requires_grad_() for x in make_inputs(n, t, c, wt=5.0, kscale=1.0)]
    assert torch.autograd.gradcheck(fn, inputs)


def test_auto_picks_cpu_kernel_for_cpu_tensors():
    assert available_backends(torch.zeros(1, 2, 3))[0] == "cpu"


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_cpu_kernel_builds():
    assert cpu_kernels() is not None


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_stale_build_lock_does_not_block():
    # A build killed half-way leaves torch's `lock` file; older torch versions wait on it forever.
    cpu_kernels()  # built and up to date, so the call below only checks the lock
    lock = BUILD_ROOT / "rwkvlab_wkv_cpu" / "lock"
    lock.touch()
    code = "from rwkvlab.ops._cpu import cpu_kernels; assert cpu_kernels() is not None"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.cuda
@gpu
def test_cuda_matches_cpu_kernel_at_model_size():
    inputs = make_inputs(4, 784, 96)
    gy = torch.randn(4, 784, 96)
    for a, b in zip(run_path("cuda", inputs, gy), run_path("cpu", inputs, gy)):
        assert rel_err(a, b) <= 1e-5


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").is_file(),
                    reason="no nvcc: the CUDA kernel cannot be compiled here")
def test_cuda_kernel_compiles_without_gpu():
    # CI has nvcc but no GPU: compile and link the kernel for sm_90 (H100).
    env = {**os.environ, "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    subprocess.run([sys.executable, "-m", "rwkvlab.ops._cuda", "--compile-only"], env=env, check=True, timeout=900)
    assert (BUILD_ROOT / "rwkvlab_wkv_cuda" / "rwkvlab_wkv_cuda.so").is_file()


# Enough of CUDA for kernels/wkv_cuda.cu on the CPU: a block's threads are std::threads meeting at a
# std::barrier for __syncthreads(), blocks run one after another, shared memory is a fresh buffer.
EMULATION = r"""
#include <cuda_runtime_api.h>
#include <algorithm>
#include <barrier>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>
using std::max;
using std::min;
struct EmuDim { unsigned x = 0; };
inline thread_local EmuDim threadIdx, blockIdx;
inline thread_local std::barrier<>* emu_barrier;
inline thread_local unsigned char* emu_shared;
#undef __global__
#undef __device__
#undef __forceinline__
#undef __align__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __restrict__ __restrict
#define __align__(x) alignas(x)
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
inline cudaError_t emu_get_device(int* d) { *d = 0; return cudaSuccess; }
inline cudaError_t emu_get_attribute(int* v, cudaDeviceAttr, int) { *v = 227 * 1024; return cudaSuccess; }
inline cudaError_t emu_last_error() { return cudaSuccess; }
inline cudaError_t emu_set_attribute(...) { return cudaSuccess; }
inline const char* emu_error_string(cudaError_t) { return "emulated"; }
inline void emu_launch(unsigned grid, unsigned block, size_t shared, const std::function<void()>& kernel) {
  std::vector<unsigned char> buffer(shared);
  for (unsigned b = 0; b < grid; ++b) {
    std::barrier<> barrier(block);
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < block; ++i)
      threads.emplace_back([&, i, b] {
        threadIdx.x = i, blockIdx.x = b, emu_barrier = &barrier, emu_shared = buffer.data();
        kernel();
      });
    for (auto& t : threads) t.join();
  }
}
"""


def _cuda_include() -> Path | None:
    from torch.utils.cpp_extension import CUDA_HOME

    homes = [os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda"]
    return next((Path(h, "include") for h in homes if h and Path(h, "include", "cuda_fp16.h").is_file()), None)


@pytest.fixture(scope="module")
def emulated_cuda(tmp_path_factory):
    """kernels/wkv_cuda.cu built for the CPU under :data:`EMULATION`, as a ctypes library."""
    include = _cuda_include()
    if include is None or shutil.which("g++") is None:
        pytest.skip("needs g++ and the CUDA headers")
    src = (KERNELS_DIR / "wkv_cuda.cu").read_text()
    src = src.replace("extern __shared__ __align__(16) unsigned char smem[];", "unsigned char* smem = emu_shared;")
    for name, emu in [
        ("cudaGetDevice", "emu_get_device"),
        ("cudaDeviceGetAttribute", "emu_get_attribute"),
        ("cudaGetLastError", "emu_last_error"),
        ("cudaFuncSetAttribute", "emu_set_attribute"),
        ("cudaGetErrorString", "emu_error_string"),
    ]:
        src = src.replace(f"{name}(", f"{emu}(")
    src, launches = re.subn(
        r"(\w+<T>)<<<(.*?), (\w+), (\w+), stream>>>\((.*?)\);",
        r"emu_launch(\2, \3, \4, [&] { \1(\5); });",
        src,
        flags=re.S,
    )
    assert launches == 2, "kernel launches in wkv_cuda.cu no longer match the emulation's pattern"
    out = tmp_path_factory.mktemp("emulated_cuda")
    (out / "wkv_emu.cpp").write_text(EMULATION + src)
    flags = ["-std=c++20", "-O2", "-w", "-shared", "-fPIC", f"-I{include}"]
    subprocess.run(["g++", *flags, str(out / "wkv_emu.cpp"), "-o", str(out / "wkv_emu.so")], check=True, timeout=300)
    lib = ctypes.CDLL(str(out / "wkv_emu.so"))
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.wkv_cuda_forward.argtypes = [ctypes.c_int] + [ptr] * 6 + [i64] * 3 + [ptr]
    lib.wkv_cuda_backward.argtypes = [ctypes.c_int] + [ptr] * 11 + [i64] * 3 + [ptr]
    return lib


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,t,c", [(2, 1, 5), (2, 31, 17), (1, 784, 9), (1, 1500, 3)])  # 1500: no tile cache
def test_cuda_source_emulated_on_cpu(emulated_cuda, n, t, c, dtype):
    k, v, w, u = make_inputs(n, t, c, wt=-50.0)
    k, v, w, u = k.to(dtype), v.to(dtype), w.double(), u.double()
    gy = torch.randn(n, t, c).to(dtype)
    ref = forward_backward(bi_wkv_reference, [x.double() for x in (k, v, w, u)], gy.double())
    y, lz, gk, gv = (torch.empty(n, t, c) for _ in range(4))
    gw, gu = torch.empty(2, n, c, dtype=torch.float64)
    code = {torch.float32: 0, torch.float16: 2, torch.bfloat16: 3}[dtype]
    ptrs = [ctypes.c_void_p(x.data_ptr()) for x in (k, v, w, u, y, lz, gy, gk, gv, gw, gu)]
    assert emulated_cuda.wkv_cuda_forward(code, *ptrs[:6], n, t, c, None) == 0
    assert emulated_cuda.wkv_cuda_backward(code, *ptrs, n, t, c, None) == 0
    for a, b in zip([y, gk, gv, gw.sum(0), gu.sum(0)], ref):
        assert rel_err(a, b) <= 1e-5
