"""Pinned checksums: slicing, scores, search and reconstruction give bit-identical results across refactors.

The checksums were computed on the code before the hidden-neuron-map redesign (issue #12) and must not
change while the behaviour is meant to stay the same. Each digest is the SHA-256 (first 16 hex digits) of
the raw bytes of the tensors, so a single flipped bit fails. Everything runs on one thread: CPU kernels
split reductions differently with more threads, which changes the last bits of a forward pass (the slicing
digests do not depend on it). Regenerate only for an intended change of results:
``python tests/test_pinned_outputs.py`` prints the current table.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from tiny_models import build, sample_inputs

import amp_hf
from amp_hf.reconstruct import ReconstructConfig, reconstruct
from amp_hf.selection import (
    CriterionConfig,
    CriterionEvaluator,
    adaptive_search,
    build_criterion,
    dgmr_scores,
    magnitude_scores,
    taylor_scores,
    tower_cost,
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digest(*tensors: torch.Tensor) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return sha.hexdigest()[:16]


def pinned_plan(model) -> amp_hf.PrunePlan:
    widths = amp_hf.get_adapter(model).widths(model)
    generator = torch.Generator().manual_seed(7)
    keep = [(max(1, w // 3), w, 1)[i % 3] for i, w in enumerate(widths)]
    kept = [torch.randperm(w, generator=generator)[:k].tolist() for w, k in zip(widths, keep)]
    return amp_hf.PrunePlan(widths, kept, method="random")


def slicing_digests(name: str) -> dict[str, str]:
    model = build(name)
    pruned = amp_hf.slice_model(model, pinned_plan(model))
    state = pruned.state_dict()
    with torch.no_grad():
        outputs = pruned(**sample_inputs(model))
    tensors = [v for v in outputs.values() if isinstance(v, torch.Tensor)]
    return {"state": digest(*(state[k] for k in sorted(state))), "outputs": digest(*tensors)}


def criterion_batches(model, count: int) -> list[dict]:
    adapter = amp_hf.get_adapter(model)
    batches = []
    for seed in range(count):
        inputs = sample_inputs(model, batch_size=6, seed=seed + 10)
        batches.append({"pixel_values": inputs["pixel_values"]} if adapter.modality == "image" else inputs)
    return batches


def method_digests(name: str) -> dict[str, str]:
    """Taylor/DGMR/magnitude scores, cost model, a cached-input adaptive search and a reconstruction."""
    model = build(name)
    criterion = build_criterion(CriterionConfig())
    batches = criterion_batches(model, 4)
    taylor = taylor_scores(model, batches[:2], criterion)
    dgmr = dgmr_scores(model, width=8)
    magnitude = magnitude_scores(model)
    params, flops = tower_cost(model, "params"), tower_cost(model, "flops")
    cost = torch.tensor([params.base_total, *params.per_neuron, flops.base_total, *flops.per_neuron],
                        dtype=torch.float64)
    evaluator = CriterionEvaluator(model, criterion, batches[2:])
    result = adaptive_search(model, taylor.abs, evaluator, delta_e=0.05, steps=3, progress=False)
    search = torch.tensor([v["entropy"] for v in result.log], dtype=torch.float64)
    kept = torch.tensor([i for k in result.kept for i in k])
    plan = pinned_plan(model)
    pruned, _ = reconstruct(model, plan, batches, ReconstructConfig(enabled=True, end_to_end_check=False))
    state = pruned.state_dict()
    return {
        "taylor": digest(*taylor.abs, *taylor.signed),
        "dgmr": digest(*dgmr),
        "magnitude": digest(*magnitude),
        "cost": digest(cost),
        "search": digest(search, kept),
        "reconstruct": digest(*(state[k] for k in sorted(state))),
    }


METHOD_FAMILIES = ["bert", "clip", "dinov2_swiglu", "siglip_vision", "vit"]

PINNED_SLICING = {
    "bert": {"outputs": "5f0e0fe5cf99a0fc", "state": "a88d93b8604677c7"},
    "clip": {"outputs": "1be4d21144d5f95c", "state": "d3d997f8e3fd126a"},
    "clip_vision": {"outputs": "be70cd6e89d54670", "state": "3f6dbf0919a2d62f"},
    "clip_vision_proj": {"outputs": "ca241031e9944761", "state": "a1c64edf73d0ed12"},
    "dinov2": {"outputs": "9aa8dd1857f9d40e", "state": "7ddee71c1a774432"},
    "dinov2_swiglu": {"outputs": "b103f2a14cfd8fb9", "state": "b589c9ed9548d7fe"},
    "dinov2_swiglu_cls": {"outputs": "2557f1a6e74f74ca", "state": "a4dba38e31fa9230"},
    "siglip": {"outputs": "c3064d584e61c4ad", "state": "ffc6ac9ef4730d4b"},
    "siglip_vision": {"outputs": "5083f0726dd57cca", "state": "7d6179b3675aa08d"},
    "vit": {"outputs": "d9999c3721b963c0", "state": "0e0e832e58aac42e"},
    "vit_cls": {"outputs": "46eadd63f0000963", "state": "cb5cdd8466f0b5fd"},
}

PINNED_METHODS = {
    "bert": {
        "cost": "b393c3cbf0466d11",
        "dgmr": "3503fd96195bbe54",
        "magnitude": "53773e4023ebfccb",
        "reconstruct": "ffe5365b0f55c526",
        "search": "f11d98927029e569",
        "taylor": "6d5e2e61e3800d39",
    },
    "clip": {
        "cost": "dd37a37e63bf4e02",
        "dgmr": "3d1bc853f227aff6",
        "magnitude": "cacdb4df24a7f68e",
        "reconstruct": "c71317935be415f6",
        "search": "47130f9a6ca7571c",
        "taylor": "c7f9958a6c74c743",
    },
    "dinov2_swiglu": {
        "cost": "c5907db89166dd9b",
        "dgmr": "fdac24db892a62b5",
        "magnitude": "7b737a401493ecc3",
        "reconstruct": "931076af8dafdc28",
        "search": "29999e81490aebe5",
        "taylor": "2a240118bdddade5",
    },
    "siglip_vision": {
        "cost": "9713704206734545",
        "dgmr": "4e32158ce72c37c4",
        "magnitude": "7c1a19b7dbfab537",
        "reconstruct": "f932ed5b9304228d",
        "search": "11e6a54b75d6491a",
        "taylor": "d86539a9178069d6",
    },
    "vit": {
        "cost": "f9bcc7c582ccd4fe",
        "dgmr": "c0848fd5c670aaa6",
        "magnitude": "b3b5a2d891fcfe88",
        "reconstruct": "7b623c5ee2029d55",
        "search": "c6511f01ac7260c8",
        "taylor": "bc653ceb42fed7b2",
    },
}


@pytest.mark.parametrize("name", sorted(PINNED_SLICING))
def test_slicing_is_bit_identical_to_the_pinned_checksums(name):
    assert slicing_digests(name) == PINNED_SLICING[name]


@pytest.mark.parametrize("name", METHOD_FAMILIES)
def test_scores_search_and_reconstruction_are_bit_identical_to_the_pinned_checksums(name):
    assert method_digests(name) == PINNED_METHODS[name]


if __name__ == "__main__":
    import pprint

    torch.set_num_threads(1)

    pprint.pprint({name: slicing_digests(name) for name in PINNED_SLICING}, width=120)
    pprint.pprint({name: method_digests(name) for name in METHOD_FAMILIES}, width=120)
