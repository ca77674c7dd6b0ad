"""Provenance that can leave the machine: base models by Hub id, everything else by relative path.

Every file amp-hf writes into a checkpoint or an export may be pushed to the Hub, where an absolute path of
this machine names nothing anyone else can open and exposes the local layout. So base models are recorded by
their Hub id (or not at all), other folders by a path relative to the file's own folder, and ``amp-hf push``
refuses files that still hold an absolute path of this machine (``find_local_paths``).
"""

from __future__ import annotations

import os
import re
import site
import sys
import tempfile
from pathlib import Path

from .aliases import EMBEDDED_HUB_IDS, embedded_model_path
from .model_reference import known_reference, parse_hub_reference

_HF_CACHE_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<revision>[0-9a-f]{40})")
# How a model's own card names it: `SentenceTransformer("org/name")` / `.from_pretrained('org/name')`.
_CARD_SNIPPET = re.compile(r"""(?:SentenceTransformer|from_pretrained)\(\s*['"](?P<id>[\w.-]+/[\w.-]+)['"]""")


def is_hub_id(name: str) -> bool:
    """A namespaced Hub repo id (``org/name``) that is not a local path."""
    if not isinstance(name, str) or name.count("/") != 1 or name.startswith((".", "/", "~")) or Path(name).exists():
        return False
    from huggingface_hub.errors import HFValidationError  # after the cheap checks: a config refusal stays fast
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_reference(name_or_path: str | os.PathLike | None) -> tuple[str | None, str | None]:
    """(Hub repo id, revision) of a model given by alias, Hub reference or local folder; (None, None) when unknown.

    A Hub reference resolved in this process (``model_reference.resolve_reference``) gives the commit its
    snapshot holds. A local folder is identified by the Hub cache layout it sits in, by being amp-hf's embedded
    model, by the Hub id its own model card loads it with, or by the ``_name_or_path`` its config was saved with.
    """
    if not name_or_path:
        return None, None
    name = str(name_or_path)
    if name in EMBEDDED_HUB_IDS:
        return EMBEDDED_HUB_IDS[name], None
    known = known_reference(name)
    if known is not None and known.repo_id:
        return known.repo_id, known.commit or known.revision
    parsed = parse_hub_reference(name)  # None for an existing path
    if parsed is not None:
        return parsed
    path = Path(os.path.expanduser(name))
    snapshot = _HF_CACHE_SNAPSHOT.search(path.as_posix())
    if snapshot:
        return f"{snapshot['owner']}/{snapshot['name']}", snapshot["revision"]
    if not path.is_dir():
        return None, None
    for alias, repo_id in EMBEDDED_HUB_IDS.items():
        if _same_folder(path, _embedded_path(alias)):
            return repo_id, None
    card = path / "README.md"
    found = _CARD_SNIPPET.search(card.read_text(errors="replace")) if card.is_file() else None
    if found and is_hub_id(found["id"]):
        return found["id"], None
    config = path / "config.json"
    if config.is_file():
        import json

        try:
            recorded = json.loads(config.read_text()).get("_name_or_path")
        except (OSError, ValueError):
            recorded = None
        if isinstance(recorded, str) and is_hub_id(recorded):
            return recorded, None
    return None, None


def _embedded_path(alias: str) -> str | None:
    return embedded_model_path(alias, required=False)  # None: its package is not installed


def _same_folder(first: Path, second: str | None) -> bool:
    return second is not None and first.resolve() == Path(second).resolve()


def portable_reference(value: str | os.PathLike | None, relative_to: str | os.PathLike) -> str | None:
    """How a file in ``relative_to`` should name ``value``: an alias, name or Hub id as it is; a local path as
    the Hub id it is known by, else relative to ``relative_to``."""
    if value is None or value == "":
        return None
    text = str(value)
    expanded = os.path.expanduser(text)
    if not (os.path.isabs(expanded) or os.path.exists(expanded)) or is_hub_id(text):
        return text
    repo_id, _ = hub_reference(expanded)
    if repo_id:
        return repo_id
    return Path(os.path.relpath(os.path.abspath(expanded), os.path.abspath(relative_to))).as_posix()


def portable(values, relative_to: str | os.PathLike):
    """``values`` (nested dicts / lists) with every absolute path string made portable (``portable_reference``)."""
    if isinstance(values, dict):
        return {key: portable(value, relative_to) for key, value in values.items()}
    if isinstance(values, (list, tuple)):
        return [portable(value, relative_to) for value in values]
    if isinstance(values, str) and os.path.isabs(os.path.expanduser(values)) and len(values) > 1:
        return portable_reference(values, relative_to)
    return values


# -- finding this machine's paths ---------------------------------------------------------------------


def local_path_markers(*extra: str | os.PathLike) -> list[str]:
    """Absolute folders of this machine that no shared file should mention: home, working directory, Python
    installation, temp and cache folders (and ``extra``), each as given and resolved, longest first."""
    from .cache import cache_root

    candidates = [Path.home(), Path.cwd(), sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir(),
                  cache_root(), *site.getsitepackages(), *extra]  # fmt: skip
    try:
        from huggingface_hub import constants

        candidates.append(constants.HF_HUB_CACHE)
    except ImportError:
        pass
    markers = set()
    for candidate in candidates:
        for form in (Path(candidate).absolute(), Path(candidate).resolve()):
            if len(form.parts) > 1:  # never the bare root
                markers.add(form.as_posix())
    return sorted(markers, key=len, reverse=True)


def find_local_paths(text: str, markers: list[str]) -> list[str]:
    """The absolute paths under ``markers`` that ``text`` mentions (a path starts after a quote, space or
    ``=``; URLs such as ``https://host/tmp/x`` are not paths)."""
    if not markers:
        return []
    under = "|".join(re.escape(marker) for marker in markers)  # longest first: the alternation takes the first
    pattern = rf"(?<![\w./:~-])(?:{under})(?=[/\\\"'\s,;)\]]|$)[^\"'\s,;)\]]*"
    return sorted(set(re.findall(pattern, text)))
