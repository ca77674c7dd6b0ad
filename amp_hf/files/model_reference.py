"""Every model reference a user can give, resolved in one step to a local folder.

Accepted: a local folder; an embedded alias (``minilm``); a Hub id ``ORG/NAME``, optionally ``ORG/NAME@REVISION``
(branch, tag or commit); open_clip's and timm's ``hf-hub:ORG/NAME`` (timm ids such as ``timm/ARCH.TAG`` are plain
``ORG/NAME``). A Hub reference becomes a snapshot folder of huggingface_hub's cache (``snapshot_download``, so
``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the saved token / ``HF_TOKEN`` apply as for
any Hub library); from there on every command reads a local folder. The snapshot's path names the repo and the
commit it holds (``models--ORG--NAME/snapshots/<sha>``), which is how provenance records both.

Only the files a model load needs are fetched: every file of the repo but other frameworks' weights and
exported graphs (TF, Flax, ONNX, OpenVINO, Core ML, GGUF ...), card images, and the ``.bin`` / ``.pth`` twin of
weights also published as ``.safetensors`` (``files_to_download``); a family may drop more files it knows a
load of that repo will not read (``FamilyAdapter.unread_hub_files``, applied by ``amp_hf.loading``).

This module imports no torch; huggingface_hub is imported only when a Hub reference is resolved.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import CheckpointError
from .aliases import EMBEDDED_HUB_IDS, EMBEDDED_MODELS, embedded_model_path
from .hub_http import http_timeouts

HUB_PREFIX = "hf-hub:"  # open_clip's and timm's way to name a Hub model
_COMMIT = re.compile(r"[0-9a-f]{40}")

# Files no amp-hf load reads: other frameworks' weights, exported graphs, card media.
SKIPPED_FILES = (
    "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.gguf", "*.mlmodel", "*.mlpackage/*", "*.onnx", "*.onnx_data",
    "*.onnx.data", "*.engine", "*.plan", "*.npz", "*.xml", "*.png", "*.jpg", "*.jpeg", "*.gif", "*.webp",
    "onnx/*", "openvino/*", "coreml/*", "tf_model*", "flax_model*", "rust_model*", ".gitattributes",
)  # fmt: skip
# Weights formats that lose to a .safetensors file in the same folder.
_PICKLE_WEIGHTS = (".bin", ".pth", ".pt")


class HubReferenceError(CheckpointError):
    """A Hub reference that could not be resolved to a local folder; the message says why and what to do."""


@dataclass(frozen=True)
class ModelReference:
    """A resolved model reference: ``path`` is a local folder (or, for a missing local path, what was given)."""

    given: str
    path: str
    repo_id: str | None = None  # the Hub repo, when the reference was a Hub id or an embedded copy of one
    revision: str | None = None  # the revision asked for (None: the default branch)
    commit: str | None = None  # the commit sha of the snapshot ``path`` holds

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None and self.commit is not None


def parse_hub_reference(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` of a Hub-style reference (``ORG/NAME``, ``ORG/NAME@REV``, ``hf-hub:ORG/NAME``),
    None for anything else (an alias, a path). Existing local paths are never Hub references."""
    if not isinstance(text, str) or not text:
        return None
    explicit = text.startswith(HUB_PREFIX)
    body = text[len(HUB_PREFIX):] if explicit else text
    if not explicit and (body.startswith((".", "/", "~")) or os.path.exists(os.path.expanduser(body))):
        return None
    repo_id, _, revision = body.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (revision == "" and "@" in body):
        if explicit:
            raise HubReferenceError(f"{text!r} is not a Hub reference: write {HUB_PREFIX}ORG/NAME[@REVISION]")
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        if explicit:
            raise HubReferenceError(f"{text!r} is not a valid Hub repo id ({error})") from None
        return None
    return repo_id, (revision or None)


