"""The checkpoint an export traces: amp-hf's one loader (``amp_hf.load_model``) in float32."""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel

from amp_hf.families import supported_architectures
from amp_hf.loading import load_model

__all__ = ["load_checkpoint", "supported_architectures"]


def load_checkpoint(reference: str | os.PathLike) -> PreTrainedModel:
    """The model at ``reference`` (a folder, alias or Hub id), in eval mode and float32, as the class it was
    saved from."""
    return load_model(os.fspath(reference), dtype=torch.float32)
