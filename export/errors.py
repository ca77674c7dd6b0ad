"""Errors of the export package: what went wrong, and what to do about it."""

from __future__ import annotations

from amp_hf.errors import UsageError


class ExportOptionError(UsageError, ValueError):
    """An option or a combination of options the exporter cannot honour (a user error: exit code 2)."""


class ExportError(RuntimeError):
    """An export that ran but did not produce a graph that can be trusted; no output folder is left behind."""


class ValidationError(ExportError):
    """ONNX Runtime disagrees with PyTorch (or the graph fails the ONNX checker)."""


class TensorRTBlockerError(ExportError):
    """The graph holds something TensorRT's ONNX parser would reject."""
