"""Command line for the datasets::

    python -m rwkvlab.data validate --dataset NAME --root RAW_DIR [--reader READER] [--option KEY=VALUE ...]
    python -m rwkvlab.data prepare  --dataset NAME --root RAW_DIR [--out DIR] [--size H W] [--seeds 0 1 2]
                                    [--skip-invalid] [--reader READER] [--option KEY=VALUE ...]
    python -m rwkvlab.data card     --dataset NAME [--data DIR] [--out DIR]
    python -m rwkvlab.data layouts  [--dataset NAME]
    python -m rwkvlab.data synthesize --out DIR [--seed N]
    python -m rwkvlab.data synthesize3d --out DIR [--seed N]

``validate`` lists every problem of a raw folder (exit status 1 if any); ``prepare`` writes
``<out>/prepared/<name>/cache.h5`` and ``<out>/splits/<name>/seed<k>.json`` (``--out`` defaults to
``data``; exit status 2 when the folder holds no data and is skipped; with problems it prints the
list ``validate`` prints and exits with status 1, unless ``--skip-invalid`` leaves out the cases that
have one); ``card`` writes the card of a dataset prepared under ``--data`` to ``<out>/<name>/``
(default ``reports/datasets``); ``layouts`` prints the expected raw layouts; ``synthesize`` writes
the SYNTHETIC Synapse-like demo set (dataset ``synapse_demo``) in the Synapse raw layout;
``synthesize3d`` the SYNTHETIC CT-like 3D set (dataset ``volume_demo``) in the nnU-Net v2 raw layout (docs §19).

``--reader`` names the reader of a dataset that is not registered (``--reader folder`` for your own
``images/`` + ``masks/`` folder) and each ``--option KEY=VALUE`` is one of ``prepare.options.<name>``,
the value read as YAML (``--option "mask_values={0: 0, 255: 1}"``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from rwkvlab.data._base import DataError
from rwkvlab.data.cache import load_prepared
from rwkvlab.data.prepare import prepare_dataset
from rwkvlab.data.reader import validate
from rwkvlab.data.readers import READERS, get_reader
from rwkvlab.data.readers.synapse_demo import generate
from rwkvlab.data.readers.volume_demo import generate3d
from rwkvlab.report.cards import write_card


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"{key}: value {value!r} is not valid YAML ({e})") from e


def _report(dataset: str, err: DataError) -> int:
    """Print the problems of ``err`` one per line, as ``validate`` does; the exit status."""
    for problem in err.problems:
        print(f"- {problem}")
    print(f"{dataset}: {len(err.problems)} problem(s)")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["validate", "prepare", "card", "layouts", "synthesize", "synthesize3d"])
    parser.add_argument("--dataset", help="registered dataset name")
    parser.add_argument("--root", type=Path, help="the raw folder")
    parser.add_argument("--out", type=Path, help="output folder (prepare: data, card: reports/datasets)")
    parser.add_argument("--data", type=Path, default=Path("data"), help="data folder of the prepared datasets (card)")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"), help="2D item size")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic set (synthesize, synthesize3d)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="prepare: leave out the cases that have a problem, naming them, instead of stopping")
    parser.add_argument("--reader", help="the reader of a dataset that is not registered (e.g. folder)")
    parser.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a reader option (prepare.options.<dataset>), value as YAML; repeatable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "layouts":
        if args.dataset and args.dataset not in READERS:
            return _report(args.dataset, DataError(f"unknown dataset reader {args.dataset!r}; known: "
                                                   f"{', '.join(sorted(READERS))}"))
        for name in [args.dataset] if args.dataset else sorted(READERS):
            reader = READERS[name]
            print(f"## {name}\n\n{reader.description}\n\n```\n{reader.layout_text()}\n```\n")
        return 0
    if args.command in ("synthesize", "synthesize3d"):
        if args.out is None:
            parser.error("--out is required")
        (generate if args.command == "synthesize" else generate3d)(args.out, args.seed)
        return 0
    if not args.dataset:
        parser.error("--dataset is required")
    try:
        return _run(args, parser)
    except DataError as err:
        return _report(args.dataset, err)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The ``card``, ``validate`` and ``prepare`` commands; a data problem raises :class:`DataError`."""
    if args.command == "card":
        data = load_prepared(args.data / "prepared" / args.dataset / "cache.h5",
                             args.data / "splits" / args.dataset / f"seed{args.seeds[0]}.json")
        write_card(data, data.description, (args.out or Path("reports/datasets")) / args.dataset, montage=8)
        return 0
    if args.root is None:
        parser.error("--root is required")
    options = dict(args.option) | ({"reader": args.reader} if args.reader else {})
    if args.command == "validate":
        cases, problems = validate(get_reader(args.dataset, args.root, **options))
        for problem in problems:
            print(f"- {problem}")
        print(f"{args.dataset}: {len(cases)} cases read, {len(problems)} problem(s)")
        return 1 if problems else 0
    options |= {"skip_invalid": True} if args.skip_invalid else {}
    out = (args.out or Path("data")) / "prepared" / args.dataset
    prepared = prepare_dataset(args.dataset, args.root, tuple(args.size), args.seeds, out / "cache.h5",
                               (args.out or Path("data")) / "splits" / args.dataset, card_dir=out, options=options)
    return 0 if prepared else 2


if __name__ == "__main__":
    sys.exit(main())
