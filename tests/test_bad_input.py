"""Bad input and faults, table-driven: every case must exit 2 with one line naming the fix, print no traceback,
and leave the filesystem exactly as it was (the inputs and every neighbour are hashed before and after).

Each case builds its situation in a fresh workspace holding a stock tiny ViT (``vit``), a pruned copy
(``pruned``), an unrelated file (``notes.txt``) and a folder of the user's own (``mine``), then runs the real
command line in-process. The cases stop before any compute, so each takes well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from amp_hf.cli import main

MAGNITUDE = ["method=magnitude", "search.allocation=uniform", "search.target_reduction=0.2"]


@pytest.fixture(scope="module")
def seed_workspace(tmp_path_factory, vit_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("seed")
    shutil.copytree(vit_checkpoint, root / "vit")
    assert main(["prune", f"model={root / 'vit'}", f"output={root / 'pruned'}", *MAGNITUDE]) == 0
    (root / "notes.txt").write_text("the user's notes\n")
    (root / "mine").mkdir()
    (root / "mine" / "data.bin").write_bytes(b"\x00\x01user data")
    return root


@pytest.fixture
def workspace(seed_workspace, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(seed_workspace, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, permission bits and content hash."""
    entries = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if kind == "file" else None
        entries[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), digest)
    return entries


@dataclass
class Case:
    id: str
    argv: list[str]  # "{ws}" is replaced by the workspace path
    message: str  # a regular expression the one error line must match
    setup: Callable[[Path], None] | None = None

    def args(self, root: Path) -> list[str]:
        return [arg.replace("{ws}", str(root)) for arg in self.argv]


def _amp_output_with_a_user_file(root: Path) -> None:
    (root / "pruned" / "my-notes.txt").write_text("mine\n")


def _read_only(root: Path) -> None:
    (root / "locked").mkdir()
    os.chmod(root / "locked", 0o555)


def _amp_output_inside_input(root: Path) -> None:
    shutil.copytree(root / "pruned", root / "vit" / "sub")


def _distill_config(root: Path) -> None:
    (root / "distill.yaml").write_text(f"teacher: {root / 'vit'}\nstudent: {root / 'pruned'}\n")


CASES = [
    # overwrite never destroys inputs or other people's files
    Case("prune-output-contains-input", ["prune", "model={ws}/vit", "output={ws}", "overwrite=true", *MAGNITUDE],
         r"output .* contains the input .*vit: writing it would destroy the input"),
    Case("prune-output-dot", ["prune", "model=vit", "output=.", "overwrite=true", *MAGNITUDE],
         r"output \. contains the input vit"),
    Case("prune-output-is-input", ["prune", "model=vit", "output=vit", "overwrite=true", *MAGNITUDE],
         r"output vit is the input vit"),
    Case("export-output-contains-checkpoint", ["export", "{ws}/pruned", "{ws}", "--overwrite"],
         r"contains the input .*pruned"),
    Case("overwrite-a-folder-amp-hf-did-not-write", ["prune", "model=vit", "output=mine", "overwrite=true", *MAGNITUDE],
         r"mine was not written by amp-hf, so overwrite will not delete it"),
    Case("overwrite-amp-output-holding-user-files", ["prune", "model=vit", "output=pruned", "overwrite=true",
                                                     *MAGNITUDE],
         r"pruned holds files amp-hf did not write \(my-notes.txt\)", _amp_output_with_a_user_file),
    Case("overwrite-output-inside-input", ["prune", "model=vit", "output=vit/sub", "overwrite=true", *MAGNITUDE],
         r"lies inside the input vit, so overwrite will not replace it", _amp_output_inside_input),
    Case("distill-output-contains-student", ["distill", "--config", "distill.yaml", "output={ws}", "overwrite=true"],
         r"contains the input", _distill_config),
    # outputs checked before any compute
    Case("output-exists", ["prune", "model=vit", "output=pruned", *MAGNITUDE],
         r"pruned already exists: choose another output path, or pass overwrite=true"),
    Case("output-is-a-file", ["prune", "model=vit", "output=notes.txt", "overwrite=true", *MAGNITUDE],
         r"notes.txt exists and is not a folder"),
    Case("output-parent-is-a-file", ["prune", "model=vit", "output=notes.txt/out", *MAGNITUDE],
         r"notes.txt is a file, not a folder"),
    Case("output-parent-read-only", ["prune", "model=vit", "output=locked/out", *MAGNITUDE],
         r"cannot write into locked \(read-only\)", _read_only),
    Case("score-into-existing-folder", ["score", "model=vit", "method=magnitude", "--output", "mine"],
         r"mine already exists: .* pass overwrite=true"),
    Case("export-into-existing-folder", ["export", "pruned", "mine"], r"mine already exists: .* pass --overwrite"),
    Case("eval-output-is-checkpoint-config", ["eval", "pruned", "--output", "pruned/config.json"],
         r"pruned/config.json exists and is not an amp-hf evaluation report"),
    Case("eval-output-is-a-folder", ["eval", "pruned", "--output", "mine"], r"--output mine is a folder"),
    Case("eval-output-parent-is-a-file", ["eval", "pruned", "--output", "notes.txt/report.json"],
         r"notes.txt is a file, not a folder"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(case, workspace, capsys):
    if case.setup:
        case.setup(workspace)
    before = snapshot(workspace)
    code = main(case.args(workspace))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("amp-hf ")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert re.search(case.message, errors[0]), errors[0]
    assert code == 2
    assert snapshot(workspace) == before


# -- what the output step does when the input is good --------------------------------------------------------


def test_overwrite_replaces_amp_hf_outputs_and_cleans_killed_runs(workspace):
    stale = workspace / ".pruned.partial-999999999-x1"  # left by a run that was killed (no such process)
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    old_config = (workspace / "pruned" / "config.json").read_text()
    assert main(["prune", "model=vit", "output=pruned", "overwrite=true", "method=magnitude",
                 "search.allocation=uniform", "search.target_reduction=0.3"]) == 0
    assert not stale.exists()
    assert (workspace / "pruned" / "config.json").read_text() != old_config
    assert not [p for p in workspace.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    # an output written before amp-hf left a marker is still recognised by its artifacts
    (workspace / "pruned" / ".amp-hf-output.json").unlink()
    assert main(["prune", "model=vit", "output=pruned", "overwrite=true", *MAGNITUDE]) == 0


def test_outputs_get_umask_permissions_and_tilde_is_expanded(workspace, monkeypatch):
    monkeypatch.setenv("HOME", str(workspace / "home"))
    (workspace / "home").mkdir()
    (workspace / "magnitude.yaml").write_text("method: magnitude\n")
    previous = os.umask(0o022)
    try:  # KEY=VALUE overrides may also follow the options
        assert main(["prune", "model=~/../vit", "--config", "magnitude.yaml", "output=~/out", *MAGNITUDE[1:]]) == 0
    finally:
        os.umask(previous)
    out = workspace / "home" / "out"
    assert out.is_dir() and not (workspace / "~").exists()
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert json.loads((out / ".amp-hf-output.json").read_text())["written_by"] == "amp-hf"
