"""keep_freed_memory: large CPU tensors stop page-faulting inside it; after it, large blocks are mapped again and
the kept memory is returned.

Each check runs in a fresh interpreter, so the pytest process's heap and malloc settings play no part. A 64 MiB
tensor is above glibc's largest mmap threshold, so with the system's settings each one is mapped and faulted
in anew (16,384 faults of 4 KiB pages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rwkvlab.engine.cpu_memory import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="malloc tuning exists for glibc Linux only")

PROBE = r"""
import json, resource, torch
from rwkvlab.engine.cpu_memory import keep_freed_memory

def faults(rounds):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        x = torch.ones(2**24)
        y = x * 2
        z = x + y
        del x, y, z
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

def in_heap(tensor):
    # whether malloc took the block from the brk heap rather than from a fresh mmap
    address = tensor.data_ptr()
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20

out = {}
faults(2)
out["system"] = faults(10)
with keep_freed_memory():
    faults(5)  # the heap grows to its working size
    out["kept"] = faults(10)
    with keep_freed_memory():
        pass
    out["after_inner"] = faults(10)
    # 1 GiB, never touched: more than the heap holds, so glibc's defaults would map it
    out["big_in_heap_inside"] = in_heap(torch.empty(2**28))
    out["resident_inside"] = resident_mib()
out["resident_after"] = resident_mib()
# 2 GiB: larger than any free block of the heap (the 1 GiB above is one), so only a mapping or a larger heap holds it
out["big_in_heap_after"] = in_heap(torch.empty(2**29))
print(json.dumps(out))
"""


def _probe(**env: str) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                            env={**os.environ, **env})
    return json.loads(result.stdout.splitlines()[-1])


def test_large_tensors_stop_faulting_and_defaults_come_back() -> None:
    f = _probe()
    # 30 tensors of 64 MiB: 491,520 pages of 4 KiB with the system's settings (fewer if pages are huge).
    assert f["system"] > 30 * 16
    # inside: at most 3 of the 30 blocks fault (the heap may still grow once or twice), against all 30
    assert f["kept"] * 8 < f["system"], f
    assert f["after_inner"] * 8 < f["system"], f"the inner context's exit undid the outer one's setting: {f}"
    # on exit: large blocks are mapped again (glibc's defaults), and the kept memory goes back to the system
    assert f["big_in_heap_inside"] and not f["big_in_heap_after"], f
    assert f["resident_inside"] - f["resident_after"] > 128, f


def test_environment_variable_leaves_malloc_alone() -> None:
    f = _probe(RWKVLAB_MALLOC="system")
    assert f["kept"] > f["system"] / 2, f
