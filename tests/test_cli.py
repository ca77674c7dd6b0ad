"""The command line: prune/score/run end to end on saved tiny checkpoints, bad input, multi-process scoring."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO, accelerate_launch
from safetensors.torch import load_file
from transformers import AutoModel

import amp_hf
from amp_hf.cli import main

DIGITS = ["scoring.data.source=digits", "scoring.data.num_samples=64", "scoring.data.batch_size=16"]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amp_hf", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)


def test_help_lists_the_core_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("stats", "score", "prune", "run"):
        assert command in result.stdout


def test_run_prunes_saves_and_reports(vit_checkpoint, tmp_path, capsys):
    output = tmp_path / "pruned"
    code = main(["run", f"model={vit_checkpoint}", f"output={output}", *DIGITS, "search.delta_e=0.05"])
    assert code == 0
    report = json.loads((output / "prune_report.json").read_text())
    model = AutoModel.from_pretrained(output)
    assert amp_hf.get_adapter(model).widths(model) == report["widths"]
    assert report["widths"] != report["original_widths"]
    assert report["search_log"] and report["stats"]["params_tower"]["after"] < report["stats"]["params_tower"]["before"]
    assert model.config.amp_pruning["criterion"] == "entropy"
    assert model.config.amp_pruning["scoring_samples"] == 64
    assert (output / "preprocessor_config.json").is_file()
    assert "widths" in capsys.readouterr().out


def test_dgmr_from_the_command_line(vit_checkpoint, tmp_path):
    output = tmp_path / "dgmr"
    assert main(["prune", f"model={vit_checkpoint}", f"output={output}", "method=dgmr", "dgmr.ratio=0.5"]) == 0
    model = AutoModel.from_pretrained(output)
    assert amp_hf.get_adapter(model).widths(model) == [16, 16, 16]  # r * d = 0.5 * 32
    assert model.config.amp_pruning["method"] == "dgmr"


def test_budget_from_a_yaml_config(vit_checkpoint, tmp_path):
    config = tmp_path / "budget.yaml"
    config.write_text(
        f"model: {vit_checkpoint}\noutput: {tmp_path / 'budget'}\n"
        "scoring:\n  data: {source: digits, num_samples: 32, batch_size: 16}\n"
        "search:\n  allocation: budget\n  target_reduction: 0.25\n"
    )
    assert main(["prune", "--config", str(config)]) == 0
    report = json.loads((tmp_path / "budget" / "prune_report.json").read_text())
    assert abs(report["details"]["achieved_reduction"] - 0.25) <= 0.02


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["search.dleta_e=0.1"], "unknown key search.dleta_e; valid keys under search: acceptance, allocation"),
        (["criterion.temp_inv=-1"], "temp_inv must be > 0"),
        (["criterion.temperature=0"], "temperature"),
        (["search.allocation=budget", "search.target_reduction=1.5"], "target_reduction in \\(0, 1\\)"),
        (["search.allocation=budget"], "target_reduction in \\(0, 1\\)"),
        (["search.steps=abc"], "search.steps must be an integer"),
        (["method=obs"], "method must be one of"),
        (["scoring.data.source=/nonexistent/data.csv"], "cannot load data source"),
    ],
)
def test_bad_configs_fail_fast_with_the_fix(vit_checkpoint, tmp_path, capsys, overrides, message):
    output = tmp_path / "never"
    code = main(["prune", f"model={vit_checkpoint}", f"output={output}", *overrides])
    assert code == 2
    import re

    assert re.search(message, capsys.readouterr().err)
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_too_little_data_is_a_clear_error(vit_checkpoint, tmp_path, capsys):
    code = main(["run", f"model={vit_checkpoint}", f"output={tmp_path / 'x'}", "scoring.data.source=digits",
                 "scoring.data.num_samples=4", "scoring.data.batch_size=16"])
    assert code == 2
    assert "fewer than one batch" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_existing_output_is_not_overwritten(vit_checkpoint, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert main(["prune", f"model={vit_checkpoint}", f"output={tmp_path / 'taken'}", "method=magnitude",
                 "search.allocation=uniform", "search.target_reduction=0.2"]) == 2
    assert "overwrite=true" in capsys.readouterr().err


def test_unsupported_model_exits_with_the_supported_list(tmp_path, capsys):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=10, n_positions=8)).save_pretrained(tmp_path / "g")
    assert main(["stats", str(tmp_path / "g")]) == 2
    assert "Supported model classes" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_two_process_scoring_equals_one_process(vit_checkpoint, tmp_path):
    args = ["score", f"model={vit_checkpoint}", *DIGITS]
    single = run_cli(*args, "--output", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-2000:]
    double = accelerate_launch([*args, "--output", str(tmp_path / "two")], cwd=REPO)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = load_file(str(tmp_path / "one" / "scores.safetensors")), load_file(str(tmp_path / "two" / "scores.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        if key.endswith(".abs"):  # the scores pruning uses: every neuron within rtol 1e-5
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-12)
        else:  # signed means cancel across samples, so near-zero entries carry float32 noise of the layer's scale
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5 * float(one[key].abs().max()))
    assert json.loads((tmp_path / "two" / "scores.json").read_text())["num_samples"] == 64


UNIFORM = ["method=magnitude", "search.allocation=uniform", "search.target_reduction=0.2"]  # data-free: cheap


@pytest.mark.multiprocess
def test_cpu_launcher_asked_for_two_processes_warns_that_one_runs(vit_checkpoint, tmp_path):
    # issue 24 item 6: `accelerate launch --cpu --num_processes 2` starts one process and says nothing
    from amp_hf.distributed import MULTI_PROCESS_HINT

    output = tmp_path / "cpu"
    result = accelerate_launch(["prune", f"model={vit_checkpoint}", f"output={output}", *UNIFORM], cwd=REPO,
                               mode="--cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(MULTI_PROCESS_HINT) == 1
    assert json.loads((output / "prune_report.json").read_text())["num_processes"] == 1


@pytest.mark.multiprocess
def test_multi_gpu_launcher_on_cpu_runs_two_processes_without_the_warning(vit_checkpoint, tmp_path):
    from amp_hf.distributed import MULTI_PROCESS_HINT

    output = tmp_path / "gloo"
    result = accelerate_launch(["prune", f"model={vit_checkpoint}", f"output={output}", *UNIFORM], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert MULTI_PROCESS_HINT not in result.stderr
    assert json.loads((output / "prune_report.json").read_text())["num_processes"] == 2


def test_the_process_count_check_reads_the_launcher_environment():
    from amp_hf.distributed import launcher_asked_for_more

    asked_for_two = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launcher_asked_for_more(1, asked_for_two)
    assert not launcher_asked_for_more(2, asked_for_two)  # the others started (MPI)
    assert not launcher_asked_for_more(1, {"ACCELERATE_USE_CPU": "True"})  # asked for one
    assert not launcher_asked_for_more(1, {"MASTER_ADDR": "127.0.0.1"})  # not accelerate's single-process launcher
