"""rwkvlab: a reproducible study of RWKV-UNet for medical image segmentation."""

import importlib
from typing import Any

__all__ = ["create_model", "list_models", "load_model"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one submodule (the report's tables, the config) does not import the models and the
    # WKV operator: the pipeline's stage dependencies follow each stage's real imports (rwkvlab.pipeline).
    if name in __all__:
        return getattr(importlib.import_module("rwkvlab.models"), name)
    raise AttributeError(f"module 'rwkvlab' has no attribute {name!r}")
