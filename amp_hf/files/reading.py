"""Reading a model folder: its config.json, and its weights through ``from_pretrained`` with a damaged folder
reported as a ``CheckpointError`` naming the fix. No family knowledge: the caller passes the class."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedModel

from ..errors import CheckpointError
from .artifacts import CONFIG_FILE


def read_config(path: str | os.PathLike) -> dict:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint folder: {CONFIG_FILE} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON ({error}): the checkpoint is corrupt; re-save it") from error
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{config_path} holds a JSON {type(config).__name__}, not an object of config fields: the checkpoint "
            "is corrupt; re-save it"
        )
    return config


# What transformers / safetensors raise for a folder whose files do not fit together (truncated or missing
# weights, a config that disagrees with the tensors): at this boundary all of them mean a damaged checkpoint.
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, IndexError, TypeError, EOFError)


def from_pretrained_checked(model_cls, path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """``model_cls.from_pretrained(path)``, failing with a ``CheckpointError`` when the folder is damaged:
    unreadable or truncated weights, tensors missing or of the wrong shape for config.json."""
    from safetensors import SafetensorError

    try:
        model, info = model_cls.from_pretrained(path, output_loading_info=True, **kwargs)
    except CheckpointError:
        raise
    except (*_LOAD_ERRORS, SafetensorError) as error:
        if "mismatch" in str(error):
            raise CheckpointError(
                f"cannot load {path}: tensor shapes in the weights disagree with config.json (sizes or "
                "per_layer_config were changed, or the files come from different saves); re-save the checkpoint"
            ) from error
        raise CheckpointError(
            f"cannot load the weights in {path} ({type(error).__name__}: {first_line(error)}): the checkpoint is "
            "incomplete or corrupt; re-save it"
        ) from error
    broken = {kind: names for kind, names in info.items() if kind in ("missing_keys", "mismatched_keys") and names}
    if broken:
        raise CheckpointError(
            f"{path}: the weights do not match config.json ({_summary(broken)}); the checkpoint is incomplete or "
            "corrupt: re-save it"
        )
    return model


def _summary(broken: dict) -> str:
    parts = []
    for kind, names in broken.items():
        names = sorted(str(n) for n in names)
        parts.append(f"{len(names)} {kind.replace('_', ' ')}, e.g. {names[0]}")
    return "; ".join(parts)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
