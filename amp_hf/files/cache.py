"""Where amp-hf keeps files it can rebuild (reference models, zero-shot text classifiers)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AMP_HF_CACHE"


def cache_root() -> Path:
    """``$AMP_HF_CACHE`` if set, else ``$XDG_CACHE_HOME/amp-hf`` (default ``~/.cache/amp-hf``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "amp-hf"
