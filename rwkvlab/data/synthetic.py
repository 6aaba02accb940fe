"""Synthetic label maps the size of real ones, for measuring what scales with them (``python -m rwkvlab.bench
metrics``): Synapse-like abdominal CT volumes with a ground truth and a plausible prediction."""

from __future__ import annotations

import numpy as np

__all__ = ["synapse_like_case"]

# Synapse organs, label: (centre as a fraction of (D, H, W), semi-axes in voxels), sized like the
# TransUNet-preprocessed test volumes (512 x 512 slices of ~0.75 mm, ~3 mm apart); drawn largest first.
_ORGANS = {
    5: ((0.45, 0.42, 0.30), (25, 105, 90)),  # liver, ~1 M voxels
    8: ((0.40, 0.40, 0.64), (18, 65, 50)),  # stomach
    7: ((0.40, 0.55, 0.78), (17, 45, 32)),  # spleen
    3: ((0.55, 0.60, 0.68), (16, 33, 26)),  # left kidney
    4: ((0.60, 0.60, 0.30), (16, 33, 26)),  # right kidney
    6: ((0.52, 0.50, 0.53), (7, 18, 70)),  # pancreas
    1: ((0.50, 0.55, 0.50), (45, 12, 12)),  # aorta, a tube through most slices
    2: ((0.50, 0.40, 0.38), (8, 18, 14)),  # gallbladder
}


def synapse_like_case(seed: int, shape: tuple[int, int, int] = (100, 512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """A (prediction, ground truth) pair of uint8 label maps with the 8 Synapse organs as ellipsoids.

    The prediction moves each organ by ~2 voxels, rescales its axes by ~8% and adds a false-positive
    fragment of three organs elsewhere in the volume, as networks do; the fragments widen the boxes.

    Shape:
        (D, H, W) each, labels 0-8.
    """
    rng = np.random.default_rng(seed)
    gt, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)

    def draw(vol: np.ndarray, label: int, centre: np.ndarray, axes: np.ndarray) -> None:
        lo = np.clip(np.floor(centre - axes).astype(int), 0, shape)
        hi = np.clip(np.ceil(centre + axes).astype(int) + 1, 0, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = sum(((x - c) / r) ** 2 for x, c, r in zip(grid, centre, axes)) <= 1
        vol[tuple(slice(a, b) for a, b in zip(lo, hi))][inside] = label

    fragments = set(rng.choice(list(_ORGANS), 3, replace=False).tolist())
    for label, (centre, axes) in _ORGANS.items():
        centre, axes = np.array(centre) * shape, np.array(axes, dtype=np.float64)
        draw(gt, label, centre, axes)
        draw(pred, label, centre + rng.normal(0, 2, 3), axes * rng.normal(1, 0.08, 3))
        if label in fragments:
            draw(pred, label, rng.uniform(0.15, 0.85, 3) * shape, rng.uniform(2, 8, 3))
    return pred, gt
