"""Convert the authors' released checkpoints into rwkvlab checkpoints (docs §21)::

    python -m rwkvlab.convert IN OUT --model rwkv_unet_t|s|b [--num-classes N] [--in-chans C] [--wkv exact|release]
        [--img-size H W] [--class-names NAME ...]

``IN`` is what the release's trainer saves (``torch.save(model.state_dict())`` of RWKV_UNet_T/S/B) or one of its
ImageNet encoder files (the state dict its models load into ``self.encoder``); the keys tell which. ``OUT`` is an
ordinary rwkvlab checkpoint (model name, keyword arguments, weights): a whole network becomes ``rwkv_unet_*``, with
the ``meta`` that evaluation and prediction read (``--img-size``, ``--class-names``; the intensity follows
``--in-chans``), an encoder file ``rwkv_enc_*`` for ``init:`` of a training run. Load either with
``rwkvlab.load_model(OUT)``.

The release's checkpoints were trained through its CUDA kernel, which is not the Bi-WKV formula (docs §21):
``--wkv release`` runs that kernel's arithmetic, ``--wkv exact`` (default) the formula. The conversion is strict;
on any failure nothing is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from rwkvlab.engine.checkpoint import save_checkpoint
from rwkvlab.models.release import RELEASE_MODELS, ReleaseError, from_release

logger = logging.getLogger(__name__)

__all__ = ["convert", "main"]


def convert(src: Path | str, dst: Path | str, model: str, num_classes: int | None = None,
            in_chans: int | None = None, wkv: str = "exact", img_size: Sequence[int] = (224, 224),
            class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Convert ``src`` (a release file) into the rwkvlab checkpoint ``dst``, written atomically.

    Returns:
        the checkpoint written (``model``, ``model_name``, ``model_kwargs``, ``meta`` for a whole network,
        ``source: "release"`` and ``release``: the file, its kind and the release tensors skipped).

    Raises:
        FileNotFoundError, ReleaseError: naming ``src``; nothing is written.
    """
    net, record = from_release(src, model, num_classes=num_classes, in_chans=in_chans, wkv=wkv)
    kwargs = record["model_kwargs"]
    state = {"model": net.state_dict(), "model_name": record["model_name"], "model_kwargs": kwargs,
             "source": "release", "release": {"file": str(src), "kind": record["kind"], "skipped": record["skipped"]}}
    if record["kind"] == "model":
        n = kwargs["num_classes"]
        names = list(class_names) if class_names else ["background", *(f"class {i}" for i in range(1, n))]
        if len(names) != n:
            raise ReleaseError(f"{src}: --class-names gives {len(names)} names for {n} classes")
        state["meta"] = {"dataset": f"release:{Path(src).name}", "class_names": names,
                         "image_size": [int(s) for s in img_size], "in_chans": kwargs["in_chans"],
                         "intensity": "unit_float" if kwargs["in_chans"] == 1 else "uint8"}
    save_checkpoint(Path(dst), state)
    logger.info("%s -> %s: %s %s", src, dst, record["model_name"], kwargs)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rwkvlab.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, metavar="IN", help="the release's .pth (a whole network or an encoder)")
    parser.add_argument("dst", type=Path, metavar="OUT", help="the rwkvlab checkpoint to write (.pt)")
    parser.add_argument("--model", required=True, choices=sorted(RELEASE_MODELS), help="the release model's size")
    parser.add_argument("--num-classes", type=int, help="check the file's head has this many classes")
    parser.add_argument("--in-chans", type=int, choices=(1, 3),
                        help="input channels (default as the release's forward: 3 for T, 1 for S and B)")
    parser.add_argument("--wkv", choices=("exact", "release"), default="exact",
                        help="Bi-WKV of the converted model: the formula, or the release kernel's arithmetic")
    parser.add_argument("--img-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
                        help="the size the network was trained at (prediction resizes to it)")
    parser.add_argument("--class-names", nargs="+", help="class names, background first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.src, args.dst, args.model, args.num_classes, args.in_chans, args.wkv, args.img_size,
                args.class_names)
    except (ReleaseError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
