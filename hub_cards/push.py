"""Push a pruned checkpoint, its model card and plot, and optionally its ONNX graphs to the Hub in one commit.

One commit (``HfApi.create_commit``) because a Hub commit is all-or-nothing: whatever fails — the network,
the token, the server mid-push — the branch is left exactly as it was, never half-updated.
``upload_folder`` is not used because with ``hf_xet`` installed it may split an upload into several commits.

Retries: huggingface_hub already retries preupload requests and LFS/Xet transfers (``http_backoff``), but not
repo creation, repo info, README validation or the commit request itself. Those are retried here, with
exponential backoff, on transient failures (network errors, 408/429/5xx). The commit is pinned to the branch
head read before pushing (``parent_commit``), so a retry after a lost answer cannot add a second commit —
the Hub refuses it and the error says to check the repo. Pull requests are not retried: pinning does not
stop a duplicate pull request.

Nothing here touches the network until ``push_to_hub`` is called; ``plan_upload`` only reads the local folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx2
import onnx
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

import amp_hf
from amp_hf.errors import LinkOutsideError
from amp_hf.files.artifacts import ONNX_SUBFOLDER
from amp_hf.files.hub_http import DEFAULT_TIMEOUT, http_timeouts
from amp_hf.files.outputs import folder_files
from amp_hf.files.provenance import find_local_paths, local_path_markers

from .card import CARD_FILE, card_files, format_size
from .facts import gather_facts

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_EXCEPTIONS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
STALE_PARENT_STATUS_CODES = frozenset({409, 412})  # the branch moved since we read its head


class HubPushError(RuntimeError):
    """A push that did not happen; the message says why and what to do."""


@dataclass(frozen=True)
class Backoff:
    """Retry schedule for transient failures: waits first_wait, 2x, 4x, ... capped at max_wait."""

    attempts: int = 4
    first_wait: float = 1.0
    max_wait: float = 8.0

    def wait(self, attempt: int) -> float:
        return min(self.max_wait, self.first_wait * 2 ** (attempt - 1))


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True)
class UploadFile:
    path_in_repo: str
    source: Path | bytes  # a local file, or generated content (card, plot)

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size

    @property
    def origin(self) -> str:
        return "generated" if isinstance(self.source, bytes) else str(self.source)


@dataclass
class UploadPlan:
    repo_id: str
    files: list[UploadFile]
    commit_message: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def describe(self, revision: str | None = None) -> str:
        """A listing of every file and its size (what ``--dry-run`` prints)."""
        branch = revision or constants.DEFAULT_REVISION
        lines = [
            f"{len(self.files)} files, {format_size(self.total_bytes)}, to {self.repo_id} (branch {branch}) "
            f"in one commit: {self.commit_message!r}"
        ]
        width = max(len(f.path_in_repo) for f in self.files)
        for upload in self.files:
            lines.append(f"  {format_size(upload.size):>10}  {upload.path_in_repo:<{width}}  ({upload.origin})")
        return "\n".join(lines)


@dataclass
class PushResult:
    repo_url: str
    commit_url: str
    commit_oid: str
    pull_request_url: str | None
    created_repo: bool


def plan_upload(
    checkpoint: str | os.PathLike,
    repo_id: str,
    *,
    onnx_dir: str | os.PathLike | None = None,
    template: str | os.PathLike | None = None,
    base_model: str | None = None,
    license: str | None = None,
    keep_card: bool = False,
) -> UploadPlan:
    """Everything a push would send, read from the local folder (no network).

    The checkpoint folder goes to the repo root (hidden files, ``__pycache__`` and TensorRT engine / timing
    caches excluded), ONNX graphs under ``onnx/``. README.md and width_profile.png are rendered for ``repo_id`` — replacing the folder's
    copies — unless ``keep_card`` uploads the folder's own (e.g. hand-edited) README.md as it is.
    """
    _check_repo_id(repo_id)
    checkpoint = Path(checkpoint)
    # listed first: a link out of either folder is refused before any of their files is read into the card
    folder_sources = _folder_files(checkpoint)
    onnx_sources = _folder_files(Path(onnx_dir)) if onnx_dir is not None else []
    facts = gather_facts(checkpoint, onnx_dir=onnx_dir, base_model=base_model, license=license)
    if onnx_dir is not None and (checkpoint / ONNX_SUBFOLDER).exists():
        raise HubPushError(
            f"{checkpoint} already has an {ONNX_SUBFOLDER}/ folder and --onnx {onnx_dir} would also go to "
            f"{ONNX_SUBFOLDER}/: drop --onnx, or move one of them"
        )
    generated = {} if keep_card else card_files(facts, repo_id=repo_id, template=template)
    if keep_card and not (checkpoint / CARD_FILE).is_file():
        raise HubPushError(f"--keep-card needs {checkpoint / CARD_FILE}: write one with `amp-hf card {checkpoint}`")

    files = [UploadFile(name, content) for name, content in generated.items()]
    files += [UploadFile(path, source) for path, source in folder_sources if path not in generated]
    files += [UploadFile(f"{ONNX_SUBFOLDER}/{path}", source) for path, source in onnx_sources]
    files.sort(key=lambda f: f.path_in_repo)
    refuse_local_paths(files, local_path_markers(checkpoint, *([onnx_dir] if onnx_dir is not None else [])))
    message = f"Upload {facts.architecture} pruned with amp-hf {amp_hf.__version__}"
    return UploadPlan(repo_id, files, message)


# Files whose whole text is metadata; graphs and weights are searched in their metadata fields only.
TEXT_SUFFIXES = (".json", ".md", ".txt", ".py", ".yaml", ".yml", ".sh", ".jinja", ".cfg", ".toml", ".csv")


def refuse_local_paths(files: list[UploadFile], markers: list[str]) -> None:
    """Raise (before anything is sent) when a file would upload an absolute path of this machine: on the Hub it
    names nothing anyone can open, and it shows the local layout (``amp_hf.files.provenance``)."""
    for upload in files:
        found = find_local_paths(_metadata_text(upload), markers)
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise HubPushError(
                f"{upload.path_in_repo} ({upload.origin}) contains an absolute path of this machine ({found[0]}{more}), "
                "so nothing was uploaded: write the file again with this amp-hf version (it records Hub ids and "
                "relative paths) or remove the path from it"
            )


def _metadata_text(upload: UploadFile) -> str:
    name = upload.path_in_repo
    if isinstance(upload.source, bytes):
        return upload.source.decode("utf-8", errors="replace") if name.endswith(TEXT_SUFFIXES) else ""
    if name.endswith(TEXT_SUFFIXES):
        return upload.source.read_text(errors="replace")
    if name.endswith(".onnx"):
        return _onnx_metadata(upload.source)
    if name.endswith(".safetensors"):
        return _safetensors_metadata(upload.source)
    return ""


def _onnx_metadata(path: Path) -> str:
    """Every free-text field of an ONNX graph: doc strings and metadata properties of the model, graphs and nodes."""
    model = onnx.load(str(path), load_external_data=False)
    texts = [model.doc_string, *(p.value for p in model.metadata_props)]

    def graph_texts(graph: onnx.GraphProto) -> None:
        texts.append(graph.doc_string)
        texts.extend(p.value for p in graph.metadata_props)
        for node in graph.node:
            texts.append(node.doc_string)
            texts.extend(p.value for p in node.metadata_props)
            for attribute in node.attribute:
                for subgraph in (attribute.g, *attribute.graphs):
                    graph_texts(subgraph)

    graph_texts(model.graph)
    for function in model.functions:
        texts.extend(p.value for p in function.metadata_props)
        texts.extend(p.value for node in function.node for p in node.metadata_props)
    return "\n".join(texts)


def _safetensors_metadata(path: Path) -> str:
    with path.open("rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_size) or b"{}")
    return json.dumps(header.get("__metadata__") or {})


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubPushError(f"{repo_id!r} is not a valid repo id: {error}") from error
    if "/" not in repo_id:
        raise HubPushError(f"give the repo id with its namespace, e.g. your-user-name/{repo_id}")


# What ONNX Runtime's TensorRT provider caches in an export folder (export.tensorrt's ENGINE_CACHE_DIR and
# TIMING_CACHE_DIR): engines built for one GPU and TensorRT version, useless elsewhere and often large.
MACHINE_CACHE_FOLDERS = frozenset({"trt_engine_cache", "trt_timing_cache"})
SKIPPED_FOLDERS = MACHINE_CACHE_FOLDERS | {"__pycache__"}


def _folder_files(folder: Path) -> list[tuple[str, Path]]:
    """What of ``folder`` is sent: hidden files, ``__pycache__`` and TensorRT's machine caches never; a symlink
    out of the folder refuses the whole push (``amp_hf.files.outputs.folder_files``), before anything is sent."""
    if not folder.is_dir():
        return []  # gather_facts names what is wrong with the path
    try:
        return folder_files(folder, skip=lambda parts: parts[-1].startswith(".") or parts[-1] in SKIPPED_FOLDERS)
    except LinkOutsideError as error:
        raise HubPushError(f"{error}; nothing was sent") from error


def check_push_target(repo_id: str, token: str | None = None) -> str:
    """Everything about a push that can be checked without the network (repo id, offline mode, a token);
    returns the token. ``amp-hf demo --push`` calls it before the demo runs."""
    _check_repo_id(repo_id)
    if constants.is_offline_mode():
        raise HubPushError(
            "offline mode is on (HF_HUB_OFFLINE=1), so nothing can be pushed: unset HF_HUB_OFFLINE to push, "
            "or use --dry-run to only list the files"
        )
    token = token or get_token()
    if not token:
        raise HubPushError(
            "no Hugging Face token found: run `hf auth login`, set HF_TOKEN, or pass --token "
            f"(create a token with write access at {constants.ENDPOINT}/settings/tokens)"
        )
    return token


def push_to_hub(
    plan: UploadPlan,
    *,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    backoff: Backoff | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> PushResult:
    """Create the repo if needed and send ``plan`` in one commit (or one pull request with ``create_pr``).

    Every request may wait ``timeout`` seconds for the Hub; timeouts count as transient and are retried."""
    backoff = backoff or DEFAULT_BACKOFF
    if not (timeout > 0 and math.isfinite(timeout)):
        raise HubPushError(f"the timeout must be a positive, finite number of seconds; got {timeout}")
    token = check_push_target(plan.repo_id, token)
    with http_timeouts(timeout):
        return _push(plan, private, revision, create_pr, token, commit_message, commit_description, backoff, timeout)


def _push(plan: UploadPlan, private, revision, create_pr, token, commit_message, commit_description, backoff,
          timeout) -> PushResult:
    api = HfApi(token=token)
    created = False
    try:
        created = _ensure_repo(api, plan.repo_id, private, backoff)
        parent = _branch_head(api, plan.repo_id, revision, create_pr, backoff)
        operations = [CommitOperationAdd(f.path_in_repo, f.source) for f in plan.files]
        logger.info("Uploading %d files (%s) to %s@%s in one commit", len(operations),
                    format_size(plan.total_bytes), plan.repo_id, revision or constants.DEFAULT_REVISION)  # fmt: skip
        # Preupload is retried by huggingface_hub itself; the commit (and README validation) by us, below.
        api.preupload_lfs_files(plan.repo_id, operations, revision=revision, create_pr=create_pr, free_memory=False)

        def commit_once():
            return api.create_commit(
                plan.repo_id, operations, commit_message=commit_message or plan.commit_message,
                commit_description=commit_description, revision=revision, create_pr=create_pr, parent_commit=parent,
            )  # fmt: skip

        commit = _retrying(commit_once, "committing", backoff if not create_pr else Backoff(attempts=1))
    except Exception as error:
        message = explain_failure(error, repo_id=plan.repo_id, endpoint=api.endpoint, branch=revision, timeout=timeout)
        if message is None:
            raise
        if created:
            message += f" This run created {plan.repo_id}; it holds none of the files yet, and a re-run reuses it."
        raise HubPushError(message) from error
    return PushResult(
        repo_url=f"{api.endpoint}/{plan.repo_id}", commit_url=commit.commit_url, commit_oid=commit.oid,
        pull_request_url=commit.pr_url, created_repo=created,
    )  # fmt: skip


def _ensure_repo(api: HfApi, repo_id: str, private: bool | None, backoff: Backoff) -> bool:
    """Create the repo if it does not exist; True when this call created it."""
    if _retrying(lambda: _repo_exists(api, repo_id), "reading the repo", backoff):
        if private:
            logger.info("%s already exists: --private only applies when creating a repo", repo_id)
        return False
    logger.info("Creating %s on %s", repo_id, api.endpoint)
    _retrying(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "creating the repo", backoff)
    return True


def _branch_head(api: HfApi, repo_id: str, revision: str | None, create_pr: bool, backoff: Backoff) -> str:
    """The commit the push builds on (its pinned parent), creating the branch from main if missing."""
    if revision and not create_pr and not revision.startswith("refs/"):
        _retrying(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), "creating the branch", backoff)
    branch = revision or constants.DEFAULT_REVISION
    return _retrying(lambda: api.repo_info(repo_id, revision=branch).sha, "reading the branch head", backoff)


def _repo_exists(api: HfApi, repo_id: str) -> bool:
    try:
        api.repo_info(repo_id)
    except RepositoryNotFoundError:
        return False
    return True


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TRANSIENT_EXCEPTIONS):
        return True
    response = getattr(error, "response", None)
    return isinstance(error, HfHubHTTPError) and response is not None and response.status_code in TRANSIENT_STATUS_CODES


def _retrying(call: Callable[[], T], what: str, backoff: Backoff) -> T:
    for attempt in range(1, backoff.attempts + 1):
        try:
            return call()
        except Exception as error:
            if attempt == backoff.attempts or not is_transient(error):
                raise
            wait = backoff.wait(attempt)
            logger.warning("%s failed (%s); retrying in %.1f s (attempt %d of %d)", what.capitalize(),
                           _first_line(error), wait, attempt + 1, backoff.attempts)  # fmt: skip
            time.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


def explain_failure(error: BaseException, *, repo_id: str, endpoint: str, branch: str | None,
                    timeout: float | None = None) -> str | None:
    """A message naming the fix for a failed push, or None for errors that are bugs (re-raised as they are)."""
    namespace, name = repo_id.split("/", 1)
    if isinstance(error, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE=1): unset it to push, or use --dry-run to only list the files"
    if isinstance(error, httpx2.TimeoutException):
        waited = f" within {timeout:g} s" if timeout else ""
        return (
            f"the Hub at {endpoint} did not answer{waited} ({type(error).__name__}), also when retried; nothing was "
            "committed. Check your connection, proxy and HF_ENDPOINT, or allow longer with --timeout SECONDS."
        )
    if isinstance(error, httpx2.TransportError):
        return (
            f"could not reach the Hub at {endpoint} ({type(error).__name__}: {error}); nothing was committed. "
            "Check your connection, proxy and HF_ENDPOINT, then run the push again."
        )
    if isinstance(error, ValueError) and "Invalid metadata in README.md" in str(error):
        return f"the Hub rejected the card's metadata, nothing was committed: {error}. Fix the template or --license."
    if not isinstance(error, HfHubHTTPError) or error.response is None:
        return None
    status = error.response.status_code
    server_says = error.server_message or _first_line(error)
    if status == 401:
        return (
            f"the Hub rejected the token (401 Unauthorized: {server_says}); nothing was committed. The token is "
            f"invalid or expired: create a write token at {endpoint}/settings/tokens, then run `hf auth login`, "
            "set HF_TOKEN or pass --token."
        )
    if status == 403:
        return (
            f"this token may not write to {repo_id} (403 Forbidden: {server_says}); nothing was committed. The repo "
            f"or namespace {namespace!r} belongs to another account, or the token is read-only. Push to a namespace "
            f"you own (e.g. <your-user-name>/{name}), ask the owner for write access, or open a pull request "
            "with --create-pr."
        )
    if status == 404:
        return (
            f"the Hub could not find {repo_id}"
            f"{f' or its branch {branch!r}' if branch else ''} (404: {server_says}); nothing was committed. Check the "
            "repo id, and that the token has access to it."
        )
    if status in STALE_PARENT_STATUS_CODES:
        return (
            f"the branch {branch or constants.DEFAULT_REVISION!r} of {repo_id} changed during the push "
            f"({status}: {server_says}): an earlier attempt whose answer was lost may have landed, or someone else "
            f"pushed. Check {endpoint}/{repo_id}/commits/{branch or constants.DEFAULT_REVISION} before pushing again."
        )
    if status in TRANSIENT_STATUS_CODES:
        target = branch or constants.DEFAULT_REVISION
        return (
            f"the Hub answered {status} ({server_says}) and retrying did not help, so the push did not complete. "
            "A Hub commit is all-or-nothing: the branch holds the whole push or none of it "
            f"(see {endpoint}/{repo_id}/commits/{target}). Try again later."
        )
    return f"the Hub refused the push ({status}: {server_says}); nothing was committed."


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
