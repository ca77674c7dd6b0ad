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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # a fault to inject (e.g. a full disk)

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
    (root / "distill.yaml").write_text(
        f"teacher: {root / 'vit'}\nstudent: {root / 'pruned'}\n"
        "data: {source: digits, num_samples: 32, batch_size: 16}\nlogging: {tensorboard: false}\n"
    )


def _copy(name: str, change: Callable[[Path], None]) -> Callable[[Path], None]:
    """Setup: a copy of the pruned checkpoint at ``name``, damaged by ``change``."""

    def setup(root: Path) -> None:
        shutil.copytree(root / "pruned", root / name)
        change(root / name)

    return setup


def _truncate_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _drop_a_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["layers.0.mlp.fc2.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _edit_json(name: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        values = json.loads((folder / name).read_text())
        result = edit(values)
        (folder / name).write_text(json.dumps(values if result is None else result))

    return change


def _widen_first_layer(config: dict) -> None:
    config["per_layer_config"]["0"]["intermediate_size"] += 8


def _drop_kept_neurons(plan: dict) -> None:
    plan["kept"][0] = plan["kept"][0][:-3]


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def _scores_for(widths: list[int]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        import torch

        from amp_hf.selection import NeuronScores

        vectors = [torch.rand(w, dtype=torch.float64) for w in widths]
        NeuronScores(abs=vectors, signed=[v.clone() for v in vectors], num_samples=8).save(root / "other-scores")

    return setup


def _corrupt_images(root: Path) -> None:
    import numpy as np
    from PIL import Image

    for label in ("a", "b"):
        (root / "images" / label).mkdir(parents=True)
        for index in range(4):
            pixels = np.random.RandomState(index).randint(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / label / f"{index}.png")
    damaged = root / "images" / "a" / "1.png"
    damaged.write_bytes(damaged.read_bytes()[:60])


DISTILL = ["distill", "--config", "distill.yaml", "output=distilled", "--resume"]


def _run_folder(*, run_config: str | None = None, steps: tuple[str, ...] = ("step_00000001",),
                weights: bytes | None = None) -> Callable[[Path], None]:
    """Setup: a distillation run folder ``distilled.run`` with the given damage."""

    def setup(root: Path) -> None:
        from amp_hf.distill.config import DistillConfig
        from amp_hf.distill.run_state import write_run_config
        from amp_hf.files.config_utils import load_config

        _distill_config(root)
        write_run_config(load_config(DistillConfig, root / "distill.yaml", ["output=distilled"]))
        run = root / "distilled.run"
        if run_config is not None:
            (run / "run_config.yaml").write_text(run_config)
        for step in steps:
            (run / "checkpoints" / step).mkdir(parents=True)
            if weights is not None:
                (run / "checkpoints" / step / "model.safetensors").write_bytes(weights)

    return setup


def _disk_full(monkeypatch) -> None:
    import errno

    import amp_hf.pruning

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")

    monkeypatch.setattr(amp_hf.pruning, "write_pruned", full)


def _link(name: str, target: str) -> Callable[[Path], None]:
    """Setup: a copy of the pruned checkpoint ``linked`` holding the symlink ``name`` -> ``target``."""

    def setup(root: Path) -> None:
        shutil.copytree(root / "pruned", root / "linked")
        (root / "linked" / name).symlink_to(target)

    return setup


def _sentence_transformer_with_a_link_out(root: Path) -> None:
    from tiny_models import save_tiny_sentence_transformer

    (root / "st").mkdir()
    model = save_tiny_sentence_transformer(root / "st")
    (model / "1_Pooling" / "extra.txt").symlink_to("../../../notes.txt")


def _link_output(root: Path) -> None:
    (root / "pruned-link").symlink_to("pruned")


def _hand_written_readme(root: Path) -> None:
    (root / "pruned" / "README.md").write_text("# My model\n\nNotes I wrote by hand.\n")


def _small_disk(name: str, kib: int, then: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """Setup: a real ``kib`` KiB file system (tmpfs) at ``<workspace>/../name``, beside the workspace, so writes
    into it fail with ENOSPC as on a full disk. Mounting needs root (CI containers run as root)."""

    def setup(root: Path) -> None:
        import subprocess

        if os.geteuid() != 0:
            pytest.skip("simulating a full disk mounts a small tmpfs, which needs root")
        mount = root.parent / name
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)], check=True)
        if then is not None:
            then(root)

    return setup


