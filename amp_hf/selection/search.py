"""Width allocation: AMP's adaptive binary search, its budget mode, and uniform / global baselines.

All of them turn per-layer neuron scores into a PrunePlan; none touches slicing or saving.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..families import get_adapter
from ..models.amp_layer_widths import find_mlp_linears
from ..plan import PrunePlan, top_indices

logger = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    allocation: Literal["adaptive", "budget", "uniform", "global"] = "adaptive"
    delta_e: float = 0.01  # entropy rise allowed per layer (nats, or a fraction of log B when normalized)
    delta_e_mode: Literal["absolute", "normalized"] = "absolute"
    # rise: AMP's rule, accept when E - E_ref <= ΔE (any decrease passes); change: accept when |E - E_ref| <= ΔE,
    # for models whose in-batch entropy falls as they are pruned (measured on the Fashion-MNIST reference ViT:
    # the rise rule then cuts whole layers to H/64 at a ΔE of 1e-4)
    acceptance: Literal["rise", "change"] = "rise"
    steps: int = 6  # halvings per layer: width resolution H / 2**steps
    target_reduction: float | None = None  # budget/uniform/global: fraction of the tower's params (or FLOPs) removed
    target_metric: Literal["params", "flops", "mlp_params"] = "params"  # what target_reduction is a fraction of
    tolerance: float = 0.02  # budget mode: |achieved - target| allowed
    max_budget_iterations: int = 14
    round_to: int = 1  # every kept width a multiple of this (8/64 suit GPU GEMMs and TensorRT)
    cache_gb: float = 4.0  # memory for cached layer inputs (fast search); above it, full passes

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("search.steps must be >= 1 (AMP uses 6)")
        if self.round_to < 1:
            raise ValueError("search.round_to must be >= 1")
        if self.delta_e < 0:
            raise ValueError("search.delta_e must be >= 0")
        if self.allocation != "adaptive":
            if self.target_reduction is None or not 0 < self.target_reduction < 1:
                raise ValueError(
                    f"search.allocation={self.allocation} needs search.target_reduction in (0, 1), "
                    f"e.g. search.target_reduction=0.4; got {self.target_reduction}"
                )


def round_width(width: int, full: int, round_to: int) -> int:
    """Round up to a multiple of ``round_to`` (at least one multiple), never above the full width."""
    if round_to <= 1:
        return max(1, min(width, full))
    return min(full, max(round_to, math.ceil(width / round_to) * round_to))


# -- cost model: what one hidden neuron costs in parameters and FLOPs ---------------------------------------


@dataclass
class TowerCost:
    """Linear cost model of the pruned tower: total(widths) = fixed + Σ_l per_neuron[l] · width_l."""

    base_total: float
    full_widths: list[int]
    per_neuron: list[float]

    def total(self, widths) -> float:
        return self.base_total - sum(p * (f - w) for p, f, w in zip(self.per_neuron, self.full_widths, widths))

    def reduction(self, widths) -> float:
        return 1.0 - self.total(widths) / self.base_total


def tower_cost(model, metric: str = "params") -> TowerCost:
    """Cost model for ``metric``: the tower's parameters, its FLOPs, or only its MLP parameters."""
    from ..accounting import count_flops, count_parameters, mlp_parameters

    adapter = get_adapter(model)
    backbone = adapter.backbone(model)
    layers = adapter.layers(model)
    per_neuron = []
    for layer in layers:
        in_names, out_name = find_mlp_linears(layer)
        params = sum(layer.get_submodule(n).in_features + (layer.get_submodule(n).bias is not None) for n in in_names)
        params += layer.get_submodule(out_name).out_features
        per_neuron.append(float(params))
    widths = adapter.widths(model)
    if metric == "params":
        return TowerCost(float(count_parameters(backbone)), widths, per_neuron)
    if metric == "mlp_params":
        return TowerCost(float(mlp_parameters(model)), widths, per_neuron)
    inputs = adapter.dummy_inputs(model)
    tokens = _tokens_per_sample(model, inputs)
    # a matmul costs 2 FLOPs per multiply-add; biases are not counted by torch's flop counter
    flops_per_neuron = [
        2.0 * tokens * sum(layer.get_submodule(n).in_features for n in find_mlp_linears(layer)[0])
        + 2.0 * tokens * layer.get_submodule(find_mlp_linears(layer)[1]).out_features
        for layer in layers
    ]
    return TowerCost(float(count_flops(backbone, inputs)), widths, flops_per_neuron)


