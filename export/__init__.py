"""Export amp-hf models (pruned or not) to validated ONNX graphs, TensorRT-ready profiles, and run them with
ONNX Runtime.

>>> from export import ExportOptions, ExportRunner, export_checkpoint
>>> export_checkpoint("pruned-vit", "pruned-vit-onnx", ExportOptions(dtype="fp16"))
>>> ExportRunner("pruned-vit-onnx").embed(images=[image])
"""

from .errors import (
    ExportError,
    ExportOptionError,
    TensorRTBlockerError,
    ValidationError,
)
from .exporter import ExportResult, export_checkpoint, export_model
from .loading import load_checkpoint
from .options import ExportOptions
from .runtime import ExportRunner, select_providers
from .specs import SPECS, architecture_spec

__all__ = [
    "SPECS",
    "ExportError",
    "ExportOptionError",
    "ExportOptions",
    "ExportResult",
    "ExportRunner",
    "TensorRTBlockerError",
    "ValidationError",
    "architecture_spec",
    "export_checkpoint",
    "export_model",
    "load_checkpoint",
    "select_providers",
]