def _unmount_under(folder: Path) -> list[Path]:
    """Unmount the tmpfs mounts ``_small_disk`` made under ``folder``; returns each mount's leftover entries."""
    import subprocess

    leftovers = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mount = Path(line.split()[1])
        if folder in mount.parents:
            leftovers += sorted(mount.rglob("*"))
            subprocess.run(["umount", str(mount)], check=True)
    return leftovers


DISTILL_FULL = ["distill", "--config", "distill.yaml", "schedule.max_steps=3", "schedule.warmup_steps=0",
                "data.num_samples=64", "data.batch_size=16", "augment.kind=none"]


DIGITS = ["scoring.data.source=digits", "scoring.data.num_samples=32", "scoring.data.batch_size=16"]

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
    Case("disk-full-while-saving", ["prune", "model=vit", "output=out", *MAGNITUDE],
         r"no space left on the device .*nothing was saved: free some space", patch=_disk_full),
    # damaged checkpoints, through the one loading path
    Case("stats-truncated-weights", ["stats", "broken"], r"cannot load the weights in broken .*corrupt; re-save it",
         _copy("broken", _truncate_weights)),
    Case("eval-missing-weights", ["eval", "broken", "--output", "report.json"],
         r"weights do not match config.json \(1 missing keys, e.g. layers.0.mlp.fc2.weight\)",
         _copy("broken", _drop_a_tensor)),
    Case("stats-tampered-per-layer-config", ["stats", "broken"], r"tensor shapes in the weights disagree with config",
         _copy("broken", _edit_json("config.json", _widen_first_layer))),
    Case("eval-config-not-an-object", ["eval", "broken", "--output", "report.json"],
         r"config.json holds a JSON list, not an object", _copy("broken", _write("config.json", "[1, 2]"))),
    Case("stale-plan", ["stats", "broken"], r"amp_plan.json keeps widths \[27, 30, 30\] .* the plan is stale",
         _copy("broken", _edit_json("amp_plan.json", _drop_kept_neurons))),
    Case("distill-stale-plan", ["distill", "--config", "distill.yaml", "student=broken", "output=out"],
         r"the plan is stale", lambda root: (_distill_config(root), _copy("broken", _edit_json(
             "amp_plan.json", _drop_kept_neurons))(root))),
    Case("scores-for-other-widths", ["prune", "model=vit", "output=out", "scoring.scores_path=other-scores"],
         r"scores in other-scores were computed for a model with MLP widths \[48, 48, 48\], but .* has \[64, 64, 64\]",
         _scores_for([48, 48, 48])),
    Case("scores-for-other-layer-count", ["prune", "model=vit", "output=out", "scoring.scores_path=other-scores",
                                          "search.allocation=global", "search.target_reduction=0.2"],
         r"MLP widths \[64, 64\], but", _scores_for([64, 64])),
    Case("corrupt-image-in-folder", ["prune", "model=vit", "output=out", "scoring.data.source=images",
                                     "scoring.data.batch_size=4"],
         r"cannot read image .*images/a/1.png .*remove or replace the file", _corrupt_images),
    # configs: files, keys and numbers
    Case("yaml-duplicate-key", ["prune", "--config", "c.yaml", "output=out"],
         r"c.yaml: key 'search' appears twice \(line 3\)", _write("c.yaml", "search:\n  steps: 3\nsearch:\n  steps: 4\n")),
    Case("yaml-does-not-parse", ["prune", "--config", "c.yaml", "output=out"], r"c.yaml is not valid YAML at line",
         _write("c.yaml", "search: [1, 2\nmodel: vit\n")),
    Case("yaml-not-utf8", ["prune", "--config", "c.yaml", "output=out"], r"c.yaml is not UTF-8 text",
         _write("c.yaml", b"model: \xff\xfevit\n")),
    Case("config-is-a-folder", ["prune", "--config", "mine", "output=out"], r"config mine is a folder: pass a YAML file"),
    Case("unknown-split", ["prune", "model=vit", "output=out", "scoring.data.split=trian"],
         r"split 'trian' does not exist in the built-in source 'digits': use one of train, test"),
    Case("negative-tolerance", ["prune", "model=vit", "output=out", "search.tolerance=-1"],
         r"search.tolerance .* must lie in \(0, 1\)"),
    Case("negative-cache", ["prune", "model=vit", "output=out", "search.cache_gb=-1"], r"search.cache_gb must be >= 0"),
    Case("max-length-zero", ["prune", "model=vit", "output=out", "scoring.data.max_length=0"],
         r"max_length \(tokens per text\) must be >= 1"),
    Case("budget-iterations-zero", ["prune", "model=vit", "output=out", "search.max_budget_iterations=0"],
         r"max_budget_iterations must be >= 1"),
    Case("max-batches-zero", ["prune", "model=vit", "output=out", "scoring.max_batches=0"],
         r"scoring.max_batches must be >= 1"),
    Case("eval-batch-size-zero", ["eval", "pruned", "--batch-size", "0"], r"--batch-size: expected an integer >= 1"),
    Case("bench-batch-size-zero", ["bench", "batch_sizes=[0]"], r"batch_sizes and threads must be >= 1"),
    Case("export-opset-99", ["export", "pruned", "onnx", "--opset", "99"], r"opset 99 does not exist yet"),
    # The percentages below are ratios of integer parameter counts: the same digits on every machine.
    Case("uniform-target-above-mlps", ["prune", "model=vit", "output=out", "method=magnitude",
                                       "search.allocation=uniform", "search.target_reduction=0.6"],
         r"search.target_reduction 0.60 is more than the MLPs hold \(0.37 of the tower's cost\)"),
    Case("budget-target-above-mlps", ["prune", "model=vit", "output=out", "search.allocation=budget",
                                      "search.target_reduction=0.5", *DIGITS],
         r"search.target_reduction 0.50 is more than the MLPs hold \(0.37"),
    Case("budget-target-beyond-width-resolution", ["prune", "model=vit", "output=out", "search.allocation=budget",
                                                   "search.target_reduction=0.33", "search.steps=2", *DIGITS],
         r"search.target_reduction=0.33 cannot be reached: even at the search's smallest widths \(H/2\^2\) pruning "
         r"removes 27.9% of the cost \(the MLPs hold 37.2%\)"),
    Case("budget-result-outside-tolerance", ["prune", "model=vit", "output=out", "search.allocation=budget",
                                             "search.target_reduction=0.09", "search.tolerance=0.01",
                                             "search.steps=1", *DIGITS],
         r"budget search reached .* for the 9.0% target \(tolerance ±1.0%\), so nothing was saved"),
    Case("round-to-at-layer-width", ["prune", "model=vit", "output=out", "search.round_to=64"],
         r"search.round_to=64 is >= the width 64 of layer 0"),
    Case("dgmr-width-at-layer-width", ["prune", "model=vit", "output=out", "method=dgmr", "dgmr.width=64"],
         r"the DGMR width 64 .* is >= the width 64 of layer 0"),
    Case("overrides-after-an-unknown-option", ["prune", "--config", "mine", "--frobnicate", "output=out"],
         r"unrecognized arguments: --frobnicate"),
    # distillation runs that cannot be resumed
    Case("resume-stray-step-latest", DISTILL, r"nothing to resume: no checkpoint under .*start without --resume",
         _run_folder(steps=("step_latest",))),
    Case("resume-corrupt-run-config", DISTILL, r"run_config.yaml is damaged .* start over without --resume",
         _run_folder(run_config="teacher: [unclosed\n")),
    Case("resume-truncated-weights", DISTILL,
         r"cannot resume from .*step_00000002: the checkpoint is damaged .* delete it to resume from step 1",
         _run_folder(steps=("step_00000001", "step_00000002"), weights=b"\x00" * 100)),
    Case("resume-missing-progress", DISTILL,
         r"cannot resume from .*step_00000001: the checkpoint is damaged .* start over without --resume",
         _run_folder()),
    # pushes that cannot happen are refused before the work
    Case("demo-push-bad-repo-id", ["demo", "--quick", "--output", "demo", "--push", "bad name!!"],
         r"'bad name!!' is not a valid repo id"),
    # issue 28: nothing leaves the folder, nothing of the user's is overwritten, no NaN passes
    Case("push-file-link-out-of-the-folder", ["push", "linked", "someone/tiny", "--dry-run"],
         r"linked/secret.txt is a symlink to ../notes.txt \(.*notes.txt\), outside linked: .*replace the link by a "
         r"copy of what it points to, or remove it; nothing was sent", _link("secret.txt", "../notes.txt")),
    Case("push-folder-link-out-of-the-folder", ["push", "linked", "someone/tiny", "--dry-run"],
         r"linked/extra is a symlink to ../mine \(.*mine\), outside linked: .*nothing was sent", _link("extra", "../mine")),
    Case("push-broken-link", ["push", "linked", "someone/tiny", "--dry-run"],
         r"linked/gone.txt is a symlink to .*, which does not exist: remove the link", _link("gone.txt", "nowhere")),
    Case("prune-copies-a-module-folder-linking-out", ["prune", "model=st/model", "output=out", *MAGNITUDE],
         r"st/model/1_Pooling/extra.txt is a symlink to ../../../notes.txt \(.*/notes.txt\), outside st/model: ",
         _sentence_transformer_with_a_link_out),
    Case("card-over-a-hand-written-readme", ["card", "pruned"],
         r"pruned/README.md was not written by amp-hf, so the card will not replace it: pass --overwrite-readme",
         _hand_written_readme),
    Case("delta-e-nan", ["prune", "model=vit", "output=out", "search.delta_e=nan"],
         r"search.delta_e must be a finite number; got nan"),
    Case("dgmr-ratio-inf", ["prune", "model=vit", "output=out", "method=dgmr", "dgmr.ratio=inf"],
         r"dgmr.ratio must be a finite number; got inf"),
    Case("config-file-nan", ["prune", "--config", "c.yaml", "output=out"],
         r"search.tolerance must be a finite number; got nan", _write("c.yaml", "search:\n  tolerance: .nan\n")),
    Case("config-file-infinity", ["prune", "--config", "c.yaml", "output=out"],
         r"reconstruct.revert_margin must be a finite number; got inf",
         _write("c.yaml", "reconstruct:\n  revert_margin: .inf\n")),
    Case("push-timeout-inf", ["push", "pruned", "someone/tiny", "--timeout", "inf"],
         r"the timeout must be a positive, finite number of seconds; got inf"),
    Case("disk-full-while-saving-a-prune", ["prune", "model=vit", "output={ws}/../full/out", *MAGNITUDE],
         r"no space left on the device \(No space left on device: .*/full/out\); nothing was saved: free some space",
         _small_disk("full", 64)),
    Case("disk-full-while-saving-a-distillation-checkpoint",
         [*DISTILL_FULL, "output=out", "run_dir={ws}/../full/run", "checkpointing.every_steps=1"],
         r"no space left on the device \(No space left on device: .*/full/run/checkpoints/step_00000001\); nothing was saved",
         _small_disk("full", 64, _distill_config)),
    Case("distill-output-on-a-disk-without-room", [*DISTILL_FULL, "output={ws}/../full/out"],
         r"not enough free space for the distilled checkpoint in .*full: it needs about [0-9.]+ MiB and 0.0 MiB are "
         r"free; free some space", _small_disk("full", 16, _distill_config)),
    Case("reconstruct-num-samples-below-two-batches", ["prune", "model=vit", "output=out", "reconstruct.enabled=true",
                                                       "reconstruct.num_samples=24", *DIGITS],
         r"reconstruct.num_samples=24 gives 1 whole calibration batch\(es\) of 16, but the reconstruction needs at "
         r"least 2 .*set reconstruct.num_samples >= 32 or lower scoring.data.batch_size"),
    Case("search-reconstruct-data-samples-below-two-batches",
         ["prune", "model=vit", "output=out", "search.reconstruct=true", "scoring.data.num_samples=16",
          "scoring.data.batch_size=16"],
         r"scoring.data.num_samples=16 gives 1 whole calibration batch"),
    Case("overwrite-a-symlinked-amp-output", ["prune", "model=vit", "output=pruned-link", "overwrite=true",
                                              *MAGNITUDE],
         r"output pruned-link is a symlink \(to pruned\): amp-hf does not write through or replace links; give the "
         r"folder it points to", _link_output),
    Case("python-object-tag-in-an-override", ["prune", "model=vit", "output=out",
                                              "search.delta_e=!!python/object/apply:os.system [echo hi]"],
         r"override 'search.delta_e=!!python/object/apply:os.system \[echo hi\]': the value is not a plain YAML "
         r"value \(.*\); give a number"),
    Case("search-steps-beyond-one-neuron", ["prune", "model=vit", "output=out", "search.steps=100000", *DIGITS],
         r"search.steps=100000 is more than the search can use: .*H=64\) is down to one neuron after log2\(H\) ≈ 6 "
         r"steps.*set search.steps <= 6"),
    Case("eval-data-not-an-image-folder", ["eval", "pruned", "--data", "{ws}/mine", "--output", "report.json"],
         r"cannot read .*mine as an image folder with a 'train' split \(.*\): pass a folder of <label>/<image>"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(case, workspace, capsys, monkeypatch):
    if case.setup:
        case.setup(workspace)
    if case.patch:
        case.patch(monkeypatch)
    before = snapshot(workspace)
    try:
        code = main(case.args(workspace))
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    finally:
        leftovers = _unmount_under(workspace.parent)
    assert not [path for path in leftovers if ".partial" in path.name], leftovers  # no half-written staging folder
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("amp-hf") and ": error: " in line]
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
    # a card and an export written into it later (eval reports too) keep it amp-hf's to replace
    assert main(["card", "pruned"]) == 0
    assert main(["export", "pruned", "pruned/onnx"]) == 0
    assert main(["prune", "model=vit", "output=pruned", "overwrite=true", *MAGNITUDE]) == 0
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


