"""The selection sections of a prune config: ``criterion:``, ``dgmr:`` and ``search:``, with their checks.

No torch here: the command line builds and checks these before the model code loads. The names of the
criteria and scoring methods are spelled here too; ``criteria.CRITERIA`` and ``methods.SCORING_METHODS``
implement them (tests/test_startup.py checks that the lists agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ..families import MlpStack

CRITERION_NAMES = ("entropy", "ce")
SCORING_METHOD_NAMES = ("amp", "dgmr", "magnitude", "random")
OWN_WIDTH_METHODS = ("dgmr",)  # methods that fix one kept width per layer (dgmr.ratio / dgmr.width)


@dataclass
class CriterionConfig:
    name: str = "entropy"  # entropy | ce
    temperature: float | None = None  # τ; default 1 / temp_inv
    temp_inv: float = 15.0  # AMP's configs use 15 or 20
    class_names: list[str] = field(default_factory=list)  # ce on CLIP/SigLIP: zero-shot classes
    prompt_template: str = "a photo of a {}."

    def __post_init__(self):
        if self.name not in CRITERION_NAMES:
            raise ValueError(f"criterion.name must be one of {', '.join(CRITERION_NAMES)}; got {self.name!r}")
        if self.temperature is None:
            if self.temp_inv <= 0:
                raise ValueError("criterion.temp_inv must be > 0 (τ = 1/temp_inv; AMP uses 15-20)")
            self.temperature = 1.0 / self.temp_inv
        if self.temperature <= 0:
            raise ValueError("criterion.temperature (τ) must be > 0; AMP uses 1/15-1/20")


@dataclass
class DGMRConfig:
    ratio: float = 1.0  # kept width = ratio x model dim d (the paper's r)
    width: int | None = None  # explicit kept width (overrides ratio)

    def __post_init__(self):
        if self.width is None and self.ratio <= 0:
            raise ValueError("dgmr.ratio must be > 0 (kept width = ratio x hidden size)")
        if self.width is not None and self.width < 1:
            raise ValueError("dgmr.width must be >= 1")

    def kept_width(self, stack: MlpStack) -> int:
        if self.width is not None:
            return self.width
        return max(1, int(self.ratio * stack.backbone.config.hidden_size))


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
    # adaptive/budget: evaluate every candidate width after the closed-form refit of that layer's output
    # projection (the ``reconstruct`` section's damping and held-out settings), so ΔE is measured on the model
    # that is saved; the refit weights found by the search are the ones saved.
    reconstruct: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError("search.steps must be >= 1 (AMP uses 6)")
        if self.round_to < 1:
            raise ValueError("search.round_to must be >= 1")
        if self.delta_e < 0:
            raise ValueError("search.delta_e must be >= 0")
        if self.reconstruct and self.allocation in ("uniform", "global"):
            # Their widths and kept neurons come from the scores alone, so a refit in the loop would keep the
            # same neurons as refitting afterwards; that is reconstruct.enabled (mode=independent).
            raise ValueError(
                f"search.reconstruct applies to search.allocation=adaptive or budget; allocation={self.allocation} "
                "does not evaluate candidates, so the refit cannot change its choice: use reconstruct.enabled=true"
            )
        if not 0 < self.tolerance < 1:
            raise ValueError(f"search.tolerance (|achieved - target| allowed) must lie in (0, 1), e.g. 0.02; got {self.tolerance}")
        if self.max_budget_iterations < 1:
            raise ValueError(f"search.max_budget_iterations must be >= 1 (default 14); got {self.max_budget_iterations}")
        if self.cache_gb < 0:
            raise ValueError(f"search.cache_gb must be >= 0 (0 = no input cache); got {self.cache_gb}")
        if self.allocation != "adaptive":
            if self.target_reduction is None or not 0 < self.target_reduction < 1:
                raise ValueError(
                    f"search.allocation={self.allocation} needs search.target_reduction in (0, 1), "
                    f"e.g. search.target_reduction=0.4; got {self.target_reduction}"
                )
