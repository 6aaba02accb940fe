"""Operators: the Bi-WKV attention of RWKV-UNet (docs §2)."""

from rwkvlab.ops._release import bi_wkv_release
from rwkvlab.ops.bi_wkv import available_backends, bi_wkv

__all__ = ["bi_wkv", "bi_wkv_release", "available_backends"]
