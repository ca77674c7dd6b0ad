"""A loopback *test double* of the Hugging Face Hub HTTP API, for offline push/download tests.

It answers only the requests the stock ``huggingface_hub`` client (2.x) sends to create a repo, make one
commit (preupload, README ``validate-yaml``, NDJSON commit), create a branch, read repo info and file trees,
and download files (``resolve`` with the headers ``hf_hub_download`` needs). Everything lives in memory; preupload
answers ``uploadMode: regular`` for every file, so all bytes arrive base64-encoded inside the NDJSON commit
and no LFS / Xet endpoint is needed (clients must still set ``HF_HUB_DISABLE_XET=1``).

Behaviour copied from the real Hub because the client or our code depends on it: a new repo starts with one
commit holding ``.gitattributes``; tokens map to user names and a user may only write to their own
namespace (403 otherwise); an unknown token gets 401 "Invalid credentials in Authorization header";
missing repos / revisions / files get 404 with the ``X-Error-Code`` the client maps to its exceptions (a
private repo asked for without a token: 401); a gated repo (``host_model(..., gated=True)``) lists its files
to anyone but serves them only to users in ``gated_access`` (else 401/403 ``GatedRepo``); a
commit whose ``parentCommit`` is not the branch head gets 412. Switches make commits fail (500) to test
failure handling. The server binds 127.0.0.1 on a random port and shuts itself down after
``max_lifetime`` seconds even if a test forgets to stop it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

MAX_BODY_BYTES = 256 * 1024 * 1024
INITIAL_FILES = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}


def git_blob_oid(content: bytes) -> str:
    """The git blob id of ``content`` (what the Hub reports as a regular file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    summary: str
    files: dict[str, bytes]  # full snapshot: path -> content


@dataclass
class Repo:
    repo_id: str
    private: bool
    gated: bool = False  # files need a token of a user in ``gated_access`` (repo info stays public)
    gated_access: set[str] = field(default_factory=set)
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    pull_requests: int = 0

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit | None:
        oid = self.refs.get(revision, revision)
        return self.commits.get(oid)

    def add_commit(self, parent: Commit | None, summary: str, files: dict[str, bytes]) -> Commit:
        seed = f"{parent.oid if parent else ''}\n{summary}\n{len(self.commits)}".encode()
        tree = b"".join(git_blob_oid(content).encode() + path.encode() for path, content in sorted(files.items()))
        oid = hashlib.sha1(seed + tree).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, summary, files)
        self.commits[oid] = commit
        return commit

    def files(self, revision: str = "main") -> dict[str, bytes]:
        commit = self.resolve(revision)
        return dict(commit.files) if commit else {}


class HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


