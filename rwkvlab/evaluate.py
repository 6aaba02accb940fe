"""Score any checkpoint on a prepared dataset with the study's protocol (docs §7)::

    python -m rwkvlab.evaluate --checkpoint PATH --dataset NAME --out DIR [--seed K] [--split test]
        [--params params.yaml] [--set key=value ...] [--device auto]

The checkpoint is any rwkvlab checkpoint with a segmentation model: a training stage's ``best.pt``/``last.pt``, or
the authors' trained network converted by ``python -m rwkvlab.convert`` (docs §21). ``NAME`` is a dataset of
``prepare.datasets`` whose prepare stage has run; ``--seed`` picks its split (default ``ablate.split_seed``'s
default, 0). Writes ``DIR/{metrics.json,per_case.csv,predictions.npz}``, as the evaluate stage does for a run, and
nothing else; prints the metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

import torch

from rwkvlab import config, paths
from rwkvlab.data import load_prepared
from rwkvlab.engine.evaluate import evaluate_split, write_evaluation
from rwkvlab.engine.inference import SlidingWindow, resolve_device, spatial_dims
from rwkvlab.models import model_from_checkpoint, read_checkpoint
from rwkvlab.train import parse_overrides

logger = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "main"]


def evaluate_checkpoint(p: config.Params, checkpoint: Path, dataset: str, out: Path, seed: int = 0,
                        split: str = "test", device: torch.device | None = None) -> dict[str, float]:
    """Score ``checkpoint`` on ``split`` of ``dataset`` (split ``seed``) and write the evaluation under ``out``.

    Raises:
        FileNotFoundError: the checkpoint, or the dataset's prepared cache or split file, is missing.
        ValueError: naming the file, when the checkpoint is not ours or does not fit the data (channels, classes).
    """
    if dataset not in p.prepare.datasets:
        raise ValueError(f"--dataset: {dataset!r} is not in prepare.datasets ({', '.join(p.prepare.datasets)})")
    cache, split_file = paths.cache(p, dataset), paths.split_file(p, dataset, seed)
    for file in (cache, split_file):
        if not file.is_file():
            raise FileNotFoundError(f"{file}: not prepared; run dvc repro prepare@{dataset}")
    state = read_checkpoint(checkpoint)
    device = device or resolve_device(p.base.device)
    model = model_from_checkpoint(state, checkpoint).to(device).eval()
    data = load_prepared(cache, split_file)
    kwargs = state["model_kwargs"]
    if (kwargs.get("in_chans"), kwargs.get("num_classes")) != (data.in_chans, data.num_classes):
        raise ValueError(f"{checkpoint}: {state['model_name']} takes {kwargs.get('in_chans')} channel(s) and "
                         f"{kwargs.get('num_classes')} classes; {dataset} has {data.in_chans} and {data.num_classes}")
    window = None
    if spatial_dims(model) == 3:
        if "sliding_window" not in state.get("meta", {}):
            raise ValueError(f"{checkpoint}: a volumetric model is scored with the sliding window its training "
                             f"recorded (meta sliding_window), which this checkpoint lacks")
        window = SlidingWindow.of(state["meta"]["sliding_window"])
    per_case, preds = evaluate_split(model, data, split, p.evaluate.batch_size, device, window)
    return write_evaluation(out, per_case, preds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="an rwkvlab checkpoint (.pt)")
    parser.add_argument("--dataset", required=True, help="a prepared dataset of prepare.datasets")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json, per_case.csv, predictions")
    parser.add_argument("--seed", type=int, default=0, help="the split seed (prepare.split_seeds)")
    parser.add_argument("--split", default="test", help="the split to score (train, val or test)")
    parser.add_argument("--params", type=Path, default=None, help="params file (default: the project's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="replace a params key")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: base.device)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        p = config.load(args.params, **parse_overrides(args.set))
        device = resolve_device(args.device) if args.device else None
        metrics = evaluate_checkpoint(p, args.checkpoint, args.dataset, args.out, args.seed, args.split, device)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
