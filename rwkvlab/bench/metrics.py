"""``python -m rwkvlab.bench metrics``: Synapse-sized volumes (100 x 512 x 512, 8 organs;
:func:`rwkvlab.data.synthetic.synapse_like_case`) scored with the whole-volume implementation and with
:func:`rwkvlab.metrics.case_metrics` (boxed): both times and their ratio, and a check that the results are
bit-identical (target: <= 5 s per volume, issue 11); with ``--volumes`` > 1,
:func:`rwkvlab.engine.evaluate.evaluate_cases` over them in parallel."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from rwkvlab.data.synthetic import synapse_like_case

__all__ = ["bench_metrics"]


def _whole_volume_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                          spacing: Sequence[float] | None) -> np.ndarray:
    """``case_metrics`` as it was before bounding boxes (rwkvlab @ 93a1e1c): the yardstick."""
    from scipy import ndimage

    def surface(mask: np.ndarray) -> np.ndarray:
        return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))

    def directed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ndimage.distance_transform_edt(~surface(b), sampling=spacing)[surface(a)]

    rows = []
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        if p.any() and g.any():
            dsc = 2.0 * np.count_nonzero(p & g) / (np.count_nonzero(p) + np.count_nonzero(g))
            rows.append((float(dsc), float(np.percentile(np.concatenate([directed(p, g), directed(g, p)]), 95))))
        else:
            rows.append((1.0, 0.0) if p.any() else (0.0, 0.0))
    return np.array(rows, dtype=np.float64)


def bench_metrics(volumes: int = 1, spacing: Sequence[float] | None = None) -> None:
    """Print the whole-volume and boxed metric times described in the module docstring.

    Raises:
        SystemExit: when the boxed results differ from the whole-volume ones in any bit.
    """
    from rwkvlab.engine.evaluate import evaluate_cases
    from rwkvlab.metrics import case_metrics

    names = ("background", *(f"organ{label}" for label in range(1, 9)))
    print(f"\nDSC/HD95 of Synapse-like volumes (100 x 512 x 512, 8 organs), spacing {spacing or 'voxels'}")
    cases, mismatches = [], []
    for i in range(volumes):
        pred, gt = synapse_like_case(i)
        cases.append((pred, gt))
        start = time.perf_counter()
        boxed = case_metrics(pred, gt, len(names), spacing)
        boxed_s = time.perf_counter() - start
        start = time.perf_counter()
        whole = _whole_volume_metrics(pred, gt, len(names), spacing)
        whole_s = time.perf_counter() - start
        same = boxed.tobytes() == whole.tobytes()
        if not same:
            mismatches.append(i)
        print(f"  volume {i}: whole volume {whole_s:7.1f} s, boxed {boxed_s:6.2f} s (target <= 5), "
              f"x{whole_s / boxed_s:.0f}, bit-identical: {same}")
    if volumes > 1:
        start = time.perf_counter()
        evaluate_cases([p for p, _ in cases], [g for _, g in cases], [str(i) for i in range(volumes)], names,
                       [spacing] * volumes)
        print(f"  evaluate_cases, {volumes} volumes in parallel (voxels{' and mm' if spacing else ''}): "
              f"{time.perf_counter() - start:.1f} s")
    if mismatches:
        raise SystemExit(f"boxed metrics differ from the whole-volume ones on volumes {mismatches}")
