"""One build funnel for every model amp-hf reads: local folders (stock, pruned, or a family's own Hub layout) and the
embedded default."""

from __future__ import annotations

from pathlib import Path

import transformers

from .checkpoint import CheckpointError, load_pruned
from .families import folder_family, get_adapter
from .families.timm import is_timm_folder, load_timm_folder
from .files.aliases import EMBEDDED_MODELS, resolve_model_path
from .files.reading import from_pretrained_checked, read_config


def load_model(name_or_path: str, **kwargs):
    """Load a supported model as the class it was saved from (pruned amp_* or stock transformers)."""
    path = resolve_model_path(name_or_path)
    family = folder_family(path) if Path(path).is_dir() else None
    if family is not None:  # a family's own Hub layout (open_clip's), no config.json
        return family.load_folder(path).eval()
    if Path(path).is_dir():
        config = read_config(path)
        if str(config.get("model_type", "")).startswith("amp_"):
            return load_pruned(path, **kwargs)
        if is_timm_folder(config):  # timm's Hub layout, read through transformers' TimmWrapper
            return load_timm_folder(path, **kwargs).eval()
        architecture = (config.get("architectures") or [None])[0]
        model_cls = getattr(transformers, architecture, None) if isinstance(architecture, str) else None
        if model_cls is None:
            model_cls = transformers.AutoModel
        model = from_pretrained_checked(model_cls, path, **kwargs)
    elif Path(path).exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint folder that holds config.json")
    elif "/" in path and not path.startswith((".", "/")):
        model = from_pretrained_checked(transformers.AutoModel, path, **kwargs)  # Hub id: only if the user's cache has it
    else:
        raise CheckpointError(f"model {name_or_path!r} not found: pass a checkpoint folder or one of {sorted(EMBEDDED_MODELS)}")
    get_adapter(model)  # fail early, listing supported families, for an unsupported architecture
    return model.eval()
