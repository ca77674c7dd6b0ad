"""The one build funnel for every model amp-hf reads (timm-style): a reference — local folder, embedded alias or
Hub id (``files.model_reference``) — becomes a local folder, and the folder's kind is decided here, once: a
family's own Hub layout (open_clip, timm), an amp-hf pruned checkpoint (amp_* model type), or a stock
transformers model of a supported architecture."""

from __future__ import annotations

from pathlib import Path

import transformers

from .checkpoint import load_pruned
from .errors import CheckpointError
from .families import folder_family, get_adapter, supported_architectures
from .families.registry import hub_files, unsupported_model
from .files.aliases import EMBEDDED_MODELS
from .files.model_reference import ModelReference, resolve_model_path, resolve_reference
from .files.reading import from_pretrained_checked, read_config

__all__ = ["load_model", "model_folder", "resolve_model_path", "resolve_reference"]


def model_folder(reference: str) -> ModelReference:
    """``reference`` resolved to an existing local model folder (downloaded once for a Hub id), or a
    ``CheckpointError`` saying what is wrong with it."""
    resolved = resolve_reference(reference, choose_files=hub_files)
    path = Path(resolved.path)
    if path.is_file():
        raise CheckpointError(f"{reference} is a file; pass the checkpoint folder that holds config.json")
    if not path.is_dir():
        raise CheckpointError(
            f"model folder {reference!r} does not exist: pass a checkpoint folder, a Hub id (ORG/NAME[@REVISION], "
            f"hf-hub:ORG/NAME) or one of {sorted(EMBEDDED_MODELS)}"
        )
    return resolved


def load_model(reference: str, **kwargs):
    """Load a supported model, in eval mode, as the class it was saved from (pruned amp_* or stock).

    ``kwargs`` go to ``from_pretrained`` (e.g. ``dtype``). The architecture is checked before any weight is read.
    """
    path = model_folder(str(reference)).path
    family = folder_family(path)
    if family is not None:
        model = family.load_folder(path, **kwargs)
    else:
        config = read_config(path)
        if str(config.get("model_type", "")).startswith("amp_"):
            model = load_pruned(path, **kwargs)
        else:
            architecture = (config.get("architectures") or [None])[0]
            architecture = architecture if isinstance(architecture, str) else None
            classes = supported_architectures()
            if architecture is not None and architecture not in classes:
                raise unsupported_model(architecture)  # before any weight is read
            model_cls = classes.get(architecture) or transformers.AutoModel
            model = from_pretrained_checked(model_cls, path, **kwargs)
    get_adapter(model)  # fail early, listing supported families, for an unsupported architecture
    return model.eval()
