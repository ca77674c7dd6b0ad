"""`amp-hf --help` and the refusals that need no model load no torch, transformers, onnx or accelerate (issue 29),
proved from ``sys.modules`` in a fresh interpreter, not by wall time; and amp-hf's export keeps the exporter's
version-drift paragraph and torch's pytree FutureWarning out of the user's terminal."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
from helpers import REPO

HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "accelerate", "huggingface_hub", "datasets")

PROBE = f"HEAVY = {HEAVY!r}\n" + """
import contextlib, io, json, sys
from amp_hf.cli import main
err = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:  # argparse's --help and usage errors
        code = exit.code
print(json.dumps({"code": code, "stderr": err.getvalue(), "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
"""


def probe(*argv: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


COMMANDS = ("stats", "score", "prune", "run", "import", "distill", "eval", "demo", "export", "bench", "card", "push")


@pytest.mark.parametrize("argv", [("--help",), *((command, "--help") for command in COMMANDS)], ids=" ".join)
def test_help_imports_no_heavy_library(argv):
    outcome = probe(*argv)
    assert outcome["code"] == 0
    assert outcome["heavy"] == []


# {existing}: a folder holding a user's file (amp-hf refuses to write there, and to replace it); {new}: a free path
DISTILL = ("teacher=minilm", "student=minilm", "output={new}")


@pytest.mark.parametrize("argv, message", [
    (("prune", "--config", "no-such-config.yaml"), "does not exist"),
    (("prune", "search.delta_e=[1"), "not a plain YAML value"),
    (("score", "model=minilm"), "pass --output DIR"),
    (("distill", "--config", "no-such-config.yaml"), "does not exist"),
    (("bench", "--config", "no-such-config.yaml"), "does not exist"),
    (("prune", "--no-such-option"), "unrecognized arguments"),
    # unknown keys, bad values and existing outputs (issue 29): the config classes import no torch
    (("prune", "model=minilm", "no.such.key=1"), "unknown key no; valid keys: base_model, criterion"),
    (("prune", "search.no_such_key=1"), "unknown key search.no_such_key; valid keys under search:"),
    (("prune", "seed=abc"), "seed must be an integer; got 'abc'"),
    (("prune", "search.steps=0"), "search.steps must be >= 1"),
    (("prune", "method=dgmr", "search.allocation=uniform", "search.target_reduction=0.5"), "has its own uniform width"),
    (("prune", "reconstruct.enabled=true", "scoring.data.num_samples=40"), "needs at least 2"),
    (("prune", "output={existing}"), "already exists: choose another output path, or pass overwrite=true"),
    (("run", "output={existing}", "overwrite=true"), "was not written by amp-hf, so overwrite will not delete it"),
    (("score", "--output", "{new}", "scoring.max_batches=0"), "scoring.max_batches must be >= 1"),
    (("score", "--output", "{existing}"), "already exists"),
    (("distill", "no.such.key=1"), "unknown key no; valid keys: augment"),
    (("distill", *DISTILL, "optim.base_lr=0"), "base_lr must be > 0"),
    (("distill", *DISTILL, "data.batch_size=x"), "data.batch_size must be an integer; got 'x'"),
    (("distill", "teacher=minilm", "student=minilm", "output={existing}"), "already exists"),
    (("distill", "--resume", *DISTILL), "nothing to resume"),
    (("bench", "no_such_key=1"), "unknown key no_such_key; valid keys: align"),
    (("bench", "repeats=0"), "repeats >= 1"),
    (("export", "no-such-checkpoint", "{existing}"), "already exists: choose another output path, or pass --overwrite"),
    (("import", "official.pth", "--base", "minilm", "--output", "{existing}"), "already exists"),
    (("eval", "no-such-checkpoint", "--output", "{existing}/notes.txt"), "is not an amp-hf evaluation report"),
    # a model reference that can only be a missing local folder (a Hub id is resolved after torch loads)
    (("stats", "./no-such-folder"), "model folder './no-such-folder' does not exist"),
    (("export", "{new}/missing", "{new}/onnx"), "/missing' does not exist: pass a checkpoint folder, a Hub id"),
    (("eval", "{new}/missing"), "/missing' does not exist"),
    (("prune", "model={new}/missing", "output={new}/out"), "/missing' does not exist"),
    (("distill", "teacher={new}/missing", "student=minilm", "output={new}/out"), "teacher folder"),
    (("import", "official.pth", "--base", "{new}/missing", "--output", "{new}/out"), "base model folder"),
], ids=lambda value: value if isinstance(value, str) else " ".join(value))
def test_config_only_refusals_import_no_heavy_library(argv, message, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("a user's file\n")
    argv = [arg.format(existing=existing, new=tmp_path / "new") for arg in argv]
    outcome = probe(*argv)
    assert outcome["code"] == 2
    assert message in outcome["stderr"]
    assert outcome["heavy"] == []


def test_import_amp_hf_is_lazy_and_keeps_its_public_names():
    code = (
        "import sys, amp_hf\n"
        f"assert not [m for m in {HEAVY!r} if m in sys.modules], 'import amp_hf loaded a heavy library'\n"
        "missing = [n for n in amp_hf.__all__ if not hasattr(amp_hf, n)]\n"
        "assert not missing, missing\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "assert 'amp_bert' in CONFIG_MAPPING, 'first use registers the amp_* Auto classes'\n"
        "import export, hub_cards\n"
        "assert all(hasattr(export, n) for n in export.__all__) and all(hasattr(hub_cards, n) for n in hub_cards.__all__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr


def test_cli_constants_agree_with_the_modules_they_spell():
    from amp_hf.cli import hub, importing
    from amp_hf.importing import METHODS
    from amp_hf.selection import CRITERIA, CRITERION_NAMES, OWN_WIDTH_METHODS, SCORING_METHOD_NAMES, SCORING_METHODS
    from hub_cards.push import DEFAULT_TIMEOUT

    assert tuple(sorted(METHODS)) == importing.METHOD_NAMES
    assert hub.DEFAULT_TIMEOUT == DEFAULT_TIMEOUT
    # the torch-free config module spells what the criteria and scoring-method tables implement
    assert tuple(CRITERIA) == CRITERION_NAMES
    assert tuple(SCORING_METHODS) == SCORING_METHOD_NAMES
    assert tuple(name for name, method in SCORING_METHODS.items() if method.own_width) == OWN_WIDTH_METHODS


def test_config_classes_keep_their_public_names():
    # moved into torch-free modules (issue 29); the old import paths still work
    from amp_hf.data import DataConfig
    from amp_hf.data_config import DataConfig as LightDataConfig
    from amp_hf.distill import DistillConfig
    from amp_hf.distill.config import DistillConfig as LightDistillConfig
    from amp_hf.pruning import PruneConfig, ScoringConfig
    from amp_hf.pruning_config import PruneConfig as LightPruneConfig
    from amp_hf.pruning_config import ScoringConfig as LightScoringConfig
    from amp_hf.reconstruct import ReconstructConfig
    from amp_hf.reconstruct.config import ReconstructConfig as LightReconstructConfig
    from amp_hf.selection import CriterionConfig, DGMRConfig, SearchConfig
    from amp_hf.selection import config as selection_config
    from amp_hf.selection.criteria import CriterionConfig as CriteriaCriterionConfig
    from amp_hf.selection.methods import DGMRConfig as MethodsDGMRConfig
    from amp_hf.selection.search import SearchConfig as SearchSearchConfig
    from export.bench import BenchConfig
    from export.bench_config import BenchConfig as LightBenchConfig

    assert DataConfig is LightDataConfig and DistillConfig is LightDistillConfig
    assert (PruneConfig, ScoringConfig) == (LightPruneConfig, LightScoringConfig)
    assert ReconstructConfig is LightReconstructConfig and BenchConfig is LightBenchConfig
    assert CriterionConfig is selection_config.CriterionConfig is CriteriaCriterionConfig
    assert DGMRConfig is selection_config.DGMRConfig is MethodsDGMRConfig
    assert SearchConfig is selection_config.SearchConfig is SearchSearchConfig


def test_export_prints_no_third_party_noise(tmp_path, capfd):
    from test_export import save_tiny_checkpoint

    from export import export_checkpoint

    checkpoint = save_tiny_checkpoint("vit", tmp_path / "checkpoint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_checkpoint(checkpoint, tmp_path / "onnx")
    printed = capfd.readouterr()
    assert "Version drift" not in printed.err + printed.out
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