@torch.no_grad()
def _tokens_per_sample(model, inputs) -> int:
    adapter = get_adapter(model)
    seen = []
    handle = adapter.layers(model)[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    try:
        adapter.embed(model, inputs)
    finally:
        handle.remove()
    return int(seen[0])


# -- installing candidate widths --------------------------------------------------------------------------


class LayerWidthSwapper:
    """Installs top-m sliced MLP linears into one layer, from a saved copy of its full weights."""

    def __init__(self, model, scores: list[torch.Tensor]):
        self.adapter = get_adapter(model)
        self.layers = self.adapter.layers(model)
        self.scores = scores
        self.full = [self._linears(layer) for layer in self.layers]
        self.orders = [torch.sort(-torch.as_tensor(s, dtype=torch.float64), stable=True).indices for s in scores]

    @staticmethod
    def _linears(layer) -> dict[str, nn.Linear]:
        in_names, out_name = find_mlp_linears(layer)
        return {name: layer.get_submodule(name) for name in (*in_names, out_name)}

    def kept(self, layer_index: int, width: int) -> list[int]:
        return sorted(self.orders[layer_index][:width].tolist())

    def install(self, layer_index: int, width: int) -> None:
        layer = self.layers[layer_index]
        in_names, out_name = find_mlp_linears(layer)
        index = torch.as_tensor(self.kept(layer_index, width))
        for name, full in self.full[layer_index].items():
            rows = name != out_name
            new = nn.Linear(
                full.in_features if rows else width,
                width if rows else full.out_features,
                bias=full.bias is not None,
                device=full.weight.device,
                dtype=full.weight.dtype,
            )
            new.weight.data = full.weight.data.index_select(0 if rows else 1, index.to(full.weight.device))
            if full.bias is not None:
                new.bias.data = full.bias.data.index_select(0, index.to(full.bias.device)) if rows else full.bias.data
            parent, _, attr = name.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, attr, new)

    def restore(self) -> None:
        for layer, linears in zip(self.layers, self.full):
            for name, module in linears.items():
                parent, _, attr = name.rpartition(".")
                setattr(layer.get_submodule(parent) if parent else layer, attr, module)


@contextlib.contextmanager
def candidate_widths(model, scores):
    """Yield a swapper; the model's original MLPs are put back on exit whatever happens."""
    swapper = LayerWidthSwapper(model, scores)
    try:
        yield swapper
    finally:
        swapper.restore()


# -- AMP adaptive search ------------------------------------------------------------------------------------


@dataclass
class SearchResult:
    widths: list[int]
    reference_entropy: float
    final_entropy: float
    delta_e: float  # absolute, in nats
    kept: list[list[int]] = field(default_factory=list)
    log: list[dict] = field(default_factory=list)
    evaluations: int = 0


def accepts(value: float, reference: float, delta_e: float, acceptance: str = "rise") -> bool:
    """Whether a candidate's criterion value passes against the reference (``SearchConfig.acceptance``)."""
    if acceptance == "rise":
        return value - reference <= delta_e
    if acceptance == "change":
        return abs(value - reference) <= delta_e
    raise ValueError(f"search.acceptance must be 'rise' (AMP) or 'change'; got {acceptance!r}")


