"""Load any supported checkpoint folder, pruned (amp_*) or stock, with errors that say what to fix."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import PreTrainedModel

from amp_hf import ADAPTERS, CheckpointError, UnsupportedModelError
from amp_hf.checkpoint import read_config
from amp_hf.models import MODEL_CLASSES


def supported_architectures() -> dict[str, type]:
    """``config.architectures[0]`` -> class, for every stock and amp_* model class amp-hf supports."""
    classes = {name: cls for name, cls in MODEL_CLASSES.items()}
    for adapter in ADAPTERS.values():
        classes.update({cls.__name__: cls for cls in adapter.model_classes})
    return classes


def load_checkpoint(path: str | os.PathLike) -> PreTrainedModel:
    """The model saved at ``path`` (a local folder), in eval mode, as the class it was saved from."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint folder {path} does not exist: pass a folder holding config.json and model.safetensors "
            "(a `save_pretrained` / `amp-hf prune` output)"
        )
    config = read_config(path)  # CheckpointError for a missing or unreadable config.json
    architecture = (config.get("architectures") or [None])[0]
    classes = supported_architectures()
    if architecture not in classes:
        raise UnsupportedModelError(
            f"{path} holds a {architecture or config.get('model_type', 'unknown')} model, which amp-hf cannot "
            f"export. Supported architectures: {', '.join(sorted(classes))}"
        )
    try:
        model, info = classes[architecture].from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(
            f"cannot load the weights in {path} ({error}): the checkpoint is incomplete or corrupt; re-save it"
        ) from error
    broken = {kind: names for kind, names in info.items() if kind in ("missing_keys", "mismatched_keys") and names}
    if broken:
        raise CheckpointError(
            f"{path}: the weights do not match config.json ({_summary(broken)}); the checkpoint is incomplete or "
            "corrupt: re-save it"
        )
    return model.eval()


def _summary(broken: dict) -> str:
    parts = []
    for kind, names in broken.items():
        names = sorted(str(n) for n in names)
        parts.append(f"{len(names)} {kind.replace('_', ' ')}, e.g. {names[0]}")
    return "; ".join(parts)