def check_model_reference(reference: str | os.PathLike | None, what: str = "model") -> None:
    """Refuse, without importing anything heavy, a reference that can only be a local path and does not exist
    (``/x``, ``./x``, ``~/x``, ``a/b/c``); aliases and anything a Hub id could be are left to ``resolve_reference``."""
    if reference is None:
        return
    text = os.fspath(reference)
    if text in EMBEDDED_MODELS or text.startswith(HUB_PREFIX):
        return
    body = text.partition("@")[0]
    path_like = text.startswith((".", "/", "~")) or body.count("/") > 1 or "\\" in text
    if path_like and not os.path.exists(os.path.expanduser(text)):
        raise CheckpointError(
            f"{what} folder {text!r} does not exist: pass a checkpoint folder, a Hub id (ORG/NAME[@REVISION], "
            f"hf-hub:ORG/NAME) or one of {sorted(EMBEDDED_MODELS)}"
        )


def files_to_download(filenames: list[str]) -> list[str]:
    """The repo files a model load needs (see the module docstring): an explicit list for ``allow_patterns``."""
    kept = [name for name in filenames if not any(fnmatch.fnmatch(name, pattern) for pattern in SKIPPED_FILES)]
    with_safetensors = {str(PurePosixPath(name).parent) for name in kept if name.endswith(".safetensors")}
    return [name for name in kept
            if not (name.endswith(_PICKLE_WEIGHTS) and str(PurePosixPath(name).parent) in with_safetensors)]


_RESOLVED: dict[tuple, ModelReference] = {}
_LOCK = threading.Lock()


def resolve_reference(reference: str | os.PathLike, *, token: str | None = None, timeout: float | None = None,
                      choose_files: Callable[[list[str]], list[str]] = files_to_download) -> ModelReference:
    """Resolve ``reference`` (see the module docstring) to a local folder, downloading a Hub repo once.

    A path that does not exist is returned as given (callers report it); a Hub reference that cannot be
    resolved raises ``HubReferenceError`` saying what happened (offline and not cached, not found, no access,
    unknown revision, Hub unreachable). Results are remembered for the process, so the many readers of one run
    (model, processor, provenance) resolve a Hub id once. ``choose_files``: the repo files to fetch, from its
    file list (``amp_hf.loading`` passes the families' choice).
    """
    text = os.fspath(reference)
    if text in EMBEDDED_MODELS:
        return ModelReference(text, embedded_model_path(text), repo_id=EMBEDDED_HUB_IDS.get(text))
    parsed = parse_hub_reference(text)
    if parsed is None:
        return ModelReference(text, os.path.expanduser(text))
    repo_id, revision = parsed
    for alias, alias_repo in EMBEDDED_HUB_IDS.items():  # the embedded package is a copy of that Hub repo
        if repo_id == alias_repo and revision is None and embedded_model_path(alias, required=False):
            return ModelReference(text, embedded_model_path(alias), repo_id=repo_id)
    from huggingface_hub import constants

    key = (repo_id, revision, constants.ENDPOINT, constants.HF_HUB_CACHE, constants.is_offline_mode())
    with _LOCK:
        if key not in _RESOLVED:
            try:
                folder = _snapshot(repo_id, revision, token, timeout, choose_files)
            except HubReferenceError as error:
                if os.path.isdir(repo_id.split("/")[0]):  # e.g. out/minilm-amq: a mistyped local folder?
                    raise HubReferenceError(f"{error} (and there is no local folder {text!r})") from None
                raise
            commit = Path(folder).name if _COMMIT.fullmatch(Path(folder).name) else None
            _RESOLVED[key] = ModelReference(text, folder, repo_id=repo_id, revision=revision, commit=commit)
        resolved = _RESOLVED[key]
    return ModelReference(text, resolved.path, resolved.repo_id, resolved.revision, resolved.commit)


def is_cached(reference: str) -> bool:
    """Whether the Hub reference ``reference`` resolves from the local cache alone (no network): its snapshot is
    there with what a load reads."""
    parsed = parse_hub_reference(reference)
    if parsed is None:
        return False
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, revision = parsed
    try:
        snapshot_download(repo_id, revision=revision, local_files_only=True,
                          allow_patterns=_cached_needed_files(repo_id, revision, files_to_download))
    except LocalEntryNotFoundError:
        return False
    return True


