"""Tiny models where users' models live: a Hugging Face cache laid out exactly as huggingface_hub writes it
(``models--ORG--NAME/blobs``, ``snapshots/<sha>/`` of relative symlinks, ``refs/main``), and repos on the
loopback Hub test server (tests/hub_server.py). Nothing is downloaded from anywhere else."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from hub_server import git_blob_oid

# The ids the table was tried with; the models behind them here are tiny random ones.
CLIP_ID = "openai/clip-vit-base-patch16"
SENTENCE_ID = "sentence-transformers/paraphrase-MiniLM-L6-v2"
TIMM_ID = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
OPEN_CLIP_ID = "laion/CLIP-ViT-tiny-test-laion2B"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (posix relative path -> content)."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def write_hf_cache(hub_cache: Path, repo_id: str, files: dict[str, bytes], commit: str | None = None) -> str:
    """Put ``files`` into ``hub_cache`` (HF_HUB_CACHE, i.e. ``$HF_HOME/hub``) as huggingface_hub stores a
    downloaded revision; returns the commit sha the snapshot is filed under (``refs/main`` points to it)."""
    commit = commit or hashlib.sha1(repr(sorted((p, git_blob_oid(c)) for p, c in files.items())).encode()).hexdigest()
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for path, content in files.items():
        blob = repo / "blobs" / git_blob_oid(content)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def point_hub_client(monkeypatch, endpoint: str, hub_cache: Path) -> None:
    """This process's huggingface_hub talking to ``endpoint`` with the cache ``hub_cache``, online (the test
    runner sets HF_HUB_OFFLINE=1); the URL template is read from HF_ENDPOINT at import, like ENDPOINT."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def hub_env(hf_home: Path, endpoint: str | None = None, offline: bool = False, token: str | None = None) -> dict:
    """The environment of a process that reads the Hub through ``hf_home`` (and ``endpoint``, when given)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1",
               HF_HUB_OFFLINE="1" if offline else "0", TOKENIZERS_PARALLELISM="false")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if token:
        env["HF_TOKEN"] = token
    return env


def amp_hf_cli(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m amp_hf ARGS`` in a fresh process (huggingface_hub reads HF_* once, at import)."""
    repo_root = Path(__file__).resolve().parent.parent
    env = {**env, "PYTHONPATH": os.pathsep.join([str(repo_root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, "-m", "amp_hf", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)
