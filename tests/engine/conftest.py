"""Fixtures shared by the engine tests."""

import numpy as np
import pytest

from rwkvlab.data import Prepared


@pytest.fixture(scope="module")
def data():
    """Ten 32x32 RGB images with one bright square each: 6 train, 2 val, 2 test."""
    rng = np.random.default_rng(0)
    n, h, w = 10, 32, 32
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        r, c = rng.integers(4, 20, 2)
        masks[i, r : r + 10, c : c + 10] = 1
    images = (rng.random((n, h, w, 3)) * 80 + masks[..., None] * 120).astype(np.uint8)
    return Prepared(dataset="toy", description="toy squares", class_names=("background", "fg"), images=images,
                    masks=masks, ids=np.array([f"c{i}" for i in range(n)]), labelled=np.ones(n, bool),
                    sizes=np.full((n, 2), 32), splits={"train": np.arange(6), "val": np.arange(6, 8),
                                                       "test": np.arange(8, 10)})
