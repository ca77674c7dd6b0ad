"""The bounded-memory paths of issue 27 give what the in-memory paths give, on a tall-thin random tower (many
layers, tiny width: every per-layer mechanism is exercised 24 times at a cost of milliseconds): the bounded
layer-input cache of the search and of the refit search, sharded checkpoints, memory-mapped import, autocast
scoring."""

from __future__ import annotations

import pytest
import torch
from helpers import run_without_amp_hf
from transformers import ViTConfig, ViTModel

import amp_hf
from amp_hf.importing import read_state_dict
from amp_hf.pruning_config import ScoringConfig
from amp_hf.reconstruct import ReconstructConfig, SearchRefit
from amp_hf.selection import CriterionConfig, CriterionEvaluator, adaptive_search, build_criterion, taylor_scores

LAYERS = 24


def tall_thin_tower(seed: int = 0, pooler: bool = False) -> ViTModel:
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=8, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=4)
    return ViTModel(config, add_pooling_layer=pooler).eval()


def batches(count: int = 2, size: int = 6, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(size, 3, 8, 8, generator=generator)} for _ in range(count)]


def criterion():
    return build_criterion(CriterionConfig(name="entropy", temp_inv=15.0))


def layer_input_bytes(evaluator: CriterionEvaluator) -> int:
    return sum(t.numel() * t.element_size() for entry in evaluator.layer_inputs if entry is not None for t in entry)


def search(model, scores, data, cache_gb, refit_config=None):
    evaluator = CriterionEvaluator(model, criterion(), data, cache_gb=cache_gb)
    refit = SearchRefit(model, evaluator, refit_config) if refit_config is not None else None
    result = adaptive_search(model, scores, evaluator, delta_e=0.01, steps=4, progress=False, refit=refit)
    return result, evaluator


