"""Export amp-hf models (pruned or not) to validated ONNX graphs, TensorRT-ready profiles, and run them with
ONNX Runtime.

>>> from export import ExportOptions, ExportRunner, export_checkpoint
>>> export_checkpoint("pruned-vit", "pruned-vit-onnx", ExportOptions(dtype="fp16"))
>>> ExportRunner("pruned-vit-onnx").embed(images=[image])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from amp_hf._lazy import lazy_attributes

# Public name -> the module that defines it, imported on first use (PEP 562): importing the package stays cheap.
_LAZY_NAMES = {
    "ExportError": ".errors",
    "ExportOptionError": ".errors",
    "ExportOptions": ".options",
    "ExportResult": ".exporter",
    "ExportRunner": ".runtime",
    "SPECS": ".specs",
    "TensorRTBlockerError": ".errors",
    "ValidationError": ".errors",
    "architecture_spec": ".specs",
    "export_checkpoint": ".exporter",
    "export_model": ".exporter",
    "load_checkpoint": ".loading",
    "select_providers": ".runtime",
}

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

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, __all__)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
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