def test_push_to_a_hub_that_never_answers_fails_within_a_minute(workspace, monkeypatch, capsys):
    """A loopback server that accepts connections and never sends a byte: the push times out, retries, then
    reports, instead of hanging (huggingface_hub sets no timeout of its own)."""
    import socket
    import threading
    import time

    from huggingface_hub import constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []
    stop = threading.Event()

    def accept_and_ignore():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_ignore, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", "dummy")
    started = time.monotonic()
    try:
        code = main(["push", "pruned", "someone/tiny", "--timeout", "1"])
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert re.search(r"did not answer within 1 s .* also when retried; nothing was committed", err), err
    assert len(held) >= 2  # the request was retried
    assert elapsed < 60


def test_folder_files_follows_links_that_stay_inside(tmp_path):
    """Links inside the folder are followed (one back to a folder being walked is not walked again); a Hugging Face cache
    snapshot's links into its repo's blobs are inside that repo; anything else is refused."""
    from amp_hf.errors import LinkOutsideError
    from amp_hf.files.outputs import folder_files

    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "0123abcd").write_text("{}")
    snapshot = repo / "snapshots" / ("a" * 40)
    (snapshot / "1_Pooling").mkdir(parents=True)
    (snapshot / "1_Pooling" / "config.json").symlink_to("../../../blobs/0123abcd")
    (snapshot / "1_Pooling" / "again").symlink_to("..")  # a loop, inside
    (snapshot / "alias.json").symlink_to("1_Pooling/config.json")
    listed = dict(folder_files(snapshot))
    assert sorted(listed) == ["1_Pooling/config.json", "alias.json"]
    assert all(path.read_text() == "{}" for path in listed.values())

    copy = tmp_path / "copy"  # the same folder outside a cache: its blob links lead out of it
    shutil.copytree(snapshot, copy, symlinks=True)
    (copy / "1_Pooling" / "config.json").unlink()
    (copy / "1_Pooling" / "config.json").symlink_to(repo / "blobs" / "0123abcd")
    with pytest.raises(LinkOutsideError, match=r"copy/1_Pooling/config.json is a symlink to /.*0123abcd, outside "):
        folder_files(copy)
