"""Model families: what amp-hf knows about each supported architecture (``base``: the adapter, the resolved
MLP stack; ``registry``: the table; ``timm`` and ``open_clip``: the two families outside transformers;
``io_spec``: export I/O specs). A family file never imports checkpoint or loading code."""

from ..errors import UnsupportedModelError
from .base import TEXT_SEQUENCE_LENGTH, FamilyAdapter, MlpStack, ModelClass, ResidualWriter
from .registry import (
    ADAPTERS,
    AUTO_CLASSES,
    MODEL_CLASSES,
    auto_map_for,
    folder_family,
    get_adapter,
    register_auto_classes,
    resolve,
    supported_architectures,
    supported_models,
)

__all__ = [
    "ADAPTERS",
    "AUTO_CLASSES",
    "MODEL_CLASSES",
    "TEXT_SEQUENCE_LENGTH",
    "FamilyAdapter",
    "MlpStack",
    "ModelClass",
    "ResidualWriter",
    "UnsupportedModelError",
    "auto_map_for",
    "folder_family",
    "get_adapter",
    "register_auto_classes",
    "resolve",
    "supported_architectures",
    "supported_models",
]
