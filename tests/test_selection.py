"""Selection: the entropy criterion, Taylor scores, fast vs oracle search, budget mode, DGMR, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracle_search import oracle_search
from tiny_models import build

import amp_hf
from amp_hf.selection import (
    CriterionConfig,
    CriterionEvaluator,
    accepts,
    adaptive_search,
    budget_search,
    build_criterion,
    dgmr_scores,
    global_widths,
    gram_schmidt_order,
    magnitude_scores,
    random_scores,
    similarity_entropy,
    taylor_scores,
    tower_cost,
    uniform_widths,
)


def image_batches(model, count=3, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = amp_hf.get_adapter(model).backbone(model).config
    return [{"pixel_values": torch.randn(size, 3, config.image_size, config.image_size, generator=generator)}
            for _ in range(count)]


def entropy_criterion(temp_inv=15.0):
    return build_criterion(CriterionConfig(name="entropy", temp_inv=temp_inv))


def test_entropy_matches_a_hand_computation():
    z = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    logits = zn @ zn.T * 15.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = float(np.mean(-(p * np.log(p)).sum(1)))
    value = similarity_entropy(torch.tensor(z, dtype=torch.float32), temperature=1 / 15)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # bounded by log B: identical embeddings give the uniform distribution
    assert similarity_entropy(torch.ones(4, 3), 0.1).item() == pytest.approx(math.log(4), rel=1e-6)


def test_taylor_scores_agree_with_the_loss_change_of_zeroing_a_neuron():
    """First-order check: zeroing neuron j over the batch changes E by about -Σ_n c_nj.

    The signed score is the per-sample mean of c_nj (gradients of the batch-mean criterion), so the predicted
    change is -(signed score) x (number of samples)."""
    torch.manual_seed(0)
    model = build("vit").double()
    batches = image_batches(model, count=1, size=16)
    criterion = entropy_criterion()
    adapter = amp_hf.get_adapter(model)
    scores = taylor_scores(model, [{k: v.double() for k, v in batches[0].items()}], criterion)
    layer_index = 1
    layer = adapter.layers(model)[layer_index]
    out_linear = layer.mlp.fc2
    batch = {k: v.double() for k, v in batches[0].items()}
    with torch.no_grad():
        stack = amp_hf.resolve(model, adapter)
        base = criterion(stack, batch).item()
        changes = []
        for neuron in range(out_linear.in_features):
            mask = torch.ones(out_linear.in_features, dtype=torch.float64)
            mask[neuron] = 0
            handle = out_linear.register_forward_pre_hook(lambda m, a, mask=mask: (a[0] * mask,))
            changes.append(criterion(stack, batch).item() - base)
            handle.remove()
    predicted = -scores.signed[layer_index].numpy() * scores.num_samples
    actual = np.array(changes)
    assert np.corrcoef(predicted, actual)[0, 1] > 0.95
    assert np.abs(predicted - actual).max() < 0.2 * np.abs(actual).max()
    assert torch.all(scores.abs[layer_index] >= scores.signed[layer_index].abs() - 1e-12)
    assert scores.num_samples == 16


def test_scoring_leaves_parameters_without_gradients():
    model = build("vit")
    taylor_scores(model, image_batches(model, count=1), entropy_criterion())
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # restored


@pytest.mark.parametrize("name, delta_e, round_to, acceptance", [
    ("vit", 0.05, 1, "rise"), ("dinov2_swiglu", 0.02, 8, "rise"), ("bert", 0.01, 1, "rise"), ("vit", 0.02, 1, "change"),
])
def test_fast_search_chooses_the_oracle_widths(name, delta_e, round_to, acceptance):
    model = build(name)
    if name == "bert":
        generator = torch.Generator().manual_seed(0)
        batches = [{"input_ids": torch.randint(1, 99, (8, 10), generator=generator),
                    "attention_mask": torch.ones(8, 10, dtype=torch.long)} for _ in range(2)]
    else:
        batches = image_batches(model)
    criterion = entropy_criterion()
    scores = taylor_scores(model, batches, criterion).abs
    evaluator = CriterionEvaluator(model, criterion, batches)
    result = adaptive_search(model, scores, evaluator, delta_e, steps=6, round_to=round_to, progress=False,
                             acceptance=acceptance)
    assert evaluator.layer_inputs is not None  # the cached-suffix path really ran
    expected = oracle_search(model, scores, batches, criterion, delta_e, round_to=round_to, acceptance=acceptance)
    assert result.widths == expected
    assert result.widths != amp_hf.get_adapter(model).widths(model)  # something was pruned
    assert all(w % round_to == 0 or w == f for w, f in zip(result.widths, amp_hf.get_adapter(model).widths(model)))
    # the model is left as it was
    assert amp_hf.get_adapter(model).widths(model) == [len(s) for s in scores]
    assert [len(k) for k in result.kept] == result.widths


def test_acceptance_rules():
    assert accepts(0.9, 1.0, 0.01) and accepts(1.005, 1.0, 0.01) and not accepts(1.02, 1.0, 0.01)
    assert not accepts(0.9, 1.0, 0.01, "change") and accepts(0.995, 1.0, 0.01, "change")
    with pytest.raises(ValueError, match="rise"):
        accepts(1.0, 1.0, 0.01, "fall")


def test_search_is_deterministic():
    runs = []
    for _ in range(2):
        model = build("vit")
        batches = image_batches(model)
        criterion = entropy_criterion()
        scores = taylor_scores(model, batches, criterion).abs
        runs.append(adaptive_search(model, scores, CriterionEvaluator(model, criterion, batches), 0.05,
                                    progress=False).widths)
    assert runs[0] == runs[1]


def scored_tiny_vit():
    """A tiny ViT with its entropy Taylor scores on one batch: (model, batches, criterion, scores, cost)."""
    model = build("vit")
    batches = image_batches(model, count=1)
    criterion = entropy_criterion()
    return model, batches, criterion, taylor_scores(model, batches, criterion).abs, tower_cost(model, "params")


def test_budget_mode_lands_within_two_percent():
    model, batches, criterion, scores, cost = scored_tiny_vit()
    result, achieved = budget_search(model, scores, CriterionEvaluator(model, criterion, batches), 0.3, cost)
    assert abs(achieved - 0.3) <= 0.02
    pruned = amp_hf.slice_model(model, amp_hf.PrunePlan(cost.full_widths, result.kept))
    measured = 1 - amp_hf.count_parameters(pruned) / amp_hf.count_parameters(model)
    assert measured == pytest.approx(achieved, abs=1e-9)  # the cost model is exact for parameters


def test_budget_mode_reuses_evaluations_without_changing_the_answer():
    model, batches, criterion, scores, cost = scored_tiny_vit()
    evaluator = CriterionEvaluator(model, criterion, batches)
    result, _ = budget_search(model, scores, evaluator, 0.3, cost, tolerance=0.005)
    searches = sum(1 for entry in result.log if "delta_e" in entry and "layer" not in entry)
    assert searches > 1  # the bisection really ran several searches
    layers = len(cost.full_widths)
    assert evaluator.evaluations < searches * (1 + 6 * layers)  # states seen before were not re-evaluated
    fresh = adaptive_search(model, scores, CriterionEvaluator(model, criterion, batches), result.delta_e,
                            progress=False)
    assert fresh.widths == result.widths and fresh.final_entropy == result.final_entropy


def test_uniform_and_global_allocations_meet_the_budget():
    model = build("vit")
    cost = tower_cost(model, "params")
    uniform = uniform_widths(cost, 0.2)
    assert len(set(uniform)) == 1 and abs(cost.reduction(uniform) - 0.2) < 0.01
    scores = magnitude_scores(model)
    widths = global_widths(scores, cost, 0.2)
    assert abs(cost.reduction(widths) - 0.2) < 0.01
    with pytest.raises(ValueError, match="lower it"):
        uniform_widths(cost, 0.99)
    with pytest.raises(ValueError, match="target_metric=mlp_params"):
        global_widths(scores, cost, 0.99)  # a target the MLPs cannot reach is an error, not width 1 everywhere
    mlp = tower_cost(model, "mlp_params")
    half = [w // 2 for w in mlp.full_widths]
    pruned = amp_hf.slice_model(model, amp_hf.PrunePlan(mlp.full_widths, [list(range(w)) for w in half]))
    measured = 1 - amp_hf.model_stats(pruned)["params_mlp"] / amp_hf.model_stats(model)["params_mlp"]
    assert mlp.reduction(half) == pytest.approx(measured, abs=1e-12)


def test_flops_cost_model_matches_the_flop_counter():
    model = build("vit")
    cost = tower_cost(model, "flops")
    widths = [10, 64, 3]
    plan = amp_hf.PrunePlan(cost.full_widths, [list(range(w)) for w in widths])
    pruned = amp_hf.slice_model(model, plan)
    assert amp_hf.model_stats(pruned)["flops_tower"] == pytest.approx(cost.total(widths), rel=1e-12)


def test_gram_schmidt_picks_the_expected_neurons():
    rows = torch.tensor([
        [1.0, 0.0, 0.0],   # 0: e1
        [3.0, 0.0, 0.0],   # 1: 3 e1 (largest norm: first pick)
        [2.0, 2.0, 0.0],   # 2: residual after e1 is 2 e2 (second pick)
        [0.0, 0.0, 1.5],   # 3: e3, residual 1.5 (third pick)
        [0.0, 1.0, 0.1],   # 4: nearly spanned once 1..3 are in
    ])
    assert gram_schmidt_order(rows, picks_per_round=3, total=3) == [1, 2, 3]
    # second round restarts from the original rows of neurons 0 and 4: ||row4|| > ||row0||
    assert gram_schmidt_order(rows, picks_per_round=3, total=5) == [1, 2, 3, 4, 0]


def test_gram_schmidt_survives_rank_deficient_rows():
    rows = torch.zeros(6, 4)
    rows[:, 0] = torch.arange(1, 7, dtype=torch.float32)  # rank 1
    order = gram_schmidt_order(rows, picks_per_round=4, total=6)
    assert sorted(order) == list(range(6)) and order[0] == 5


def test_dgmr_on_swiglu_uses_gate_and_up_rows():
    model = build("dinov2_swiglu")
    scores = dgmr_scores(model)
    hidden = model.config.hidden_size
    assert all(int((s > 0).sum()) == hidden for s in scores)  # r = 1: d neurons ordered per layer
    layer = amp_hf.get_adapter(model).layers(model)[0]
    joint = torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight], dim=1).double()
    assert int(scores[0].argmax()) == int(joint.norm(dim=1).argmax())


def test_magnitude_and_random_baselines():
    model = build("vit")
    layer = amp_hf.get_adapter(model).layers(model)[0]
    expected = layer.mlp.fc1.weight.double().norm(dim=1) * layer.mlp.fc2.weight.double().norm(dim=0)
    torch.testing.assert_close(magnitude_scores(model)[0], expected.detach())
    first, second = random_scores(model, seed=1), random_scores(model, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # exact: torch.rand draws the same bits
    assert not torch.equal(first[0], random_scores(model, seed=2)[0])
