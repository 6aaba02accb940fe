"""``python -m rwkvlab.complexity``: parameters and MACs of the models and ablation variants, counted as the paper
counts them (:mod:`rwkvlab.complexity`, docs §11)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rwkvlab import complexity
from rwkvlab.complexity import checkpoint_table, complexity_table, model_rows

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rwkvlab.complexity [--variants all|NAME,...] [--csv PATH|-] [--params params.yaml]``,
    ``python -m rwkvlab.complexity --model NAME [NAME ...] --size S [S [S]] [--in-chans C] [--num-classes K]``, or
    ``python -m rwkvlab.complexity --checkpoint PATH [PATH ...]`` (each at its training size)."""
    from rwkvlab import config
    from rwkvlab.report.ablations import variant_rows

    parser = argparse.ArgumentParser(prog="python -m rwkvlab.complexity", description=complexity.__doc__.splitlines()[0])
    parser.add_argument("--variants", default="all", help="all, or comma-separated model/variant names")
    parser.add_argument("--csv", help="write the table as CSV to PATH, or - for standard output")
    parser.add_argument("--params", default=None, help="the params file holding ablate.variants; default: the project's "
                        "params.yaml above the working directory")
    parser.add_argument("--model", nargs="+", help="count these registered models at --size instead of the table of "
                        "variants (2D or 3D: rwkv_unet3d_t, unet3d, swin_unetr3d)")
    parser.add_argument("--size", type=int, nargs="+", help="with --model: one side (a square image or a cube, by the "
                        "model's spatial_dims), H W, or D H W")
    parser.add_argument("--in-chans", type=int, help="with --model: input channels (default 1 for 3D models, 3 for 2D)")
    parser.add_argument("--num-classes", type=int, default=2, help="with --model: output classes (default 2)")
    parser.add_argument("--checkpoint", nargs="+", type=Path, help="count the models of these checkpoints (training, "
                        "or converted by rwkvlab.convert) at their training size")
    args = parser.parse_args(argv)
    if args.checkpoint and (args.model or args.variants != "all"):
        parser.error("--checkpoint excludes --model and --variants")
    if args.model is None and (args.size or args.in_chans is not None):
        parser.error("--size and --in-chans go with --model")
    if args.model is not None and args.variants != "all":
        parser.error("--model and --variants exclude each other")
    if args.model is not None and not args.size:
        parser.error("--model needs --size (one side, H W, or D H W)")
    if args.size and (len(args.size) > 3 or min(args.size) < 1):
        parser.error(f"--size takes 1 to 3 positive sides, got {' '.join(map(str, args.size))}")
    logging.basicConfig(level=logging.WARNING)
    try:
        if args.checkpoint:
            table = checkpoint_table(args.checkpoint)
        elif args.model is not None:
            rows = model_rows(args.model, args.size, args.num_classes, args.in_chans)
        else:
            variants = config.load(args.params).ablate.variants
            names = None if args.variants == "all" else [n.strip() for n in args.variants.split(",") if n.strip()]
            rows = variant_rows(variants, names)
        if not args.checkpoint:
            table = complexity_table(rows, progress=args.csv != "-")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.csv == "-":
        table.to_csv(sys.stdout, index=False)
    else:
        print(table.to_string(index=False))
        if args.csv:
            from rwkvlab.io import atomic_write

            atomic_write(args.csv, lambda f: table.to_csv(f, index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
