"""Command line for effective receptive fields (docs §12)::

    python -m rwkvlab.erf --model NAME [--variant V] [--checkpoint PATH] --images DIR --size H W --n N
                          --out DIR [--stage -1] [--params params.yaml] [--seed 0] [--device auto]

Probes ``--model`` (with the model settings of the ablation variant ``--variant`` from the params
file's ``ablate.variants``, so any size can be probed with any mixer), freshly initialised from
``--seed`` or trained (``--checkpoint``, a ``.pt`` of the training loop whose name and settings must
match), on the first ``--n`` PNG/JPEG images of ``--images`` resized to ``--size``. Writes
``<out>/erf.npy`` (the averaged map), ``<out>/erf.png`` and ``<out>/area_ratio.json``, and prints the
area ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rwkvlab import config
from rwkvlab.engine.inference import resolve_device
from rwkvlab.report.erf import erf_map, load_images, probe_model, write_erf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.erf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered model name, e.g. rwkv_unet_t")
    parser.add_argument("--variant", help="ablation variant whose model settings apply (params ablate.variants)")
    parser.add_argument("--checkpoint", type=Path, help="trained checkpoint (.pt); default: the model at init")
    parser.add_argument("--images", type=Path, required=True, help="folder of PNG/JPEG probe images")
    parser.add_argument("--size", type=int, nargs=2, required=True, metavar=("H", "W"), help="probe size")
    parser.add_argument("--n", type=int, required=True, help="number of images (the literature uses about 50)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--stage", type=int, default=-1, help="encoder stage index (-1: the last)")
    parser.add_argument("--params", type=Path, default=None,
                        help="params file (for --variant); default: the project's params.yaml above the working directory")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (without --checkpoint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kwargs = {}
    if args.variant:
        kwargs = config.load(args.params).ablate.variant(args.variant).kwargs
    device = resolve_device(args.device)
    model, in_chans = probe_model(args.model, kwargs, args.checkpoint, seed=args.seed, device=device)
    images = load_images(args.images, tuple(args.size), args.n, in_chans=in_chans)
    erf = erf_map(model, images, args.stage)
    state = f"checkpoint {args.checkpoint.name}" if args.checkpoint else f"at init (seed {args.seed})"
    title = f"{args.model}{f' · {args.variant}' if args.variant else ''} · {state}"
    print(json.dumps(write_erf(args.out, erf, title)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
