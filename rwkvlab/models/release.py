"""The authors' checkpoints as rwkvlab models (docs §21): key mapping and strict conversion.

The release (github juntaoJianggavin/RWKV-UNet @df96e2f) saves ``torch.save(model.state_dict())`` of its
``RWKV_UNet_T`` / ``RWKV_UNet_S`` / ``RWKV_UNet`` (B), and publishes ImageNet encoders as the state dict of
``RWKV_UNet_encoder_*`` (what its models load into ``self.encoder``). Our RWKV-UNet is the same network under other
names: every tensor its forward reads has one counterpart here (:func:`release_key`), the token-shift ratios
change shape from (1, 1, C) to (C,), and the tensors of modules it builds but never calls (the spatial mix and
LayerNorms of blocks that do not mix, every ``ln2``, the decoder's ``ln1``, and, in a whole model, the encoder's
ImageNet norm and head) are skipped and listed once. The release loads with ``strict=False``; this conversion
is strict: a missing or mis-shaped tensor, or a tensor of a module the target does not have (a checkpoint of
another size), stops it with the file and the first key that fails.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from rwkvlab.models._registry import create_model

logger = logging.getLogger(__name__)

__all__ = ["RELEASE_MODELS", "ReleaseError", "release_key", "from_release", "release_kind"]

# our segmentation model -> the release's class, and the encoder model its encoder file converts to
RELEASE_MODELS = {"rwkv_unet_t": ("RWKV_UNet_T", "rwkv_enc_t"), "rwkv_unet_s": ("RWKV_UNet_S", "rwkv_enc_s"),
                  "rwkv_unet_b": ("RWKV_UNet", "rwkv_enc_b")}
# Tensors of modules the release builds but its forward never calls.
_UNUSED = re.compile(r"(^|\.)(ln2|att|ln1)\.|^(encoder\.)?(norm|head)\.")

# (our key inside a GLSP block, the release's); the first candidate that the file holds is used
_BLOCK = [
    (r"norm\.(weight|bias)", (r"norm.norm.\1", r"norm.\1")),  # LayerNorm2d in stages 3-4, BatchNorm in 1-2
    (r"norm\.(.+)", (r"norm.\1",)),
    (r"expand\.0\.weight", ("conv.conv.weight",)),
    (r"expand\.1\.(.+)", (r"conv.norm.\1",)),
    (r"dw\.0\.weight", ("conv_local.conv.weight",)),
    (r"dw\.1\.(.+)", (r"conv_local.norm.\1",)),
    (r"se\.fc1\.(.+)", (r"se.conv_reduce.\1",)),
    (r"se\.fc2\.(.+)", (r"se.conv_expand.\1",)),
    (r"proj\.weight", ("proj.conv.weight",)),
    (r"mix_norm\.(.+)", (r"ln1.\1",)),
    (r"mix\.decay", ("att.spatial_decay",)),
    (r"mix\.first", ("att.spatial_first",)),
    (r"mix\.mu_([kvr])", (r"att.spatial_mix_\1",)),
    (r"mix\.(.+)", (r"att.\1",)),
]
_UP = {"0": "conv", "1": "conv_local", "2": "proj"}
_MODEL = [
    (r"ccm\.inp\.(.+)", (r"ccm.projections.\1",)),
    (r"ccm\.out\.(.+)", (r"ccm.final_projections.\1",)),
    (r"ccm\.norm\.(.+)", (r"ccm.ln1.\1",)),
    (r"ccm\.mix\.mu_([kr])", (r"ccm.channel.spatial_mix_\1",)),
    (r"ccm\.mix\.(.+)", (r"ccm.channel.\1",)),
    (r"head\.(.+)", (r"final_conv.\1",)),
]
_ENCODER_HEAD = [(r"head_norm\.(.+)", (r"norm.norm.\1",)), (r"head\.(.+)", (r"head.\1",))]


class ReleaseError(ValueError):
    """A release checkpoint that does not convert; the message names the file and the first failing key."""


def release_key(ours: str, encoder_only: bool = False) -> tuple[str, ...]:
    """The release's name(s) of our tensor ``ours``, first choice first.

    Args:
        ours: a key of our ``rwkv_unet_*`` state dict, or with ``encoder_only`` of our ``rwkv_enc_*``.
        encoder_only: name keys as the release's encoder files do (no ``encoder.`` prefix).

    Raises:
        KeyError: a key the release has no counterpart for (a setting the release does not have).
    """
    if not encoder_only:
        if ours.startswith("encoder."):
            return tuple("encoder." + k for k in release_key(ours[len("encoder."):], encoder_only=True))
        if m := re.fullmatch(r"decoder\.(\d)\.([012])\.(0\.weight|1\.(.+))", ours):
            part = "conv.weight" if m[4] is None else f"norm.{m[4]}"
            return (f"decoder{int(m[1]) + 1}.{_UP[m[2]]}.{part}",)
        return _apply(_MODEL, ours)
    if m := re.fullmatch(r"stem\.(.+)", ours):
        return tuple("stage0.0." + k for k in _apply(_BLOCK, m[1]))
    if m := re.fullmatch(r"stages\.(\d)\.(\d+)\.(.+)", ours):
        return tuple(f"stage{int(m[1]) + 1}.{m[2]}." + k for k in _apply(_BLOCK, m[3]))
    return _apply(_ENCODER_HEAD, ours)


def _apply(rules: Sequence[tuple[str, tuple[str, ...]]], key: str) -> tuple[str, ...]:
    for pattern, targets in rules:
        if m := re.fullmatch(pattern, key):
            return tuple(m.expand(t) for t in targets)
    raise KeyError(key)


def release_kind(state: dict[str, Any]) -> str:
    """``"model"`` for a whole segmentation network, ``"encoder"`` for an encoder file, told apart by the keys."""
    if any(k.startswith("encoder.stage0.") for k in state):
        return "model"
    if any(k.startswith("stage0.") for k in state):
        return "encoder"
    raise ReleaseError("no release RWKV-UNet keys (expected encoder.stage0.* for a model or stage0.* for an "
                       "encoder file)")


def _read(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises several types for a file that is no checkpoint
        first = (str(e).strip().splitlines() or [""])[0]
        raise ReleaseError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from e
    # some trainers wrap the weights; the release's own trainer saves the bare state dict
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ReleaseError(f"{path}: not a state dict of tensors (what the release's torch.save(model.state_dict()) "
                           f"writes)")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel's prefix


def from_release(path: Path | str, model: str, num_classes: int | None = None, in_chans: int | None = None,
                 **model_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Our model with the weights of a release checkpoint, strictly.

    Args:
        path: the release file: a whole network's or an encoder's state dict (told apart by its keys).
        model: ``rwkv_unet_t|s|b``; an encoder file gives the matching ``rwkv_enc_*`` with the file's ImageNet head.
        num_classes: must match the file's head when given (a whole network); ``None`` takes it from the file.
        in_chans: input channels; default as the release's forward: 3 for T (no repeat), 1 for S and B (repeated
            to 3). The weights are the same either way.
        model_kwargs: settings of the built model (e.g. ``wkv="release"``); architecture switches the release
            does not have fail on the first key without a counterpart.

    Returns:
        (the model in eval mode, a record: ``kind``, ``model_name``, ``model_kwargs``, ``skipped`` keys).

    Raises:
        FileNotFoundError: no file at ``path``.
        ReleaseError: naming ``path`` and the first key that fails.
    """
    path = Path(path)
    if model not in RELEASE_MODELS:
        raise ReleaseError(f"--model must be one of {', '.join(RELEASE_MODELS)}; got {model!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: release checkpoint not found")
    state = _read(path)
    try:
        kind = release_kind(state)
    except ReleaseError as e:
        raise ReleaseError(f"{path}: {e}") from None
    encoder = kind == "encoder"
    if encoder:
        if num_classes is not None:
            raise ReleaseError(f"{path}: an encoder file has no segmentation head; --num-classes is for whole "
                               f"networks")
        head = state.get("head.weight")
        name, kwargs = RELEASE_MODELS[model][1], {"num_classes": 0 if head is None else head.shape[0]}
    else:
        head = state.get("final_conv.weight")
        if head is None:
            raise ReleaseError(f"{path}: missing final_conv.weight (the segmentation head of "
                               f"{RELEASE_MODELS[model][0]})")
        if num_classes is not None and num_classes != head.shape[0]:
            raise ReleaseError(f"{path}: final_conv.weight has {head.shape[0]} classes; --num-classes {num_classes}")
        name, kwargs = model, {"num_classes": head.shape[0]}
    kwargs["in_chans"] = in_chans if in_chans is not None else (3 if model.endswith("_t") else 1)
    kwargs.update(model_kwargs)
    net = create_model(name, **kwargs)
    weights, used = {}, set()
    for ours, target in net.state_dict().items():
        try:
            candidates = release_key(ours, encoder_only=encoder)
        except KeyError:
            raise ReleaseError(f"{path}: {name} with {model_kwargs} has {ours}, which the release has no "
                               f"counterpart of (a setting the release does not have)") from None
        theirs = next((k for k in candidates if k in state), None)
        if theirs is None:
            raise ReleaseError(f"{path}: missing {candidates[0]} (for {ours} of {name}); is it a "
                               f"{RELEASE_MODELS[model][0]} checkpoint?")
        value = state[theirs]
        if value.shape != target.shape:
            # the token-shift ratios: (1, 1, C) there, (C,) here
            if value.dim() == 3 and value.shape[:2] == (1, 1) and value.shape[2:] == target.shape:
                value = value.reshape(target.shape)
            else:
                raise ReleaseError(f"{path}: {theirs} has shape {tuple(value.shape)}, {name} needs "
                                   f"{tuple(target.shape)} for {ours} (a checkpoint of another size?)")
        weights[ours] = value.to(target.dtype)
        used.add(theirs)
    rest = [k for k in state if k not in used]
    foreign = [k for k in rest if not _UNUSED.search(k)]
    if foreign:
        raise ReleaseError(f"{path}: {foreign[0]} has no place in {name} ({len(foreign)} such tensors; a "
                           f"checkpoint of another size?)")
    net.load_state_dict(weights, strict=True)
    if rest:
        logger.info("%s: skipped %d tensors of modules the release builds but never calls (%s)", path, len(rest),
                    _summary(rest))
    record = {"kind": kind, "model_name": name, "model_kwargs": kwargs, "skipped": rest}
    return net.eval(), record


def _summary(keys: Sequence[str]) -> str:
    """The skipped keys grouped by module kind, e.g. ``att: 96, ln1: 8``."""
    counts: dict[str, int] = {}
    for k in keys:
        m = _UNUSED.search(k)
        group = m[2] or f"encoder {m[4]}"
        counts[group] = counts.get(group, 0) + 1
    return ", ".join(f"{g}: {n}" for g, n in sorted(counts.items()))
