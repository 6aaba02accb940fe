"""CUDA Bi-WKV backend (docs §2): ``kernels/wkv_cuda.cu``, built on first use.

The kernel is plain CUDA with a C ABI, built by :func:`torch.utils.cpp_extension.load` (ninja) into
``<repo>/build/torch_extensions/rwkvlab_wkv_cuda`` for the architectures in ``TORCH_CUDA_ARCH_LIST``
(default: the visible GPUs) and called through ctypes on the current stream. Its algorithm is
:class:`rwkvlab.ops._cpu.ChunkedScan` with 32 chunks per sequence (:data:`CUDA_CHUNKS`). When nvcc
is missing or the build fails, the backend logs it once and runs that pure-PyTorch scan on the GPU.

CI without a GPU checks that the kernel compiles and links::

    TORCH_CUDA_ARCH_LIST="9.0" python -m rwkvlab.ops._cuda --compile-only
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rwkvlab.ops._cpu import KERNELS_DIR, build_library
from rwkvlab.ops._op import bi_wkv_op

logger = logging.getLogger(__name__)

__all__ = ["CUDA_CHUNKS", "CudaKernels", "bi_wkv_cuda", "build", "cuda_kernels"]

CUDA_CHUNKS = 32  # kChunks in kernels/wkv_cuda.cu
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _cudart_ldflags() -> list[str]:
    # torch links -lcudart from CUDA_HOME/lib64, taking CUDA_HOME as the folder above nvcc's folder;
    # where nvcc is a wrapper script (e.g. /usr/local/bin/nvcc) that folder has no libcudart.
    from torch.utils.cpp_extension import CUDA_HOME

    homes = (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), CUDA_HOME, "/usr/local/cuda")
    return [f"-L{h}/lib64" for h in homes if h and any(Path(h, "lib64").glob("libcudart.so*"))][:1]


def build() -> str:
    """Compile and link the CUDA kernel (no GPU needed); return the library path.

    Raises:
        FileNotFoundError, RuntimeError, OSError: sources, nvcc or the build failed.
    """
    return build_library(
        "rwkvlab_wkv_cuda",
        [KERNELS_DIR / "wkv_cuda.cu"],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        extra_ldflags=_cudart_ldflags(),
    )


class CudaKernels:
    """``kernels/wkv_cuda.cu`` through ctypes; k, v of any float dtype, on one CUDA device."""

    dtypes = tuple(_DTYPE_CODES)

    def __init__(self, path: str) -> None:
        self._lib = ctypes.CDLL(path)
        ptr, i64 = ctypes.c_void_p, ctypes.c_int64
        self._lib.wkv_cuda_forward.argtypes = [ctypes.c_int] + [ptr] * 6 + [i64] * 3 + [ptr]
        self._lib.wkv_cuda_backward.argtypes = [ctypes.c_int] + [ptr] * 11 + [i64] * 3 + [ptr]
        self._lib.wkv_cuda_error_string.restype = ctypes.c_char_p

    def _call(self, fn: Any, k: Tensor, *tensors: Tensor) -> None:
        args = [ctypes.c_void_p(x.data_ptr()) for x in (k, *tensors)]
        with torch.cuda.device(k.device):
            stream = ctypes.c_void_p(torch.cuda.current_stream(k.device).cuda_stream)
            err = fn(_DTYPE_CODES[k.dtype], *args, *k.shape, stream)
        if err:
            raise RuntimeError(f"bi_wkv CUDA kernel failed: {self._lib.wkv_cuda_error_string(err).decode()}")

    def forward(self, k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """See :class:`rwkvlab.ops._op.Kernels`."""
        out = torch.float64 if k.dtype == torch.float64 else torch.float32
        y, lz = torch.empty_like(k, dtype=out), torch.empty_like(k, dtype=out)
        self._call(self._lib.wkv_cuda_forward, k, v, w.double(), u.double(), y, lz)
        return y, lz

    def backward(
        self, k: Tensor, v: Tensor, w: Tensor, u: Tensor, y: Tensor, lz: Tensor, gy: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """See :class:`rwkvlab.ops._op.Kernels`."""
        n, _, c = k.shape
        gk, gv = torch.empty_like(y), torch.empty_like(y)
        gw, gu = torch.empty(2, n, c, dtype=torch.float64, device=k.device)
        self._call(self._lib.wkv_cuda_backward, k, v, w.double(), u.double(), y, lz, gy, gk, gv, gw, gu)
        return gk, gv, gw.sum(0).to(y.dtype), gu.sum(0).to(y.dtype)


@functools.cache
def cuda_kernels() -> CudaKernels | None:
    """The CUDA kernel, built on first call; ``None`` (logged once) if it cannot be built."""
    try:
        path = build()
    except Exception as err:  # noqa: BLE001 - any build failure means: use the pure-PyTorch path
        logger.warning(
            "bi_wkv: CUDA kernel unavailable (%s); using the pure-PyTorch chunked scan on the GPU, "
            "which is much slower. Check nvcc (CUDA_HOME) and TORCH_CUDA_ARCH_LIST.",
            err,
        )
        return None
    logger.info("bi_wkv: built CUDA kernel %s", path)
    return CudaKernels(path)


def bi_wkv_cuda(k: Tensor, v: Tensor, w: Tensor, u: Tensor) -> Tensor:
    """Bi-WKV (docs §2) on CUDA tensors by the CUDA kernel, else the chunked scan (logged once).

    Args:
        k: keys, (N, T, C), float32, float64, float16 or bfloat16.
        v: values, (N, T, C).
        w: decay per channel, (C,), already divided by T.
        u: bonus of the token itself per channel, (C,), already divided by T.

    Shape:
        (N, T, C) -> (N, T, C), dtype of ``k``.
    """
    if not k.is_cuda:
        raise ValueError(f"bi_wkv backend 'cuda' needs CUDA tensors, got {k.device}")
    return bi_wkv_op(k, v, w, u, "cuda")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--compile-only`` builds the kernel without a GPU (CI)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-only", action="store_true", help="compile and link, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.compile_only:
        parser.error("nothing to do: pass --compile-only")
    # Without a GPU torch cannot pick architectures; H100 is the target.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    logger.info("built %s for TORCH_CUDA_ARCH_LIST=%s", build(), os.environ["TORCH_CUDA_ARCH_LIST"])


if __name__ == "__main__":
    main()
