"""`amp-hf import` of DINOv2 files (facebookresearch layout) into transformers Dinov2Model bases: outputs equal
the hand-pruned model, and one clear error per mismatch kind with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from import_layouts import (
    assert_same_outputs,
    hand_plan,
    mismatch_cases,
    run_import,
    to_facebook_dinov2,
)
from tiny_models import build

import amp_hf


@pytest.fixture(scope="module")
def dinov2_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("dinov2")
    base = build("dinov2_swiglu")
    with torch.no_grad():  # non-trivial layer scales and biases
        for name, parameter in base.named_parameters():
            if name.endswith(("lambda1", "bias")):
                parameter.normal_(0, 0.1)
    base.save_pretrained(root / "base")
    pruned = amp_hf.slice_model(base, hand_plan(base)).eval()
    return root, pruned


@pytest.mark.parametrize("chunks", [0, 2])
def test_dgmr_dinov2_file_imports(dinov2_case, tmp_path, chunks):
    root, pruned = dinov2_case
    weights = tmp_path / "distill.pth"
    torch.save(to_facebook_dinov2(pruned.state_dict(), chunks), weights)
    assert run_import(weights, root / "base", tmp_path / "out", "--method", "dgmr") == 0
    imported = amp_hf.load_model(str(tmp_path / "out"))
    assert amp_hf.get_adapter(imported).widths(imported) == amp_hf.get_adapter(pruned).widths(pruned)
    config = json.loads((tmp_path / "out" / "config.json").read_text())["amp_pruning"]
    assert config["method"] == "imported-dgmr" and config["source_layout"] == "dinov2"
    assert config["source_file"] == "distill.pth" and len(config["source_sha256"]) == 64
    assert_same_outputs(imported, pruned, {"pixel_values": torch.randn(2, 3, 32, 32)})


def test_dinov2_mismatches_fail_clearly_and_write_nothing(dinov2_case, tmp_path, capsys):
    root, pruned = dinov2_case
    state = to_facebook_dinov2(pruned.state_dict())
    cases = mismatch_cases(state, "blocks.1.mlp.w3.weight", "norm.weight")
    for expected, broken in cases.items():
        weights = tmp_path / "bad.pth"
        torch.save(broken, weights)
        assert run_import(weights, root / "base", tmp_path / "out") == 2
        message = capsys.readouterr().err
        assert expected in message and "Traceback" not in message, message
        assert len([line for line in message.splitlines() if "error" in line]) == 1, message
        assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.pth"]
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "bad.pth")
    assert run_import(tmp_path / "bad.pth", root / "base", tmp_path / "out") == 2
    assert "state dict" in capsys.readouterr().err
