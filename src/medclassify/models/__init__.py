# Importing the model modules runs their @register_model decorators (as timm's models/__init__ does).
from . import efficientnet_lite, seed_cnn  # noqa: F401
from .registry import create_model, get_spec, list_models, register_model

__all__ = ["create_model", "get_spec", "list_models", "register_model"]
