"""rwkvlab: a reproducible study of RWKV-UNet for medical image segmentation."""

from rwkvlab.models import create_model, list_models

__all__ = ["create_model", "list_models"]
__version__ = "0.1.0"
