"""Saving and loading pruned checkpoints (the format is described in README, "The pruned checkpoint").

Saving is atomic (``outputs.atomic_directory``): everything is written into a temporary sibling folder that is
renamed into place, so a crash never leaves a half-written checkpoint at the target path.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys
from pathlib import Path

from transformers import PreTrainedModel

from . import families
from .errors import CheckpointError
from .files.outputs import atomic_directory, copy_processor_files
from .files.reading import first_line, from_pretrained_checked, read_config
from .files.sentence_transformers_format import carry_sentence_transformers
from .models import amp_layer_widths
from .plan import PLAN_FILE, PrunePlan

# Weights above this go into numbered safetensors shards with an index (transformers' own format, read by
# from_pretrained alone): the Hub's recommended shard size, where transformers 5 would write one 50 GB file.
MAX_SHARD_SIZE = "5GB"


def _modeling_files(model: PreTrainedModel) -> list[Path]:
    module = sys.modules[type(model).__module__]
    return [Path(inspect.getfile(module)), Path(inspect.getfile(amp_layer_widths))]


def write_config(model: PreTrainedModel, directory: str | os.PathLike) -> None:
    """config.json of ``model`` into ``directory``; for a pruned model with its ``auto_map`` and the flat modeling
    files that ``auto_map`` names beside it, so ``AutoConfig`` / ``AutoModel.from_pretrained(directory,
    trust_remote_code=True)`` work where amp_hf is not installed (a stock model's config is written as it is)."""
    directory = Path(directory)
    if type(model).__name__ in families.MODEL_CLASSES:
        model.config.auto_map = families.auto_map_for(type(model.config), type(model))
        for source in _modeling_files(model):
            shutil.copy2(source, directory / source.name)
    model.config.save_pretrained(directory)


def write_pruned(model: PreTrainedModel, directory: str | os.PathLike, plan: PrunePlan | None = None, extras=(),
                 carry_from: str | os.PathLike | None = None, max_shard_size: int | str = MAX_SHARD_SIZE) -> None:
    """Write the checkpoint files into an existing folder (non-atomic; see ``save_pruned``).

    ``carry_from``: the folder the model came from (its base, or the pruned checkpoint it was trained from;
    default: ``model.name_or_path`` when that is a folder). Its processor / tokenizer files are copied when
    ``extras`` is empty (``AutoTokenizer`` / ``AutoProcessor.from_pretrained(checkpoint)`` then work), and a
    sentence-transformers folder's modules and settings are carried over, so the checkpoint stays a
    sentence-transformers model.
    """
    if type(model).__name__ not in families.MODEL_CLASSES:
        raise CheckpointError(
            f"{type(model).__name__} is not a pruned amp-hf model: slice it first (amp_hf.slice_model)"
        )
    directory = Path(directory)
    model.config.auto_map = families.auto_map_for(type(model.config), type(model))
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    for source in _modeling_files(model):
        shutil.copy2(source, directory / source.name)
    if plan is not None:
        plan.save(directory / PLAN_FILE)
    if families.get_adapter(model).processor_in_config:
        extras = ()  # its preprocessing is in config.json already (timm's pretrained_cfg, open_clip's config)
    for extra in extras:  # processors / tokenizers: anything with save_pretrained
        extra.save_pretrained(directory)
    carry_from = carry_from if carry_from is not None else getattr(model, "name_or_path", "")
    if carry_from and Path(carry_from).is_dir():
        if not extras:
            # Copied as they are, not loaded and re-saved: byte for byte the base's preprocessing, whatever
            # tokenizer backend it needs, and nothing to load that could fail or be slow.
            copy_processor_files(carry_from, directory)
        carry_sentence_transformers(carry_from, directory)


def save_pruned(
    model: PreTrainedModel,
    path: str | os.PathLike,
    plan: PrunePlan | None = None,
    processor=None,
    overwrite: bool = False,
    carry_from: str | os.PathLike | None = None,
    max_shard_size: int | str = MAX_SHARD_SIZE,
) -> Path:
    """Save a pruned model as a ``from_pretrained``-loadable folder, atomically.

    Writes config.json (amp_* model type, explicit ``per_layer_config``, ``amp_pruning``, ``auto_map``),
    model.safetensors, the flat modeling files, ``amp_plan.json`` (kept indices) when a plan is given, the
    processor / tokenizer files (``processor``'s when given, else those of ``carry_from``) and the
    sentence-transformers modules of ``carry_from`` (see ``write_pruned``). Weights above ``max_shard_size`` are
    written as ``model-0000i-of-0000n.safetensors`` shards with ``model.safetensors.index.json``.
    """
    with atomic_directory(path, overwrite=overwrite) as staging:
        write_pruned(model, staging, plan, extras=[processor] if processor is not None else [], carry_from=carry_from,
                     max_shard_size=max_shard_size)
    return Path(path)


def is_pruned_checkpoint(path: str | os.PathLike) -> bool:
    return str(read_config(path).get("model_type", "")).startswith("amp_")


def pruned_architecture(path: str | os.PathLike, config: dict | None = None,
                        hint: str = "load it with transformers' Auto classes") -> str:
    """The amp_* class name a pruned checkpoint was saved from; a clear error for any other folder."""
    config = read_config(path) if config is None else config
    architecture = (config.get("architectures") or [None])[0]
    if architecture not in families.MODEL_CLASSES:
        raise CheckpointError(
            f"{path} is not an amp-hf pruned checkpoint (architectures={config.get('architectures')}): "
            f"{hint}, or prune it first with `amp-hf prune`"
        )
    return architecture


def load_pruned(path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """Load a pruned checkpoint as the exact class it was saved from (``config.architectures[0]``); a damaged
    checkpoint (weights, ``per_layer_config``, ``amp_plan.json``) is a ``CheckpointError`` naming the fix."""
    model = from_pretrained_checked(families.MODEL_CLASSES[pruned_architecture(path)], path, **kwargs)
    load_plan(path, model)
    return model


def load_plan(path: str | os.PathLike, model: PreTrainedModel | None = None) -> PrunePlan | None:
    """The checkpoint's ``amp_plan.json`` (None when it has none), checked against the model's widths."""
    plan_file = Path(path) / PLAN_FILE
    if not plan_file.is_file():
        return None
    try:
        plan = PrunePlan.load(plan_file)
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{plan_file} is damaged ({first_line(error)}): delete it or re-save the checkpoint") from error
    if model is not None:
        from .families import get_adapter

        widths = get_adapter(model).widths(model)
        if plan.widths != widths:
            raise CheckpointError(
                f"{plan_file} keeps widths {plan.widths} but the checkpoint's per_layer_config and tensors have "
                f"{widths}: the plan is stale; delete {PLAN_FILE} or re-save the checkpoint"
            )
    return plan
