"""The embedded demo set: dermoscopy images with lesion masks derived from HAM10000.

The committed files under ``data/demo/`` are made once from the 36-case HAM10000 subset in
``shared/data/ham10000_mini36`` (CC BY-NC 4.0) by::

    python -m rwkvlab.data.demo --src ../shared/data/ham10000_mini36 --out data/demo

which downsizes images (JPEG) and masks (PNG, values 0/255) to 256x192 and copies the licence
and attribution text beside them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from rwkvlab.io import atomic_write
from rwkvlab.data._base import pair_folder, read_image, read_mask

logger = logging.getLogger(__name__)

__all__ = ["derive"]

_SIZE = (192, 256)  # (H, W): the 4:3 aspect of the 600x450 originals


def derive(src: Path, out: Path, size: tuple[int, int] = _SIZE) -> None:
    """Write the downsized demo set from the raw HAM10000 subset (see module docstring)."""
    src, out = Path(src), Path(out)
    h, w = size
    for pair in tqdm(pair_folder(src, "images", "masks"), desc="derive demo", unit="case"):
        img = Image.fromarray(read_image(pair.image)).resize((w, h), Image.BOX)
        mask = read_mask(pair.mask, {0: 0, 255: 1}, shape=None)
        mask = Image.fromarray((mask * 255).astype(np.uint8)).resize((w, h), Image.NEAREST)
        atomic_write(out / "images" / f"{pair.case_id}.jpg", lambda p, im=img: im.save(p, "JPEG", quality=92))
        atomic_write(out / "masks" / f"{pair.case_id}.png", lambda p, m=mask: m.save(p, "PNG"))
    shutil.copyfile(src / "README.txt", out / "LICENSE_AND_ATTRIBUTION.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="the ham10000_mini36 folder")
    parser.add_argument("--out", type=Path, required=True, help="where to write the demo set")
    args = parser.parse_args()
    derive(args.src, args.out)


if __name__ == "__main__":
    main()