def resolve_model_path(reference: str | os.PathLike) -> str:
    """The local folder of ``reference`` (``resolve_reference(reference).path``)."""
    return resolve_reference(reference).path


def known_reference(reference: str) -> ModelReference | None:
    """The resolution of a Hub reference already resolved in this process (no network, no download)."""
    parsed = parse_hub_reference(reference) if isinstance(reference, str) else None
    if parsed is None:
        return None
    with _LOCK:
        found = [ref for key, ref in _RESOLVED.items() if key[:2] == parsed]
    return found[-1] if found else None


def _snapshot(repo_id: str, revision: str | None, token: str | None, timeout: float | None,
              choose_files: Callable[[list[str]], list[str]]) -> str:
    import httpx2
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    seconds = timeout if timeout is not None else float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    try:
        with http_timeouts(seconds):
            if constants.is_offline_mode():
                # complete means: what an online resolution would have fetched (not the skipped files)
                return snapshot_download(repo_id, revision=revision, token=token, local_files_only=True,
                                         allow_patterns=_cached_needed_files(repo_id, revision, choose_files))
            info = HfApi().model_info(repo_id, revision=revision, token=token)
            wanted = choose_files([sibling.rfilename for sibling in info.siblings or ()])
            return snapshot_download(repo_id, revision=revision, token=token, allow_patterns=wanted,
                                     etag_timeout=seconds)
    except GatedRepoError:
        raise HubReferenceError(
            f"no access to {repo_id}: it is a gated repo; accept its conditions on {constants.ENDPOINT}/{repo_id} "
            "and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401 and not (token or _saved_token()):
            raise HubReferenceError(
                f"no access to {repo_id} on {constants.ENDPOINT}: it does not exist, or it is private or gated and no "
                "token was sent; check the id, or log in (`hf auth login` or HF_TOKEN)"
            ) from None
        raise HubReferenceError(
            f"repository {repo_id} not found on {constants.ENDPOINT} (or your token has no access to it): check the "
            "id, or pass a local folder"
        ) from None
    except RevisionNotFoundError:
        raise HubReferenceError(
            f"revision {revision!r} not found in {repo_id}: pass an existing branch, tag or commit after '@'"
        ) from None
    except IncompleteSnapshotError:
        raise HubReferenceError(
            f"the cached copy of {where} is incomplete and the Hub cannot be reached: run once with network access "
            "(without HF_HUB_OFFLINE) to finish the download"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        if constants.is_offline_mode():
            raise HubReferenceError(
                f"{where} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and offline mode is on "
                "(HF_HUB_OFFLINE=1): run once with network access to download it, or pass a local folder"
            ) from None
        cause = error.__cause__ or error
        raise HubReferenceError(
            f"could not reach the Hub at {constants.ENDPOINT} for {where} and it is not cached ({_first_line(cause)}): "
            "check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache"
        ) from None
    except HfHubHTTPError as error:
        raise HubReferenceError(
            f"the Hub at {constants.ENDPOINT} refused {where} ({_first_line(error)}): retry later, or pass a local folder"
        ) from None
    except httpx2.TransportError as error:  # connection refused or timed out
        raise HubReferenceError(
            f"could not reach the Hub at {constants.ENDPOINT} for {where} ({type(error).__name__}: "
            f"{_first_line(error)}): check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache"
        ) from None
    except OSError as error:  # a failed write into the cache (disk full), a broken download / timed out while downloading, disk full
        raise HubReferenceError(
            f"could not download {where} from {constants.ENDPOINT} ({type(error).__name__}: {_first_line(error)}): "
            "check the network, HF_ENDPOINT and free disk space, or set HF_HUB_OFFLINE=1 to use the cache"
        ) from None


def _cached_needed_files(repo_id: str, revision: str | None, choose_files) -> list[str] | None:
    """``choose_files`` of the repo listing huggingface_hub cached at download (None: no listing cached,
    e.g. a cache filled by another tool; then the snapshot is taken as it is)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        listing = get_cached_repo_tree(repo_id, revision=revision)
    except CachedRepoTreeNotFoundError:
        return None
    return choose_files([entry.path for entry in listing])


def _saved_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
