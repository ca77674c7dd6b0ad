"""No local path leaves the machine: base models are recorded by Hub id (or not at all), everything else by a
path relative to the file that names it; every file amp-hf writes is grepped for this machine's paths."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from helpers import local_paths_under
from tiny_models import build

from amp_hf.files.config_utils import ConfigError, load_config
from amp_hf.files.provenance import hub_reference, portable_reference
from amp_hf.pruning import PruneConfig, run_prune

REVISION = "0123456789abcdef0123456789abcdef01234567"


def test_hub_reference_of_aliases_cache_snapshots_and_cards(minilm_path, tmp_path):
    assert hub_reference("minilm") == ("sentence-transformers/all-MiniLM-L6-v2", None)
    assert hub_reference(minilm_path) == ("sentence-transformers/all-MiniLM-L6-v2", None)
    snapshot = tmp_path / "hub" / "models--acme--tiny-bert" / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    assert hub_reference(snapshot) == ("acme/tiny-bert", REVISION)
    build("bert").save_pretrained(tmp_path / "local")
    assert hub_reference(tmp_path / "local") == (None, None)  # nothing names it: no base_model is recorded
    (tmp_path / "local" / "README.md").write_text('model = SentenceTransformer("acme/my-encoder")\n')
    assert hub_reference(tmp_path / "local") == ("acme/my-encoder", None)
    assert hub_reference("acme/remote-only") == ("acme/remote-only", None)
    assert portable_reference(tmp_path / "data" / "train", tmp_path / "out") == "../data/train"


def _prune(model: str, output: Path, *extra: str) -> dict:
    run_prune(load_config(PruneConfig, None, [f"model={model}", f"output={output}", "method=magnitude",
                                               "search.allocation=uniform", "search.target_reduction=0.2", *extra]))
    return json.loads((output / "config.json").read_text())["amp_pruning"]


def test_base_model_is_a_hub_id_an_override_or_absent(tmp_path):
    build("bert").save_pretrained(tmp_path / "local")
    assert "base_model" not in _prune(str(tmp_path / "local"), tmp_path / "a")
    assert _prune(str(tmp_path / "local"), tmp_path / "b", "base_model=acme/tiny-bert")["base_model"] == "acme/tiny-bert"
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        load_config(PruneConfig, None, [f"model={tmp_path / 'local'}", f"base_model={tmp_path / 'local'}"])


def test_prune_distill_eval_export_write_no_local_paths(tiny_st, tmp_path):
    """Absolute paths in, no absolute path out: every file of the checkpoints and the exports is grepped."""
    from amp_hf.data import DataConfig
    from amp_hf.distill import DistillConfig, run_distillation
    from amp_hf.evaluation.tasks import evaluate_fidelity
    from amp_hf.files.eval_report import write_report
    from amp_hf.loading import load_model
    from export import ExportOptions, export_checkpoint

    texts = tmp_path / "texts"
    datasets.Dataset.from_dict({"text": ["the cat sat", "a big red dog ran fast", "the mat", "dog ran"]}).save_to_disk(texts)
    pruned = tmp_path.absolute() / "pruned"
    _prune(str(tiny_st.absolute()), pruned, f"scoring.data.source={texts}")
    distilled = tmp_path.absolute() / "distilled"
    run_distillation(load_config(DistillConfig, None, [
        f"teacher={tiny_st.absolute()}", f"student={pruned}", f"output={distilled}", f"data.source={texts}",
        "data.batch_size=2", "schedule.max_steps=1", "schedule.warmup_steps=0"]))  # fmt: skip
    data = DataConfig(source=str(texts), batch_size=2)
    results = evaluate_fidelity(load_model(str(distilled)), load_model(str(tiny_st)), data)
    write_report(results, distilled / "eval_report.json", model=str(distilled))
    export_checkpoint(distilled, distilled / "onnx", ExportOptions())
    export_checkpoint(pruned, tmp_path / "pruned-onnx", ExportOptions())

    for folder in (pruned, distilled, tmp_path / "pruned-onnx"):
        assert local_paths_under(folder, tmp_path, tiny_st) == {}, folder
    recipe = json.loads((distilled / "config.json").read_text())["amp_pruning"]["distillation"]
    assert recipe["student"] == "../pruned" and recipe["data"]["source"] == "../texts"
    assert json.loads((distilled / "eval_report.json").read_text())["model"] == "."
    assert json.loads((distilled / "onnx" / "amp_export.json").read_text())["source"] == ".."
    assert json.loads((tmp_path / "pruned-onnx" / "amp_export.json").read_text())["source"] == "../pruned"
