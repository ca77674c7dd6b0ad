"""Lazy package faces (PEP 562): a package's public names import their modules on first use.

``import amp_hf`` (and ``export``, ``hub_cards``) then costs no torch / transformers / onnx import, so the
command line parses and checks its arguments before any of them loads.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def lazy_attributes(package: str, names: dict[str, str], public: Iterable[str],
                    before_first_use: Callable[[], None] | None = None):
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps each public name to the module (relative
    to ``package``) that defines it; ``before_first_use`` runs once before the first lazy import."""
    namespace = importlib.import_module(package).__dict__
    pending = [before_first_use] if before_first_use else []

    def __getattr__(name: str) -> Any:
        module_name = names.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        while pending:
            pending.pop()()
        value = getattr(importlib.import_module(module_name, package), name)
        namespace[name] = value  # later accesses skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *public})

    return __getattr__, __dir__
