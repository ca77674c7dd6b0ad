"""Load any supported checkpoint folder, pruned (amp_*) or stock, with errors that say what to fix."""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel

from amp_hf import ADAPTERS, CheckpointError, UnsupportedModelError
from amp_hf.families import MODEL_CLASSES, folder_family
from amp_hf.files.outputs import expand
from amp_hf.files.reading import read_config
from amp_hf.loading import load_model


def supported_architectures() -> dict[str, type]:
    """``config.architectures[0]`` -> class, for every stock and amp_* model class amp-hf supports."""
    classes = {name: cls for name, cls in MODEL_CLASSES.items()}
    for adapter in ADAPTERS.values():
        classes.update({entry.stock.__name__: entry.stock for entry in adapter.classes})
    return classes


def load_checkpoint(path: str | os.PathLike) -> PreTrainedModel:
    """The model saved at ``path`` (a local folder), in eval mode, as the class it was saved from."""
    path = expand(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint folder {path} does not exist: pass a folder holding config.json and model.safetensors "
            "(a `save_pretrained` / `amp-hf prune` output)"
        )
    if folder_family(path) is not None:  # a family's own Hub layout (open_clip's: wrapped as amp_open_clip)
        return load_model(str(path))
    config = read_config(path)  # CheckpointError for a missing or unreadable config.json
    architecture = (config.get("architectures") or [None])[0]
    architecture = architecture if isinstance(architecture, str) else None
    classes = supported_architectures()
    if architecture not in classes:
        raise UnsupportedModelError(
            f"{path} holds a {architecture or config.get('model_type', 'unknown')} model, which amp-hf cannot "
            f"export. Supported architectures: {', '.join(sorted(classes))}"
        )
    return load_model(str(path), dtype=torch.float32)
