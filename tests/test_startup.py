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


@pytest.mark.parametrize("argv, message", [
    (("prune", "--config", "no-such-config.yaml"), "does not exist"),
    (("prune", "search.delta_e=[1"), "not a plain YAML value"),
    (("score", "model=minilm"), "pass --output DIR"),
    (("distill", "--config", "no-such-config.yaml"), "does not exist"),
    (("bench", "--config", "no-such-config.yaml"), "does not exist"),
    (("prune", "--no-such-option"), "unrecognized arguments"),
], ids=lambda value: value if isinstance(value, str) else " ".join(value))
def test_config_only_refusals_import_no_heavy_library(argv, message):
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
    from hub_cards.push import DEFAULT_TIMEOUT

    assert tuple(sorted(METHODS)) == importing.METHOD_NAMES
    assert hub.DEFAULT_TIMEOUT == DEFAULT_TIMEOUT


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
