"""``python -m rwkvlab.bench data``: the input pipeline at 224x224: reading a prepared cache into memory,
iterating it without augmentation in one process (target: >= 2000 samples/s), and each training augmentation
recipe on one thread (target: >= 300 samples/s per core)."""

from __future__ import annotations

import time

import torch

__all__ = ["bench_data"]


def bench_data(n: int = 1000, size: tuple[int, int] = (224, 224), batch: int = 24) -> None:
    """Print the input-pipeline throughputs described in the module docstring."""
    import json
    import tempfile
    from pathlib import Path

    import numpy as np
    from torch.utils.data import DataLoader

    from rwkvlab.data.augment import train_transforms
    from rwkvlab.data.cache import load_prepared, prepare
    from rwkvlab.data.loader import SegArrays
    from rwkvlab.data.reader import Case, Reader, Sample

    class RandomBlobs(Reader):
        name, class_names, description, layout = "bench", ("background", "fg"), "random blobs", ""

        def scan(self, problems: list[str]) -> list[Case]:
            return [Case(f"c{i:05d}", ()) for i in range(n)]

        def load(self, case: Case) -> Sample:
            rng = np.random.default_rng(int(case.case_id[1:]))
            label = np.zeros(size, np.uint8)
            r, c = rng.integers(0, size[0] // 2, 2)
            label[r : r + size[0] // 3, c : c + size[1] // 3] = 1
            return Sample(rng.integers(0, 256, (*size, 3), dtype=np.uint8), label)

    with tempfile.TemporaryDirectory() as tmp:
        cache = prepare(RandomBlobs(Path(tmp)), size, Path(tmp) / "cache.h5", Path(tmp), seeds=[])
        split = Path(tmp) / "seed0.json"
        split.write_text(json.dumps({"train": [f"c{i:05d}" for i in range(n)]}))
        start = time.perf_counter()
        data = load_prepared(cache, split)
        load_s = time.perf_counter() - start
    print(f"\ninput pipeline at {size[0]}x{size[1]}, RGB uint8 cache of {n} items, batch {batch}")
    print(f"  load cache into memory       {n / load_s:10.0f} samples/s")
    start = time.perf_counter()
    for _ in DataLoader(SegArrays(data, "train"), batch_size=batch, shuffle=True):
        pass
    print(f"  iterate, no augmentation     {n / (time.perf_counter() - start):10.0f} samples/s (target >= 2000)")
    torch.set_num_threads(1)
    for recipe in ("light", "acdc"):
        items = SegArrays(data, "train", train_transforms(recipe, size, seed=0))
        m = min(n, 300)
        start = time.perf_counter()
        for i in range(m):
            items[i]
        print(f"  augment '{recipe}', 1 thread  {m / (time.perf_counter() - start):10.0f} samples/s per core (target >= 300)")
