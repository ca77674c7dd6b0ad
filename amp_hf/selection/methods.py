"""Scoring methods: the registry (beside ``criteria.CRITERIA``) of ways to rank every MLP hidden neuron.

``amp`` needs data (first-order Taylor importance through the criterion, on scoring batches); ``dgmr``,
``magnitude`` and ``random`` are data-free and read the weights (or a seed) only. ``dgmr`` also has its own
kept width (ratio x model dim d), so it allocates widths itself instead of running the search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..families import MlpStack
from .config import DGMRConfig
from .dgmr import dgmr_scores, magnitude_scores, random_scores
from .taylor import NeuronScores, taylor_scores


@dataclass
class ScoringInputs:
    """What a run hands a scoring method. ``criterion`` (built and prepared once per run) and ``loader``
    (a callable returning the scoring batches) are only read by methods that need data."""

    stack: MlpStack
    seed: int = 0
    dgmr: DGMRConfig | None = None
    criterion: object | None = None
    loader: Callable[[], object] | None = None
    accelerator: object | None = None
    max_batches: int | None = None
    rank_all: bool = False  # a method with its own width ranks every neuron instead (the search picks widths)
    precision: str = "fp32"  # scoring.precision: autocast dtype of the Taylor passes
    on_activations: Callable | None = None  # taylor_scores(on_activations=...): a Taylor pass's activations, reused


@dataclass(frozen=True)
class ScoringMethod:
    name: str
    needs_data: bool
    score: Callable[[ScoringInputs], list[torch.Tensor] | NeuronScores]
    own_width: Callable[[ScoringInputs], int] | None = None  # a method that fixes one kept width per layer

    def __call__(self, inputs: ScoringInputs) -> NeuronScores:
        values = self.score(inputs)
        if isinstance(values, NeuronScores):
            return values
        return NeuronScores(abs=values, signed=values, num_samples=0, metadata={"method": self.name})


def _dgmr_width(inputs: ScoringInputs) -> int:
    return (inputs.dgmr or DGMRConfig()).kept_width(inputs.stack)


def _dgmr(inputs: ScoringInputs) -> list[torch.Tensor]:
    width = max(inputs.stack.widths()) if inputs.rank_all else _dgmr_width(inputs)
    return dgmr_scores(inputs.stack, width=width)


SCORING_METHODS: dict[str, ScoringMethod] = {
    method.name: method
    for method in (
        ScoringMethod("amp", True, lambda run: taylor_scores(run.stack, run.loader(), run.criterion, run.accelerator,
                                                             run.max_batches, run.precision, run.on_activations)),
        ScoringMethod("dgmr", False, _dgmr, own_width=_dgmr_width),
        ScoringMethod("magnitude", False, lambda run: magnitude_scores(run.stack)),
        ScoringMethod("random", False, lambda run: random_scores(run.stack, run.seed)),
    )
}
