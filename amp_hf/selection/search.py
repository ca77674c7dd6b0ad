"""Width allocation: AMP's adaptive binary search and its budget mode (the cost model is ``cost``, the uniform /
global baselines ``baselines``).

All of them turn per-layer neuron scores into a PrunePlan; none touches slicing or saving.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..families import MlpStack, resolve
from .config import SearchConfig  # noqa: F401 (amp_hf.selection.search.SearchConfig)
from .cost import TowerCost, check_reachable, round_width

logger = logging.getLogger(__name__)


# -- installing candidate widths --------------------------------------------------------------------------


class LayerWidthSwapper:
    """Installs top-m sliced MLP modules into one layer, from a saved copy of its full modules."""

    def __init__(self, model: nn.Module | MlpStack, scores: list[torch.Tensor]):
        self.stack = resolve(model)
        self.mlps = self.stack.mlps()
        self.scores = scores
        self.full = [neuron_map.modules(layer) for layer, neuron_map in self.mlps]
        self.orders = [torch.sort(-torch.as_tensor(s, dtype=torch.float64), stable=True).indices for s in scores]

    def kept(self, layer_index: int, width: int) -> list[int]:
        return sorted(self.orders[layer_index][:width].tolist())

    def full_output(self, layer_index: int) -> nn.Linear:
        """The layer's original (full-width) MLP output projection."""
        return self.full[layer_index][self.mlps[layer_index][1].columns]

    def install(self, layer_index: int, width: int, output: tuple | None = None) -> None:
        """Install the top-``width`` neurons; ``output``: (weight, bias) replacing the sliced output projection's
        (a refit), in the kept neurons' ascending order."""
        layer, neuron_map = self.mlps[layer_index]
        full = self.full[layer_index]
        device = next(iter(full.values())).weight.device
        neuron_map.install(layer, full, torch.as_tensor(self.kept(layer_index, width)).to(device))
        if output is not None:
            projection = neuron_map.output(layer)
            projection.weight.data = output[0]
            if output[1] is not None:
                projection.bias.data = output[1]  # a new tensor: the full layer's bias is shared, never written

    def restore(self) -> None:
        for (layer, neuron_map), modules in zip(self.mlps, self.full):
            neuron_map.restore(layer, modules)


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
    # search.reconstruct: the refit output projections (weight, bias) of the layers that hold one, and every
    # layer's refit report (status, damping, held-out errors)
    projections: dict[int, tuple] = field(default_factory=dict)
    refit: list[dict] = field(default_factory=list)


def accepts(value: float, reference: float, delta_e: float, acceptance: str = "rise") -> bool:
    """Whether a candidate's criterion value passes against the reference (``SearchConfig.acceptance``)."""
    if acceptance == "rise":
        return value - reference <= delta_e
    if acceptance == "change":
        return abs(value - reference) <= delta_e
    raise ValueError(f"search.acceptance must be 'rise' (AMP) or 'change'; got {acceptance!r}")