def one_layer_gb(data) -> float:
    first = data[0]["pixel_values"]
    tokens = (8 // 4) ** 2 + 1
    return len(data) * first.shape[0] * tokens * 8 * 4 / 2**30


def test_bounded_cache_search_matches_the_full_cache_and_full_passes():
    model = tall_thin_tower()
    data = batches()
    scores = taylor_scores(model, data, criterion()).abs
    full, full_evaluator = search(model, scores, data, cache_gb=4.0)
    budget = 5.5 * one_layer_gb(data)  # room for 5 of the 24 layers' inputs
    bounded, bounded_evaluator = search(model, scores, data, cache_gb=budget)
    passes, passes_evaluator = search(model, scores, data, cache_gb=0.0)

    assert full_evaluator.stride == 1 and all(entry is not None for entry in full_evaluator.layer_inputs)
    # the bounded cache: every 5th layer (ceil(23 / 5)), within the budget, and used from the nearest one below
    assert bounded_evaluator.stride == 5
    assert layer_input_bytes(bounded_evaluator) <= budget * 2**30
    assert [bounded_evaluator.cached_start(layer) for layer in (0, 4, 5, 9, 10, 23)] == [0, 0, 5, 5, 10, 20]
    assert passes_evaluator.layer_inputs is None  # not even one layer fits: every evaluation is a full pass

    original = amp_hf.get_adapter(model).widths(model)
    assert full.widths != original and min(full.widths) < max(full.widths)  # the search really chose widths
    for other in (bounded, passes):
        assert other.widths == full.widths and other.kept == full.kept
        assert [entry["accepted"] for entry in other.log] == [entry["accepted"] for entry in full.log]
        for mine, reference in zip(other.log, full.log):  # same kernels from another start layer
            assert mine["entropy"] == pytest.approx(reference["entropy"], rel=1e-6, abs=1e-9)


def test_refit_search_streaming_layer_inputs_match_the_cached_ones():
    """search.reconstruct: Gram statistics from the bounded cache (layers without a cached input run their
    prefix) give the widths and refit weights of the fully cached search."""
    model = tall_thin_tower(seed=1)
    data = batches(count=3, seed=1)
    scores = taylor_scores(model, data, criterion()).abs
    config = ReconstructConfig(enabled=True)
    cached, _ = search(model, scores, data, cache_gb=4.0, refit_config=config)
    streamed, evaluator = search(model, scores, data, cache_gb=4.5 * one_layer_gb(data), refit_config=config)
    assert evaluator.stride > 1
    assert cached.projections, "no layer was refit: the comparison would be empty"
    assert streamed.widths == cached.widths and streamed.kept == cached.kept
    assert sorted(streamed.projections) == sorted(cached.projections)
    for layer, (weight, bias) in cached.projections.items():
        torch.testing.assert_close(streamed.projections[layer][0], weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(streamed.projections[layer][1], bias, rtol=1e-5, atol=1e-6)


def _pruned(model):
    widths = amp_hf.get_adapter(model).widths(model)
    plan = amp_hf.PrunePlan(widths, [list(range(0, w, 1 + i % 3)) for i, w in enumerate(widths)], method="random")
    return amp_hf.slice_model(model, plan), plan


def test_sharded_checkpoint_loads_like_one_file(tmp_path):
    pruned, plan = _pruned(tall_thin_tower(pooler=True))  # a checkpoint loads with the pooler its config has
    amp_hf.save_pruned(pruned, tmp_path / "one", plan)
    amp_hf.save_pruned(pruned, tmp_path / "sharded", plan, max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    assert [p.name for p in (tmp_path / "one").glob("*.safetensors")] == ["model.safetensors"]

    one, sharded = amp_hf.load_pruned(tmp_path / "one"), amp_hf.load_pruned(tmp_path / "sharded")
    assert one.state_dict().keys() == sharded.state_dict().keys()
    for name, tensor in one.state_dict().items():
        assert torch.equal(sharded.state_dict()[name], tensor), name  # the same bytes, only split

    pixels = batches(count=1, size=2, seed=5)[0]["pixel_values"]
    with torch.no_grad():
        expected = pruned(pixel_values=pixels).last_hidden_state
    torch.save({"pixel_values": pixels, "expected": expected}, tmp_path / "case.pt")
    code = f"""
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained({str(tmp_path / "sharded")!r}, trust_remote_code=True).eval()
case = torch.load({str(tmp_path / "case.pt")!r})
with torch.no_grad():
    out = model(pixel_values=case["pixel_values"]).last_hidden_state
torch.testing.assert_close(out, case["expected"], atol=1e-6, rtol=1e-6)
print("ok", type(model).__name__)
"""
    result = run_without_amp_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok AmpViTModel" in result.stdout


def _anonymous_rss() -> int:
    """Bytes of this process's memory not backed by a file (RssAnon): what a copy read into memory adds to."""
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("RssAnon:"))


def test_import_reads_files_memory_mapped_and_legacy_files_whole(tmp_path):
    state = {"blocks.0.mlp.fc1.weight": torch.randn(4096, 4096), "cls_token": torch.randn(1, 1, 4)}  # 64 MB
    torch.save({"model": state}, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    before = _anonymous_rss()
    mapped = read_state_dict(tmp_path / "zip.pth")
    for name, tensor in state.items():
        assert torch.equal(mapped[name], tensor), name  # every page read
    # the zip file's tensors are file-backed pages of a mapping, not a 64 MB copy in anonymous memory
    assert _anonymous_rss() - before < 16 * 2**20
    del mapped
    legacy = read_state_dict(tmp_path / "legacy.pth")  # cannot be mapped: read whole, same tensors
    for name, tensor in state.items():
        assert torch.equal(legacy[name], tensor), name


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def test_bf16_scoring_ranks_neurons_like_fp32_without_touching_the_weights():
    model = tall_thin_tower(seed=2)
    data = batches(count=2, size=8, seed=2)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    exact = taylor_scores(model, data, criterion())
    half = taylor_scores(model, data, criterion(), precision="bf16")
    assert all(s.dtype == torch.float64 for s in half.abs)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
    # bf16 keeps 8 significant bits: the ranking the search uses survives, the values agree to a few percent
    correlations = [_spearman(a, b) for a, b in zip(exact.abs, half.abs)]
    assert min(correlations) > 0.8 and sum(correlations) / len(correlations) > 0.95, correlations
    relative = [float((a - b).abs().sum() / a.abs().sum()) for a, b in zip(exact.abs, half.abs)]
    assert max(relative) < 0.15, relative
    with pytest.raises(ValueError, match="fp32, bf16"):
        taylor_scores(model, data, criterion(), precision="int8")
    with pytest.raises(ValueError, match="scoring.precision"):
        ScoringConfig(precision="fp64")
