"""Model zoo: every architecture registers itself here with its card; build with :func:`create_model`."""

from rwkvlab.models import rwkv_unet  # noqa: F401  (registers the RWKV-UNet sizes)
from rwkvlab.models import baselines  # noqa: F401  (registers the comparison baselines)
from rwkvlab.models._registry import (ModelCard, PaperCount, create_model, list_models, load_model, model_card,
                                      model_cards, model_from_checkpoint, read_checkpoint, register_model)

__all__ = ["create_model", "list_models", "register_model", "ModelCard", "PaperCount", "model_card", "model_cards",
           "load_model", "model_from_checkpoint", "read_checkpoint"]
