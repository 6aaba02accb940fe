"""Keep freed CPU memory inside the process while a model trains or infers (Linux with glibc).

glibc's malloc serves every request above its mmap threshold (32 MiB at most on 64-bit Linux) with a fresh
``mmap`` and unmaps it again on ``free``, and PyTorch's CPU allocator caches nothing. So every activation that
large is zero-filled by the kernel page by page on every step: RWKV-UNet-T at 224 px, batch 4, has
full-resolution tensors of 77 MB and took ~200,000 page faults (~0.8 GB zeroed) per training step, which cost
20-25% of the step (issue 10, measured). PyTorch's tuning guide preloads jemalloc or tcmalloc instead, which
has to happen before the process starts; :func:`keep_freed_memory` gets the same effect from inside it through
``mallopt``: no ``mmap`` for large blocks and no trimming of the heap while it is active, then glibc's defaults
and a ``malloc_trim`` on exit, so the memory goes back to the system when the work ends.

On other systems, or with the environment variable ``RWKVLAB_MALLOC=system``, it changes nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["keep_freed_memory", "malloc_tunable"]

# mallopt(3): parameter numbers, and glibc's defaults to restore.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int

_lock = threading.Lock()
_depth = 0


@functools.cache
def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def malloc_tunable() -> bool:
    """Whether :func:`keep_freed_memory` changes anything here: glibc Linux, ``RWKVLAB_MALLOC`` not ``system``."""
    return os.environ.get("RWKVLAB_MALLOC", "") != "system" and _glibc() is not None


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[None]:
    """Within this context (or a function decorated with it) freed CPU memory stays in the process for reuse.

    Nested and concurrent uses share one setting, undone when the outermost ends. See the module docstring.
    """
    global _depth
    libc = _glibc() if malloc_tunable() else None
    with _lock:
        if libc is not None and _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if libc is not None and _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