class HubState:
    """Repos, users and failure switches, shared by all request threads (guarded by ``lock``)."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = dict(tokens)  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request received
        self.fail_commits = 0  # answer 500 to the next N commit requests without applying them
        self.lose_commit_responses = 0  # apply the next N commits, then answer 500 anyway
        self.commit_requests = 0
        self.lock = threading.RLock()

    def create_repo(self, repo_id: str, private: bool = False, gated: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_id, private, gated=gated)
            repo.refs["main"] = repo.add_commit(None, "initial commit", dict(INITIAL_FILES)).oid
            self.repos[repo_id] = repo
            return repo

    def host_model(self, repo_id: str, files: dict[str, bytes], private: bool = False, gated: bool = False,
                   summary: str = "upload model") -> Repo:
        """A repo whose main branch holds ``files`` (path -> content) on top of the initial commit; set up
        directly, not over HTTP (the tests' HTTP traffic is the download being tested)."""
        with self.lock:
            repo = self.create_repo(repo_id, private=private, gated=gated)
            head = repo.resolve("main")
            repo.refs["main"] = repo.add_commit(head, summary, {**head.files, **files}).oid
            return repo


_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_REVISION = r"(?P<revision>[^/]+)"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every response sets Content-Length
    timeout = 30  # idle keep-alive connections close instead of holding a thread forever
    server: _Server

    ROUTES: ClassVar[list[tuple[str, re.Pattern, str]]] = [
        ("POST", re.compile(r"/api/repos/create"), "create_repo"),
        ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
        ("POST", re.compile(rf"/api/models/{_REPO}/preupload/{_REVISION}"), "preupload"),
        ("POST", re.compile(rf"/api/models/{_REPO}/commit/{_REVISION}"), "commit"),
        ("POST", re.compile(rf"/api/models/{_REPO}/branch/{_REVISION}"), "create_branch"),
        ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/{_REVISION})?"), "repo_info"),
        ("GET", re.compile(rf"/api/models/{_REPO}/tree/{_REVISION}(?:/(?P<folder>.+))?"), "tree"),
        ("GET", re.compile(rf"/{_REPO}/resolve/{_REVISION}/(?P<path>.+)"), "resolve"),
        ("HEAD", re.compile(rf"/{_REPO}/resolve/{_REVISION}/(?P<path>.+)"), "resolve"),
    ]

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    # -- plumbing -----------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        with self.state.lock:
            self.state.requests.append((method, url.path))
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise HubError(413, "request body too large for the test server")
            self.body = self.rfile.read(length) if length else b""
            self.query = parse_qs(url.query)
            for route_method, pattern, name in self.ROUTES:
                match = pattern.fullmatch(url.path)
                if match and route_method == method:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, f"_{name}")(**params)
                    return
            raise HubError(404, f"the Hub test server has no route for {method} {url.path}")
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.error_code:
                headers["X-Error-Code"] = error.error_code
            self._send(error.status, {"error": error.message}, headers)
        except (KeyError, TypeError, ValueError) as error:  # a request this double does not understand
            self._send(400, {"error": f"the Hub test server could not handle {method} {url.path}: {error!r}"})

    def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None) -> None:
        if body is None:
            body = json.dumps(payload).encode() if payload is not None else b""
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as error:
            raise HubError(400, f"invalid JSON body: {error}") from error

    def _user(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        token = header.removeprefix("Bearer ").strip()
        user = self.state.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _readable_repo(self, repo_id: str) -> Repo:
        user = self._user()
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner):
            # as the Hub: without a token a private repo is a 401 (it may exist), with one a 404
            status = 401 if user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    def _downloadable_repo(self, repo_id: str) -> Repo:
        repo = self._readable_repo(repo_id)
        if repo.gated and self._user() not in repo.gated_access | {repo.owner}:
            raise HubError(401 if self._user() is None else 403,
                           f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                           "to access it. Please log in.", "GatedRepo")
        return repo

    def _writable_repo(self, repo_id: str) -> Repo:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repo")
        repo = self._readable_repo(repo_id)
        if user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- endpoints ------------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        payload = self._json()
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        if payload.get("type", "model") != "model":
            raise HubError(400, "the Hub test server only hosts model repos")
        namespace = payload.get("organization") or user
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a model under the namespace {namespace!r}")
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.server.url}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                raise HubError(409, "You already created this model repo")
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            self.state.create_repo(repo_id, private=private)
        self._send(200, {"url": url, "name": repo_id})

    def _validate_yaml(self) -> None:
        content = self._json().get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        if match is None:
            self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
            return
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            self._send(400, {"errors": [{"message": f"invalid YAML: {error}"}]})
            return
        if not isinstance(metadata, dict):
            self._send(400, {"errors": [{"message": "YAML metadata must be a mapping"}]})
            return
        self._send(200, {"errors": [], "warnings": []})

    def _preupload(self, repo: str, revision: str) -> None:
        with self.state.lock:
            hub_repo = self._writable_repo(repo)
            existing = self._commit_at(hub_repo, revision).files
            files = [
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing[item["path"]]) if item["path"] in existing else None,
                }
                for item in self._json().get("files", [])
            ]
        self._send(200, {"files": files})

    def _commit(self, repo: str, revision: str) -> None:
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the first NDJSON line of a commit must be its header")
        header = lines[0]["value"]
        create_pr = self.query.get("create_pr") == ["1"]
        with self.state.lock:
            hub_repo = self._writable_repo(repo)
            base = self._commit_at(hub_repo, revision)
            self.state.commit_requests += 1
            if self.state.fail_commits > 0:
                self.state.fail_commits -= 1
                raise HubError(500, "Internal Error - the Hub test server was told to fail this commit")
            parent = header.get("parentCommit")
            if parent is not None and not create_pr and base.oid != parent:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            if parent is not None:
                base = self._commit_at(hub_repo, parent)
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"the Hub test server does not handle {key!r} commit entries")
            commit = hub_repo.add_commit(base, header.get("summary", ""), files)
            pull_request_url = None
            if create_pr:
                hub_repo.pull_requests += 1
                hub_repo.refs[f"refs/pr/{hub_repo.pull_requests}"] = commit.oid
                pull_request_url = f"{self.server.url}/{repo}/discussions/{hub_repo.pull_requests}"
            else:
                hub_repo.refs[revision] = commit.oid
            if self.state.lose_commit_responses > 0:
                self.state.lose_commit_responses -= 1
                raise HubError(500, "Internal Error - the Hub test server applied this commit but failed to answer")
        self._send(
            200,
            {"commitUrl": f"{self.server.url}/{repo}/commit/{commit.oid}", "commitOid": commit.oid,
             "pullRequestUrl": pull_request_url},
        )  # fmt: skip

    def _create_branch(self, repo: str, revision: str) -> None:
        payload = self._json()
        with self.state.lock:
            hub_repo = self._writable_repo(repo)
            if revision in hub_repo.refs:
                raise HubError(409, f"Branch {revision} already exists")
            start = self._commit_at(hub_repo, payload.get("startingPoint") or "main")
            hub_repo.refs[revision] = start.oid
        self._send(200, {})

    def _repo_info(self, repo: str, revision: str = "main") -> None:
        with self.state.lock:
            hub_repo = self._readable_repo(repo)
            commit = self._commit_at(hub_repo, revision)
            info = {
                "id": repo,
                "private": hub_repo.private,
                "sha": commit.oid,
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                "tags": [],
            }
        self._send(200, info)

    def _tree(self, repo: str, revision: str, folder: str = "") -> None:
        """Files and folders under ``folder`` (all depths with ``recursive=true``), in one page."""
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{folder.strip('/')}/" if folder else ""
        with self.state.lock:
            commit = self._commit_at(self._readable_repo(repo), revision)
            entries: dict[str, dict] = {}
            for path, content in sorted(commit.files.items()):
                if not path.startswith(prefix):
                    continue
                parts = path[len(prefix) :].split("/")
                for depth in range(1, len(parts)):  # the folders on the way
                    if recursive or depth == 1:
                        folder_path = prefix + "/".join(parts[:depth])
                        entry = {"type": "directory", "path": folder_path, "oid": git_blob_oid(folder_path.encode())}
                        entries.setdefault(folder_path, entry)
                if recursive or len(parts) == 1:
                    entries[path] = {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content)}
        self._send(200, list(entries.values()))

    def _resolve(self, repo: str, revision: str, path: str) -> None:
        with self.state.lock:
            hub_repo = self._downloadable_repo(repo)
            commit = self._commit_at(hub_repo, revision)
            content = commit.files.get(path)
        if content is None:
            raise HubError(404, f"{path} does not exist at {revision}", "EntryNotFound")
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_oid(content)}"',
            "Content-Type": "application/octet-stream",
        }
        self._send(200, headers=headers, body=content)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive handler threads must not delay shutdown

    def __init__(self, state: HubState):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class HubTestServer:
    """Run the test double in a background thread: ``with HubTestServer() as hub: hub.url ...``.

    ``tokens`` maps accepted tokens to user names (default: ``{"dummy": "tester"}``).
    """

    def __init__(self, tokens: dict[str, str] | None = None, max_lifetime: float = 600.0):
        self.state = HubState(tokens or {"dummy": "tester"})
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-test-server", daemon=True)
        self._watchdog = threading.Timer(max_lifetime, self.stop)
        self._watchdog.daemon = True
        self._stopped = False

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> HubTestServer:
        self._thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        with self.state.lock:
            if self._stopped:
                return
            self._stopped = True
        self._watchdog.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HubTestServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- helpers for assertions -----------------------------------------------------------------------
    def repo(self, repo_id: str) -> Repo:
        return self.state.repos[repo_id]

    def host_model(self, repo_id: str, files: dict[str, bytes], **kwargs) -> Repo:
        """See ``HubState.host_model``."""
        return self.state.host_model(repo_id, files, **kwargs)

    def reset_log(self) -> None:
        with self.state.lock:
            self.state.requests.clear()
            self.state.commit_requests = 0
