"""Command line for encoder pretraining (``rwkvlab.engine.pretrain``)::

    python -m rwkvlab.pretrain [--params params.yaml] [--recipe NAME] [--data ROOT] [--model rwkv_enc_t]
        [--epochs E] [--batch-size B] [--img-size S] [--out DIR] [--reports DIR] [--device D] [--resume]
    torchrun --nproc_per_node=N -m rwkvlab.pretrain ...      # DDP: N processes (gloo on CPU, nccl on CUDA)

Options not given come from the ``pretrain`` section of the params file (recipe ``pretrain.recipe``
unless ``--recipe``). ``--out`` (default ``data/adhoc/pretrain/<model>``, git-ignored and outside every stage)
holds the checkpoints and, unless ``--reports`` names another folder, ``history.csv`` and ``metrics.json``: a
command never changes the study (the stage ``pretrain@<model>`` names its own folders, ``--out`` and
``--reports``, to its ``torchrun`` processes). ``--batch-size`` is the global batch, split over the
processes. Without ``--resume`` an existing ``last.pt`` is ignored and overwritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from timm.utils.distributed import init_distributed_device_so

from rwkvlab import config, paths
from rwkvlab.engine.pretrain import pretrain, with_overrides
from rwkvlab.engine.inference import resolve_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=None,
                        help="params file (pretrain section); default: the project's params.yaml above the working directory")
    parser.add_argument("--recipe", help="entry of pretrain.recipes (default: pretrain.recipe)")
    parser.add_argument("--data", type=Path, help="ImageFolder root with train/ and val/")
    parser.add_argument("--model", help="registered encoder with a head, e.g. rwkv_enc_t (default: the one of "
                        "pretrain.models)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--img-size", type=int, help="training and evaluation size, a multiple of 16")
    parser.add_argument("--out", type=Path, help="checkpoint folder (last.pt, encoder.pt); default: "
                        "data/adhoc/pretrain/<model>")
    parser.add_argument("--reports", type=Path, help="folder of history.csv and metrics.json (default: --out)")
    parser.add_argument("--device", help="auto, cpu or cuda (default: base.device)")
    parser.add_argument("--resume", action="store_true", help="continue after the last completed epoch")
    args = parser.parse_args(argv)

    p = config.load(args.params, **({"pretrain.recipe": args.recipe} if args.recipe else {}))
    if args.model is None and len(p.pretrain.models) > 1:
        parser.error(f"--model: pretrain.models lists {list(p.pretrain.models)}; say which to pretrain")
    model = args.model or p.pretrain.models[0]
    recipe = with_overrides(p.pretrain.run_recipe(), data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                            img_size=args.img_size)
    out_dir = args.out or paths.adhoc_dir(p, "pretrain") / model
    # Under torchrun this joins the process group and picks this rank's GPU (cuda:LOCAL_RANK).
    dev = init_distributed_device_so(device=str(resolve_device(args.device or p.base.device)))
    logging.basicConfig(level=logging.INFO if dev["global_rank"] == 0 else logging.WARNING,
                        format=f"[rank {dev['global_rank']}] %(message)s")
    try:
        history = pretrain(model, recipe, out_dir, seed=p.base.seed, device=torch.device(dev["device"]),
                           reports_dir=args.reports or out_dir, num_workers=p.pretrain.num_workers,
                           resume=args.resume)
    finally:
        if dev["distributed"]:
            dist.destroy_process_group()
    if dev["global_rank"] == 0:
        print(json.dumps(history.iloc[-1].to_dict() if len(history) else {}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
