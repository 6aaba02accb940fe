"""The embedded demo set: dermoscopy images with lesion masks derived from HAM10000.

The committed files under ``data/demo/`` are made once from the 36-case HAM10000 subset in
``shared/data/ham10000_mini36`` (CC BY-NC 4.0) by::

    python -m rwkvlab.data.readers.demo --src ../shared/data/ham10000_mini36 --out data/demo

which downsizes images (JPEG) and masks (PNG, values 0/255) to 256x192 and copies the licence
and attribution text beside them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from rwkvlab.data._base import DataError, pair_folder, read_image, read_mask
from rwkvlab.data.reader import Case, register_reader
from rwkvlab.data.readers._binary import PairedFolderReader
from rwkvlab.io import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["Demo", "derive"]

_SIZE = (192, 256)  # (H, W): the 4:3 aspect of the 600x450 originals


@register_reader
class Demo(PairedFolderReader):
    """The embedded demo set: ``images/<id>.jpg`` and ``masks/<id>.png`` (0 skin, 255 lesion)."""

    name = "demo"
    class_names = ("background", "lesion")
    description = "Embedded demo: 36 HAM10000 dermoscopy cases with lesion masks (CC BY-NC 4.0)"
    layout = """
    images/ISIC_<n>.jpg
    masks/ISIC_<n>.png      values 0 (skin) and 255 (lesion)
    """
    image_dir, mask_dir = "images", "masks"
    mask_values = {0: 0, 255: 1}

    def split(self, cases: Sequence[Case], seed: int) -> dict[str, list[str]]:
        # 36 cases: 24 / 6 / 6
        return self.random_split(cases, seed, {"train": 0.67, "val": 0.165, "test": 0.165})


def derive(src: Path, out: Path, size: tuple[int, int] = _SIZE) -> None:
    """Write the downsized demo set from the raw HAM10000 subset (see module docstring)."""
    src, out = Path(src), Path(out)
    h, w = size
    problems: list[str] = []
    pairs = pair_folder(src, "images", "masks", problems)
    if problems:
        raise DataError("\n".join(problems))
    for cid, img_path, mask_path in tqdm(pairs, desc="derive demo", unit="case"):
        img = Image.fromarray(read_image(img_path)).resize((w, h), Image.BOX)
        mask = read_mask(mask_path, {0: 0, 255: 1})
        mask = Image.fromarray((mask * 255).astype(np.uint8)).resize((w, h), Image.NEAREST)
        atomic_write(out / "images" / f"{cid}.jpg", lambda p, im=img: im.save(p, "JPEG", quality=92))
        atomic_write(out / "masks" / f"{cid}.png", lambda p, m=mask: m.save(p, "PNG"))
    shutil.copyfile(src / "README.txt", out / "LICENSE_AND_ATTRIBUTION.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True, help="the ham10000_mini36 folder")
    parser.add_argument("--out", type=Path, required=True, help="where to write the demo set")
    args = parser.parse_args()
    derive(args.src, args.out)


if __name__ == "__main__":
    main()