def adaptive_search(model, scores, evaluator, delta_e: float, steps: int = 6, round_to: int = 1,
                    progress: bool = True, memo: dict | None = None, acceptance: str = "rise") -> SearchResult:
    """AMP §1.5: layers last -> first, ``steps`` halvings each; a candidate is accepted when the criterion
    rises by at most ``delta_e`` over the chained reference (the last accepted value); with
    ``acceptance="change"``, when it moves by at most ``delta_e`` either way.

    ``memo``: criterion values by network state, shared by searches over the same model, scores and batches
    (budget mode's ΔE bisection): a candidate's value depends only on the searched layer, its width and the
    widths already chosen above it, so a state another search has evaluated is not evaluated again.
    """
    widths = get_adapter(model).widths(model)
    fast = evaluator.layer_inputs is not None or evaluator.cache_inputs()
    memo = {} if memo is None else memo

    def evaluate(state: tuple, start: int) -> float:
        if state not in memo:
            memo[state] = evaluator.evaluate(start)
        return memo[state]

    reference = evaluate((), 0)
    first_reference = reference
    log = []
    chosen = list(widths)
    with candidate_widths(model, scores) as swapper:
        for layer in tqdm(range(len(widths) - 1, -1, -1), desc="AMP search", disable=not progress):
            full = widths[layer]
            lo, hi, best, best_value = 0, full, full, None
            for step in range(steps):
                width = round_width((lo + hi) // 2, full, round_to)
                swapper.install(layer, width)
                value = evaluate((layer, width, *chosen[layer + 1:]), layer if fast else 0)
                accepted = accepts(value, reference, delta_e, acceptance)
                log.append({"layer": layer, "step": step, "width": width, "entropy": value, "accepted": accepted})
                if accepted:
                    hi, best, best_value = width, width, value
                else:
                    lo = width
            swapper.install(layer, best)
            chosen[layer] = best
            if best_value is not None:
                reference = best_value
        kept = [swapper.kept(i, w) for i, w in enumerate(chosen)]
    return SearchResult(chosen, first_reference, reference, delta_e, kept, log, evaluator.evaluations)


def budget_search(model, scores, evaluator, target: float, cost: TowerCost, steps: int = 6, round_to: int = 1,
                  tolerance: float = 0.02, max_iterations: int = 14, upper: float | None = None,
                  share_evaluations: bool = True, acceptance: str = "rise", progress: bool = True):
    """Find the ΔE whose adaptive search removes ``target`` of the tower's cost (within ``tolerance``).

    Bisection on log ΔE; the achieved reduction grows with ΔE. Returns the closest result if the tolerance
    cannot be met at the width resolution (a warning says so). ``share_evaluations``: the searches share one
    memo of evaluated states (same answer, fewer passes; off only to measure the saving).
    """
    if not evaluator.layer_inputs:
        evaluator.cache_inputs()
    low, high = 1e-7, upper if upper is not None else 1.0
    best = None
    history = []
    memo: dict = {}  # the searches at successive ΔE walk through many of the same states
    bar = tqdm(total=max_iterations, desc=f"AMP budget search ({target:.0%})", unit="search", disable=not progress)
    for iteration in range(max_iterations):
        delta_e = math.sqrt(low * high) if iteration else high
        result = adaptive_search(model, scores, evaluator, delta_e, steps, round_to, progress=False,
                                 memo=memo if share_evaluations else None, acceptance=acceptance)
        achieved = cost.reduction(result.widths)
        history.append({"delta_e": delta_e, "reduction": achieved, "widths": result.widths})
        logger.info("budget search: ΔE=%.3g removes %.1f%% (target %.1f%%)", delta_e, 100 * achieved, 100 * target)
        bar.update()
        bar.set_postfix_str(f"ΔE={delta_e:.3g} removes {achieved:.1%}")
        if best is None or abs(achieved - target) < abs(best[1] - target):
            best = (result, achieved)
        if abs(achieved - target) <= tolerance:
            break
        if iteration == 0 and achieved < target:
            # even the loosest ΔE does not reach the target: widen once, then give up
            high *= 100
            continue
        if achieved < target:
            low = delta_e
        else:
            high = delta_e
    bar.close()
    result, achieved = best
    if abs(achieved - target) > tolerance:
        logger.warning(
            "budget search reached %.1f%% for a %.1f%% target (tolerance %.1f%%); width resolution H/2^%d limits it",
            100 * achieved, 100 * target, 100 * tolerance, steps,
        )
    result.log = history + result.log
    return result, achieved


# -- baselines -----------------------------------------------------------------------------------------------


def _check_reachable(cost: TowerCost, target: float) -> float:
    """The fraction of the cost the MLPs hold; a target at or above it cannot be met by MLP pruning."""
    removable = sum(p * f for p, f in zip(cost.per_neuron, cost.full_widths)) / cost.base_total
    if target >= removable:
        raise ValueError(
            f"target_reduction {target:.2f} is more than the MLPs hold ({removable:.2f} of the tower's cost): "
            "lower it, or set search.target_metric=mlp_params to count MLP parameters only"
        )
    return removable


def uniform_widths(cost: TowerCost, target: float, round_to: int = 1) -> list[int]:
    """Same keep-ratio in every layer, chosen so the tower loses ``target`` of its cost."""
    removable = _check_reachable(cost, target)
    keep = 1.0 - target / removable
    return [round_width(round(keep * f), f, round_to) for f in cost.full_widths]


def global_widths(scores: list[torch.Tensor], cost: TowerCost, target: float, round_to: int = 1) -> list[int]:
    """One ranking across layers (scores divided by their layer's mean), cut where the budget is met."""
    _check_reachable(cost, target)
    normalised = [torch.as_tensor(s, dtype=torch.float64) / torch.as_tensor(s, dtype=torch.float64).mean().clamp_min(1e-30)
                  for s in scores]
    entries = sorted(
        ((float(v), layer, rank) for layer, s in enumerate(normalised) for rank, v in enumerate(torch.sort(s, descending=True).values)),
        key=lambda entry: -entry[0],
    )
    widths = [0] * len(scores)
    goal = cost.base_total * (1 - target) - (cost.base_total - sum(p * f for p, f in zip(cost.per_neuron, cost.full_widths)))
    spent = 0.0
    for _, layer, _ in entries:
        if spent >= goal:
            break
        widths[layer] += 1
        spent += cost.per_neuron[layer]
    return [round_width(max(1, w), f, round_to) for w, f in zip(widths, cost.full_widths)]


def plan_from_widths(scores, widths, method: str, details: dict) -> PrunePlan:
    return PrunePlan([len(s) for s in scores], [top_indices(s, w) for s, w in zip(scores, widths)], method, details)
