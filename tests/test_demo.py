"""The README's main job, in its reduced (--quick) mode: real MiniLM -> checkpoint, ONNX, card."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, AutoTokenizer

import amp_hf
from amp_hf.cli import main


def test_quick_demo_produces_checkpoint_onnx_and_card(minilm_path, tmp_path, capsys):
    pytest.importorskip("amp_hf.data").read_fortunes()  # Debian fortunes must be installed
    output = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "MLP widths" in printed and "kNN@20 accuracy" in printed and "ONNX Runtime" in printed

    summary = json.loads((output / "summary.json").read_text())
    model = AutoModel.from_pretrained(output / "checkpoint")
    assert amp_hf.get_adapter(model).widths(model) == summary["widths"]
    assert summary["stats"]["params_mlp"]["after"] < summary["stats"]["params_mlp"]["before"]

    tokenizer = AutoTokenizer.from_pretrained(output / "checkpoint")
    batch = tokenizer(["Computers are useless. They can only give you answers."], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).last_hidden_state).all()

    graph = onnx.load(str(output / "onnx" / "model.onnx"))
    onnx.checker.check_model(graph)

    card = ModelCard.load(output / "checkpoint" / "README.md")
    assert "amp-hf" in card.data.tags
    assert (output / "checkpoint" / "width_profile.png").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # nothing half-written left behind
