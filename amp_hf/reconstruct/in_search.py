"""The refit inside AMP's search (``search.reconstruct``): every candidate width of the searched layer is
measured with its output projection refit in closed form; the chosen projections are then put into the
sliced model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..families import MlpStack, resolve
from ..selection import CriterionEvaluator
from .config import ReconstructConfig
from .gram import ProjectionRefit, RefitResult
from .layers import (
    all_projection_grams,
    corrected_projection,
    gram_bytes,
    output_projection,
    projection_grams,
    split_heldout,
)

logger = logging.getLogger(__name__)


class SearchRefit:
    """The refit inside AMP's search (``search.reconstruct``): for every candidate width of the searched layer,
    the closed-form refit of its output projection, so the criterion is measured on the refit model.

    The search runs last to first, so when layer l is searched everything before it is the original network:
    its Gram statistics are the original activations' (as in ``mode=independent``), fit on the calibration
    ``batches`` (default: the evaluator's search batches) minus the held-out ones (``heldout_fraction``); the
    damping is chosen on the held-out ones at the layer's first candidate (the middle width) and every
    candidate is then one small solve. ``grams``: every layer's statistics, collected already from ``batches``
    (Taylor scoring's pass collects them when its batches are the calibration batches). Otherwise, when every
    layer's statistics fit in ``memory_gb`` (``gram_bytes``),
    they are all collected in one pass of the original model at the first ``prepare``; otherwise each layer's
    are collected when it is prepared, from cached layer inputs (``one_pass=False`` forces that path). The
    statistics and solves are kept for the budget mode's repeated searches (within ``memory_gb``) and are
    all-reduced across processes like the evaluator's criterion, so N processes find the 1-process answer.
    ``guard`` (``end_to_end_check``): the search also evaluates the accepted width plainly sliced and keeps the
    slice when it is closer to the reference by more than ``revert_margin`` of its gap.
    """

    def __init__(self, model: nn.Module | MlpStack, evaluator: CriterionEvaluator,
                 config: ReconstructConfig | None = None, memory_gb: float = 4.0,
                 batches: Sequence[dict] | None = None, one_pass: bool = True,
                 grams: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.stack, self.evaluator = resolve(model), evaluator
        self.config = config or ReconstructConfig(enabled=True)
        # Where the layer inputs come from: the evaluator's own cache, or a cache of the calibration batches
        # (filled by one pass of the original model before the first layer is searched).
        self.inputs = evaluator if batches is None else CriterionEvaluator(
            self.stack, None, list(batches), evaluator.accelerator, memory_gb)
        fit, heldout = split_heldout(self.inputs.batches, self.config.heldout_fraction)
        self.is_fit = [True] * len(fit) + [False] * len(heldout)
        self.guard = self.config.end_to_end_check
        self.memory = memory_gb * 2**30
        # every layer's statistics already collected from ``batches`` with the same split (e.g. during Taylor
        # scoring: ``ProjectionGramCollector``), or collected here
        self._grams: dict[int, tuple[torch.Tensor, torch.Tensor]] = dict(enumerate(grams or ()))
        if grams is not None and len(self._grams) != len(self.stack.layers):
            raise ValueError(f"grams: {len(self._grams)} layers' statistics for {len(self.stack.layers)} layers")
        self._refits: dict[int, ProjectionRefit] = {}  # per layer: what every candidate's solve shares
        self._solutions: dict[tuple[int, tuple[int, ...]], tuple[tuple | None, RefitResult]] = {}
        self._cache_tried = False
        self._one_pass_tried = not one_pass
        self._dampings: dict[int, list[float]] = {}
        self.tokens = (0, 0)

    def prepare(self, layer: int) -> None:
        """Gram statistics of ``layer``; call it while that layer and every layer before it are original."""
        if layer in self._grams:
            self.tokens = (int(self._grams[layer][0][-1, -1]), int(self._grams[layer][1][-1, -1]))
            return
        if not self._one_pass_tried:
            self._one_pass_tried = True
            needed = gram_bytes(self.stack)
            if needed <= self.memory:
                # layers 0 .. layer only: those are the ones whose whole prefix is guaranteed original now
                grams = all_projection_grams(self.stack, self.inputs.batches, self.is_fit,
                                             self.evaluator.accelerator, layers=layer + 1)
                self._grams.update(enumerate(grams))
                return self.prepare(layer)
            logger.info("refit statistics of every layer need %.2f GB > %.2f GB: collected layer by layer",
                        needed / 2**30, self.memory / 2**30)
        if self.inputs.layer_inputs is None and self.inputs is not self.evaluator and not self._cache_tried:
            self._cache_tried = True
            self.inputs.cache_inputs()  # false when over the memory budget: prefix passes per layer instead
        cached = self.inputs.layer_inputs
        fit, heldout, _ = projection_grams(self.stack, layer, self.inputs.batches,
                                           cached[layer] if cached is not None else None, self.is_fit,
                                           self.evaluator.accelerator)
        self.tokens = (int(fit[-1, -1]), int(heldout[-1, -1]))
        size = 2 * fit.numel() * fit.element_size()
        for other in [k for k in self._grams if k != layer]:  # keep the newest statistics within the budget
            if size * (len(self._grams) + 1) <= self.memory:
                break
            del self._grams[other]
            self._refits.pop(other, None)
        self._grams[layer] = (fit, heldout)

    def _solve(self, layer: int, kept: list[int], full: nn.Linear) -> tuple[tuple | None, RefitResult]:
        key = (layer, tuple(kept))
        if key not in self._solutions:
            if layer not in self._grams:
                raise RuntimeError(f"SearchRefit.prepare({layer}) must run before the layer's candidates")
            if layer not in self._refits:
                self._refits[layer] = ProjectionRefit(full.weight, full.bias, *self._grams[layer])
            dampings = self._dampings.get(layer, self.config.dampings)
            result = self._refits[layer].refit(kept, dampings)
            if result.damping is not None:
                # chosen on held-out tokens at the layer's first candidate; its other candidates are one solve each
                self._dampings.setdefault(layer, [result.damping])
            projection = corrected_projection(full, kept, result.delta) if result.delta is not None else None
            if len(self._solutions) * full.weight.numel() * full.weight.element_size() > self.memory:
                self._solutions.clear()
            self._solutions[key] = (projection, result)
        return self._solutions[key]

    def projection(self, layer: int, kept: list[int], full: nn.Linear) -> tuple | None:
        """(weight, bias) of the refit output projection keeping ``kept`` (ascending) of ``full``'s inputs; None
        when the refit would not beat plain slicing on the held-out tokens (or keeps every neuron)."""
        return self._solve(layer, kept, full)[0]

    def prefers_sliced(self, sliced: float, refit: float, reference: float) -> bool:
        """The guard: plain slicing is closer to the reference by more than the margin of its own gap."""
        required = self.config.revert_margin * abs(sliced - reference)
        return abs(sliced - reference) < abs(refit - reference) - required

    def report(self, layer: int, kept: list[int], refit: bool) -> dict:
        """The chosen state of ``layer``: whether it holds the refit, its damping and held-out errors."""
        key = (layer, tuple(kept))
        result = self._solutions[key][1] if key in self._solutions else None
        reason = None if refit else (result.reason if result is not None and result.reason else
                                     "end-to-end: plain slicing is closer to the reference" if result is not None
                                     else "keeps every neuron")
        return {"layer": layer, "width": len(kept), "status": "reconstructed" if refit else "sliced",
                "reason": reason, "damping": result.damping if result is not None and refit else None,
                "error_sliced": result.error_sliced if result is not None else None,
                "error_reconstructed": result.error_refit if result is not None and refit else None,
                "notes": list(result.notes) if result is not None else []}


@torch.no_grad()
def install_search_refit(pruned: nn.Module | MlpStack, projections: dict[int, tuple], layers: list[dict]) -> dict:
    """Put the output projections the search refit (``SearchRefit``; ``layers``: its per-layer reports) into
    the sliced model ``pruned`` (best: the stack ``slice_stack`` returned) and record them in its provenance;
    returns that provenance."""
    stack = resolve(pruned)
    for index, (weight, bias) in projections.items():
        linear = output_projection(stack, index)
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    provenance = {
        "mode": "in_search",
        "kept": "reconstructed" if projections else "sliced",
        "layers_reconstructed": sorted(projections),
        "damping": [layer["damping"] for layer in layers],
        "layer_fallbacks": {str(layer["layer"]): layer["reason"] for layer in layers if layer["status"] == "sliced"},
        "heldout_error": {
            "sliced": [layer["error_sliced"] for layer in layers],
            "reconstructed": [layer["error_sliced"] if layer["error_reconstructed"] is None
                              else layer["error_reconstructed"] for layer in layers],
        },
    }
    stack.model.config.amp_pruning["reconstruction"] = provenance
    return {**provenance, "layers": layers}


def search_refit_summary(refit: dict) -> str:
    """One line for the command line."""
    return (f"reconstruction (in the search): {len(refit['layers_reconstructed'])}/{len(refit['damping'])} layers "
            "refit; the saved model is the one the search evaluated")