def adaptive_search(model: nn.Module | MlpStack, scores, evaluator, delta_e: float, steps: int = 6, round_to: int = 1,
                    progress: bool = True, memo: dict | None = None, acceptance: str = "rise",
                    refit=None) -> SearchResult:
    """AMP's adaptive search (arXiv 2603.08100): layers last -> first, ``steps`` halvings each; a candidate is accepted when the criterion
    rises by at most ``delta_e`` over the chained reference (the last accepted value); with
    ``acceptance="change"``, when it moves by at most ``delta_e`` either way.

    ``memo``: criterion values by network state, shared by searches over the same model, scores and batches
    (budget mode's ΔE bisection): a candidate's value depends only on the searched layer, its width and the
    widths already chosen above it, so a state another search has evaluated is not evaluated again.

    ``refit`` (``amp_hf.reconstruct.SearchRefit``, ``search.reconstruct``): every candidate is evaluated with
    its output projection refit in closed form; with the refit's end-to-end guard, the accepted width is also
    evaluated plainly sliced and keeps whichever is closer to the reference. The result's last accepted value
    is then the criterion of exactly the model the result describes (widths, ``projections``).
    """
    stack = resolve(model)
    widths = stack.widths()
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
    # the memo's state of a layer: its width, plus (with refit) whether it holds the refit or the plain slice
    states: list = list(widths) if refit is None else [(w, "sliced") for w in widths]
    projections: dict[int, tuple] = {}
    reports: list[dict] = [{} for _ in widths]
    with candidate_widths(stack, scores) as swapper:

        def install(layer: int, width: int, version: str = "refit") -> tuple:
            """Install a candidate; returns its memo state (and the projection it holds, if refit)."""
            projection = None
            if refit is not None and version == "refit":
                projection = refit.projection(layer, swapper.kept(layer, width), swapper.full_output(layer))
            swapper.install(layer, width, projection)
            if refit is None:
                return width, None
            return (width, "refit" if projection is not None else "sliced"), projection

        for layer in tqdm(range(len(widths) - 1, -1, -1), desc="AMP search", disable=not progress):
            if refit is not None:
                refit.prepare(layer)  # statistics of this layer's inputs: everything up to it is still original
            full = widths[layer]
            lo, hi, best, best_value = 0, full, full, None
            for step in range(steps):
                width = round_width((lo + hi) // 2, full, round_to)
                state, projection = install(layer, width)
                value = evaluate((layer, state, *states[layer + 1:]), layer if fast else 0)
                accepted = accepts(value, reference, delta_e, acceptance)
                entry = {"layer": layer, "step": step, "width": width, "entropy": value, "accepted": accepted}
                if refit is not None:
                    entry["refit"] = projection is not None
                log.append(entry)
                if accepted:
                    hi, best, best_value = width, width, value
                else:
                    lo = width
            state, projection = install(layer, best)
            if refit is not None and projection is not None and best_value is not None and refit.guard:
                sliced_state, _ = install(layer, best, "sliced")
                value = evaluate((layer, sliced_state, *states[layer + 1:]), layer if fast else 0)
                if accepts(value, reference, delta_e, acceptance) and refit.prefers_sliced(value, best_value, reference):
                    state, projection, best_value = sliced_state, None, value
                else:
                    install(layer, best)
                log.append({"layer": layer, "step": "guard", "width": best, "entropy": value,
                            "kept": "refit" if projection is not None else "sliced"})
            chosen[layer], states[layer] = best, state
            if projection is not None:
                projections[layer] = projection
            if refit is not None:
                reports[layer] = refit.report(layer, swapper.kept(layer, best), projection is not None)
            if best_value is not None:
                reference = best_value
        kept = [swapper.kept(i, w) for i, w in enumerate(chosen)]
    return SearchResult(chosen, first_reference, reference, delta_e, kept, log, evaluator.evaluations,
                        projections, reports if refit is not None else [])


def budget_search(model, scores, evaluator, target: float, cost: TowerCost, steps: int = 6, round_to: int = 1,
                  tolerance: float = 0.02, max_iterations: int = 14, upper: float | None = None,
                  share_evaluations: bool = True, acceptance: str = "rise", progress: bool = True, refit=None):
    """Find the ΔE whose adaptive search removes ``target`` of the tower's cost (within ``tolerance``).

    Bisection on log ΔE; the achieved reduction grows with ΔE. Returns the closest result if the tolerance
    cannot be met at the width resolution (a warning says so). ``share_evaluations``: the searches share one
    memo of evaluated states (same answer, fewer passes; off only to measure the saving). ``refit``: as in
    ``adaptive_search`` (its statistics and solves are shared by the searches too).
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
                                 memo=memo if share_evaluations else None, acceptance=acceptance, refit=refit)
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


def smallest_search_widths(full_widths, steps: int, round_to: int = 1) -> list[int]:
    """The widths the adaptive search reaches when every candidate is accepted (its lower limit)."""
    smallest = []
    for full in full_widths:
        hi = full
        for _ in range(steps):
            hi = round_width(hi // 2, full, round_to)
        smallest.append(hi)
    return smallest


def check_budget_reachable(cost: TowerCost, target: float, tolerance: float, steps: int, round_to: int = 1) -> None:
    """Budget mode, before any scoring: refuse a target the search cannot come within ``tolerance`` of."""
    removable = check_reachable(cost, target)
    most = cost.reduction(smallest_search_widths(cost.full_widths, steps, round_to))
    if target - tolerance > most:
        raise ConfigError(
            f"search.target_reduction={target:g} cannot be reached: even at the search's smallest widths "
            f"(H/2^{steps}) pruning removes {most:.1%} of the cost (the MLPs hold {removable:.1%}); lower the target, "
            "raise search.steps, or set search.target_metric=mlp_params"
        )
