"""The README's main job, in its reduced (--quick) mode: the real MiniLM scored, searched, sliced, distilled,
evaluated, exported and carded; both checkpoints stay sentence-transformers models; no local path is written."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from helpers import assert_sentence_transformers_matches, assert_sentence_transformers_onnx_layout_matches, local_paths_under
from huggingface_hub import ModelCard
from transformers import AutoModel, AutoTokenizer

import amp_hf
from amp_hf.cli import main
from amp_hf.data import DataConfig


@pytest.fixture(scope="module")
def demo(minilm_path, tmp_path_factory):
    from amp_hf.data import read_fortunes

    read_fortunes()  # Debian fortunes must be installed
    output = tmp_path_factory.mktemp("demo").absolute() / "demo"
    printed = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.print", lambda *args, **kwargs: printed.append(" ".join(map(str, args))))
        assert main(["demo", "--quick", "--output", str(output)]) == 0
    return output, "\n".join(printed)


def test_quick_demo_produces_sliced_and_distilled_checkpoints_onnx_and_cards(demo):
    output, printed = demo
    for text in ("MLP widths", "kNN@20 accuracy", "fidelity (mean cosine)", "ONNX Runtime", "unpruned", "sliced",
                 "distilled", " ± ", "pt)", "wall time"):  # fmt: skip
        assert text in printed, text

    summary = json.loads((output / "summary.json").read_text())
    for name in ("sliced", "distilled"):
        model = AutoModel.from_pretrained(output / name)
        assert amp_hf.get_adapter(model).widths(model) == summary["widths"]
        card = ModelCard.load(output / name / "README.md")
        assert "amp-hf" in card.data.tags and card.data.library_name == "sentence-transformers"
        assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
        assert (output / name / "width_profile.png").is_file()
    assert summary["stats"]["params_mlp"]["after"] < summary["stats"]["params_mlp"]["before"]
    distillation = json.loads((output / "distilled" / "config.json").read_text())["amp_pruning"]["distillation"]
    assert distillation["student"] == "../sliced" and distillation["steps"] >= 1

    tokenizer = AutoTokenizer.from_pretrained(output / "distilled")
    batch = tokenizer(["Computers are useless. They can only give you answers."], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).last_hidden_state).all()
    onnx.checker.check_model(onnx.load(str(output / "distilled" / "onnx" / "model.onnx")))
    assert not any(p.name.startswith(".") for p in output.parent.iterdir())  # nothing half-written left behind


def test_no_file_of_the_demo_holds_a_local_path(demo):
    output, _ = demo
    assert local_paths_under(output) == {}


def test_sentence_transformers_loads_both_checkpoints_with_amp_hf_embeddings(demo):
    pytest.importorskip("sentence_transformers")
    output, _ = demo
    data = DataConfig(source="fortunes", split="test", num_samples=24, batch_size=8, max_length=256)
    for name in ("sliced", "distilled"):
        model = assert_sentence_transformers_matches(output / name, data)
        assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
        assert model.max_seq_length == 256
    assert_sentence_transformers_onnx_layout_matches(output / "distilled", data, atol=1e-4)
    pytest.importorskip("optimum.onnxruntime", reason="sentence-transformers' ONNX backend needs optimum")
    model = assert_sentence_transformers_matches(output / "distilled", data, atol=1e-4, backend="onnx")
    assert model[0].backend == "onnx"
