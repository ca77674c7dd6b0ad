"""Pruned sentence encoders stay sentence-transformers models: every checkpoint amp-hf writes from one carries its
modules and settings, and sentence-transformers itself (PyTorch and ONNX backends) returns amp-hf's embeddings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from helpers import (
    amp_hf_embeddings,
    assert_sentence_transformers_matches,
    assert_sentence_transformers_onnx_layout_matches,
    run_without_amp_hf,
    sentences_of,
)
from tiny_models import ST_PROMPTS as PROMPTS

import amp_hf
from amp_hf.data import DataConfig
from amp_hf.files.config_utils import load_config
from amp_hf.files.sentence_transformers_format import SentenceHead
from amp_hf.pruning import PruneConfig, run_prune

st = pytest.importorskip("sentence_transformers")

TEXTS = ["the cat sat on the mat", "a big red dog ran fast", "the dog sat", "red mat", "a cat ran on the big dog",
         "fast fast fast", "the big cat", "dog"]  # fmt: skip


def _texts(folder: Path) -> DataConfig:
    path = folder / "texts"
    if not path.exists():
        labels = [i % 2 for i in range(len(TEXTS))]
        datasets.Dataset.from_dict({"text": TEXTS, "label": labels}).save_to_disk(path)
    return DataConfig(source=str(path), batch_size=4, max_length=32)


def _prune(base: Path, output: Path, **overrides) -> Path:
    values = [f"model={base}", f"output={output}", "method=magnitude", "search.allocation=uniform",
              "search.target_reduction=0.2", *[f"{k}={v}" for k, v in overrides.items()]]  # fmt: skip
    run_prune(load_config(PruneConfig, None, values))
    return output


@pytest.mark.parametrize("reconstruct", [False, True], ids=["sliced", "reconstructed"])
def test_pruned_checkpoint_is_a_sentence_transformers_model(tiny_st, tmp_path, reconstruct):
    data = _texts(tmp_path)
    overrides = {}
    if reconstruct:
        overrides = {"reconstruct.enabled": "true", "scoring.data.source": data.source, "scoring.data.batch_size": 4,
                     "scoring.data.max_length": 32, "reconstruct.num_samples": 8}  # fmt: skip
    checkpoint = _prune(tiny_st, tmp_path / "pruned", **overrides)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                 "1_Pooling/config.json", "2_Dense/model.safetensors"):  # fmt: skip
        assert (checkpoint / name).is_file(), name
    model = assert_sentence_transformers_matches(checkpoint, data)
    assert type(model[0].auto_model).__name__ == "AmpBertModel"
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert model.max_seq_length == 24 and model.prompts == PROMPTS and model.similarity_fn_name == "dot"
    widths = amp_hf.get_adapter(model[0].auto_model).widths(model[0].auto_model)
    assert widths == json.loads((checkpoint / "prune_report.json").read_text())["widths"] != [48, 48]


def test_distilled_checkpoint_is_a_sentence_transformers_model(tiny_st, tmp_path):
    from amp_hf.distill import DistillConfig, run_distillation

    data = _texts(tmp_path)
    pruned = _prune(tiny_st, tmp_path / "pruned")
    overrides = [f"teacher={tiny_st}", f"student={pruned}", f"output={tmp_path / 'distilled'}",
                 f"data.source={data.source}", "data.batch_size=4", "data.max_length=32", "schedule.max_steps=2",
                 "schedule.warmup_steps=0", "optim.base_lr=0.5"]  # fmt: skip
    distilled = Path(run_distillation(load_config(DistillConfig, None, overrides)))
    assert (distilled / "modules.json").is_file() and (distilled / "2_Dense" / "config.json").is_file()
    assert_sentence_transformers_matches(distilled, data)
    changed = amp_hf_embeddings(distilled, data) - amp_hf_embeddings(pruned, data)
    assert changed.abs().max() > 1e-4  # the comparison is of the trained weights, not the pruned ones


def test_trust_remote_code_without_amp_hf_gives_the_same_embeddings(tiny_st, tmp_path):
    data = _texts(tmp_path)
    checkpoint = _prune(tiny_st, tmp_path / "pruned")
    code = (
        "import json, sys\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"model = SentenceTransformer({str(checkpoint)!r}, trust_remote_code=True, device='cpu')\n"
        f"print(json.dumps(model.encode({sentences_of(data, checkpoint)!r}, batch_size=4).tolist()))\n"
        "assert 'amp_hf' not in sys.modules\n"
    )
    result = run_without_amp_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(theirs, amp_hf_embeddings(checkpoint, data), atol=1e-5, rtol=0)


def test_onnx_backend_of_sentence_transformers_matches(tiny_st, tmp_path):
    from export import ExportOptions, export_checkpoint

    data = _texts(tmp_path)
    checkpoint = _prune(tiny_st, tmp_path / "pruned")
    export_checkpoint(checkpoint, checkpoint / "onnx", ExportOptions())
    assert_sentence_transformers_onnx_layout_matches(checkpoint, data, atol=1e-4)
    # The backend itself reads graphs through optimum (opt-in extra `sentence-transformers-onnx`).
    pytest.importorskip("optimum.onnxruntime", reason="sentence-transformers' ONNX backend needs optimum")
    model = assert_sentence_transformers_matches(checkpoint, data, atol=1e-4, backend="onnx")
    assert model[0].backend == "onnx"


def test_feature_extraction_pipeline_loads_a_pruned_text_encoder(tiny_st, tmp_path):
    from transformers import AutoTokenizer, pipeline

    checkpoint = _prune(tiny_st, tmp_path / "pruned")
    features = np.asarray(pipeline("feature-extraction", model=str(checkpoint))("the cat sat"))
    model, tokenizer = amp_hf.load_model(str(checkpoint)), AutoTokenizer.from_pretrained(checkpoint)
    with torch.no_grad():
        expected = model(**tokenizer(["the cat sat"], return_tensors="pt")).last_hidden_state
    np.testing.assert_allclose(features, expected.numpy(), atol=1e-5)


def test_card_of_a_sentence_transformers_model(tiny_st, tmp_path):
    from huggingface_hub import ModelCard

    from hub_cards import write_card

    checkpoint = _prune(tiny_st, tmp_path / "pruned")
    write_card(checkpoint)
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.library_name == "sentence-transformers"
    assert card.data.pipeline_tag == "sentence-similarity"
    assert "from sentence_transformers import SentenceTransformer" in card.text
    assert "Transformer → Pooling → Dense → Normalize" in card.text and "`max_seq_length` of 24" in card.text


def test_head_falls_back_to_family_pooling_for_modules_it_does_not_reproduce(tiny_st, tmp_path, caplog):
    assert SentenceHead.from_folder(tiny_st).pooling == ("mean",)
    copy = Path(shutil.copytree(tiny_st, tmp_path / "copy"))
    modules = json.loads((tiny_st / "modules.json").read_text())
    (copy / "modules.json").write_text(json.dumps(modules + [{"idx": 4, "name": "4", "path": "4_LayerNorm",
                                                               "type": "sentence_transformers.models.LayerNorm"}]))
    assert SentenceHead.from_folder(copy) is None
    assert "LayerNorm" in caplog.text


def test_real_minilm_pruned_keeps_normalize_and_max_seq_length(minilm_path, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from amp_hf.data import read_fortunes
    from amp_hf.selection import magnitude_scores

    read_fortunes()  # Debian fortunes must be installed
    model = amp_hf.load_model(minilm_path)
    widths = [w // 2 for w in amp_hf.get_adapter(model).widths(model)]
    plan = amp_hf.PrunePlan.from_scores(magnitude_scores(model), widths, method="magnitude")
    checkpoint = amp_hf.save_pruned(amp_hf.slice_model(model, plan), tmp_path / "minilm", plan,
                                    processor=AutoTokenizer.from_pretrained(minilm_path))  # fmt: skip
    data = DataConfig(source="fortunes", split="test", num_samples=24, batch_size=8, max_length=256)
    loaded = assert_sentence_transformers_matches(checkpoint, data)
    assert loaded.max_seq_length == SentenceTransformer(minilm_path, device="cpu").max_seq_length == 256


@pytest.mark.slow
def test_real_minilm_pruned_onnx_backend_matches(minilm_path, tmp_path):
    from amp_hf.data import read_fortunes
    from export import ExportOptions, export_checkpoint

    read_fortunes()
    checkpoint = _prune(Path(minilm_path), tmp_path / "minilm")
    export_checkpoint(checkpoint, checkpoint / "onnx", ExportOptions())
    data = DataConfig(source="fortunes", split="test", num_samples=24, batch_size=8, max_length=256)
    assert_sentence_transformers_onnx_layout_matches(checkpoint, data, atol=1e-4)
    pytest.importorskip("optimum.onnxruntime", reason="sentence-transformers' ONNX backend needs optimum")
    assert_sentence_transformers_matches(checkpoint, data, atol=1e-4, backend="onnx")
