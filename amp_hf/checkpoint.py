"""Saving and loading pruned checkpoints (format: shared/reference/format.md, summarised in README).

Saving is atomic: everything is written into a temporary sibling folder that is renamed into place, so a
crash never leaves a half-written checkpoint at the target path.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from transformers import PreTrainedModel

from . import models as amp_models
from .models import amp_layer_widths
from .plan import PLAN_FILE, PrunePlan

CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    pass


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``, on error it vanishes."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists: choose another output path or pass overwrite=True (--overwrite)")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, trash / target.name)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _modeling_files(model: PreTrainedModel) -> list[Path]:
    module = sys.modules[type(model).__module__]
    return [Path(inspect.getfile(module)), Path(inspect.getfile(amp_layer_widths))]


def write_pruned(model: PreTrainedModel, directory: str | os.PathLike, plan: PrunePlan | None = None, extras=()) -> None:
    """Write the checkpoint files into an existing folder (non-atomic; see ``save_pruned``)."""
    if type(model).__name__ not in amp_models.MODEL_CLASSES:
        raise CheckpointError(
            f"{type(model).__name__} is not a pruned amp-hf model: slice it first (amp_hf.slice_model)"
        )
    directory = Path(directory)
    config = model.config
    config.auto_map = amp_models.auto_map_for(type(config), type(model))
    model.save_pretrained(directory)
    for source in _modeling_files(model):
        shutil.copy2(source, directory / source.name)
    if plan is not None:
        plan.save(directory / PLAN_FILE)
    for extra in extras:  # processors / tokenizers: anything with save_pretrained
        extra.save_pretrained(directory)


def save_pruned(
    model: PreTrainedModel,
    path: str | os.PathLike,
    plan: PrunePlan | None = None,
    processor=None,
    overwrite: bool = False,
) -> Path:
    """Save a pruned model as a ``from_pretrained``-loadable folder, atomically.

    Writes config.json (amp_* model type, explicit ``per_layer_config``, ``amp_pruning``, ``auto_map``),
    model.safetensors, the flat modeling files, ``amp_plan.json`` (kept indices) when a plan is given, and
    the processor / tokenizer files when ``processor`` is given.
    """
    with atomic_directory(path, overwrite=overwrite) as staging:
        write_pruned(model, staging, plan, extras=[processor] if processor is not None else [])
    return Path(path)


def read_config(path: str | os.PathLike) -> dict:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint folder: {CONFIG_FILE} is missing")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path} is not valid JSON ({error}): the checkpoint is corrupt") from error


def is_pruned_checkpoint(path: str | os.PathLike) -> bool:
    return str(read_config(path).get("model_type", "")).startswith("amp_")


def pruned_architecture(path: str | os.PathLike, config: dict | None = None,
                        hint: str = "load it with transformers' Auto classes") -> str:
    """The amp_* class name a pruned checkpoint was saved from; a clear error for any other folder."""
    config = read_config(path) if config is None else config
    architecture = (config.get("architectures") or [None])[0]
    if architecture not in amp_models.MODEL_CLASSES:
        raise CheckpointError(
            f"{path} is not an amp-hf pruned checkpoint (architectures={config.get('architectures')}): "
            f"{hint}, or prune it first with `amp-hf prune`"
        )
    return architecture


def load_pruned(path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """Load a pruned checkpoint as the exact class it was saved from (``config.architectures[0]``)."""
    return amp_models.MODEL_CLASSES[pruned_architecture(path)].from_pretrained(path, **kwargs)
