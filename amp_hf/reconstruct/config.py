"""The ``reconstruct:`` section of a prune config and its checks (no torch: it is checked before any model loads)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ..data_config import DataConfig


@dataclass
class ReconstructConfig:
    """The ``reconstruct:`` section of a prune config."""

    enabled: bool = False
    # sequential: each layer refit on the pruned prefix's activations; independent: on the original's;
    # blockwise: sequential, then per block a few Adam steps on the cached inputs (``blockwise``)
    mode: Literal["sequential", "independent", "blockwise"] = "sequential"
    # mlp: each pruned MLP's output projection reproduces its own full output; residual: every linear writing
    # into the residual stream from the first pruned MLP on (MLP and attention output projections) is refit
    # so the stream after it matches the unpruned model's, given the pruned model's inputs (sequential only)
    objective: Literal["mlp", "residual"] = "mlp"
    damping: float | None = None  # fixed relative ridge λ; None = best of damping_candidates on held-out tokens
    damping_candidates: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    heldout_fraction: float = 0.25  # share of the calibration batches held out (damping choice, fallbacks)
    data: DataConfig | None = None  # calibration data (default: the scoring data)
    num_samples: int | None = None  # calibration samples (default: the data config's num_samples)
    end_to_end_check: bool = True  # revert refits that move the held-out criterion away from the original's
    # A per-layer revert must close at least this share of the sliced model's criterion gap to the original:
    # smaller changes are within the noise of a few held-out batches.
    revert_margin: float = 0.05
    # mode=blockwise: Adam steps per block (one calibration batch each, in turn), its learning rate, and how
    # often the held-out error is checked (the block keeps its best checked parameters)
    blockwise_steps: int = 60
    blockwise_lr: float = 1e-3
    blockwise_eval_every: int = 10
    # What the end-to-end check of the refinement compares with the closed form's model on the held-out batches:
    # criterion: AMP's label-free criterion must be no further from the original's; fidelity: the mean cosine of
    # the embedding to the original's must be no lower (the refinement's own goal, also label-free)
    blockwise_guard: Literal["criterion", "fidelity"] = "criterion"

    def __post_init__(self):
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(
                f"reconstruct.heldout_fraction must be in (0, 1) (e.g. 0.25); got {self.heldout_fraction}"
            )
        if self.damping is not None and self.damping < 0:
            raise ValueError("reconstruct.damping must be >= 0 (a relative ridge strength, e.g. 0.001)")
        if not self.damping_candidates or any(d < 0 for d in self.damping_candidates):
            raise ValueError("reconstruct.damping_candidates must be a non-empty list of values >= 0")
        if self.objective == "residual" and self.mode == "independent":
            raise ValueError("reconstruct.objective=residual fits every layer on the pruned model's own inputs: "
                             "drop reconstruct.mode=independent (or use reconstruct.objective=mlp)")
        if self.revert_margin < 0:
            raise ValueError("reconstruct.revert_margin must be >= 0 (a share of the criterion gap, e.g. 0.05)")
        if self.blockwise_steps < 1 or self.blockwise_eval_every < 1:
            raise ValueError("reconstruct.blockwise_steps and reconstruct.blockwise_eval_every must be >= 1 "
                             "(e.g. 60 and 10)")
        if self.blockwise_guard not in ("criterion", "fidelity"):
            raise ValueError(f"reconstruct.blockwise_guard must be criterion or fidelity, not {self.blockwise_guard!r}")
        if not self.blockwise_lr > 0:
            raise ValueError("reconstruct.blockwise_lr must be > 0 (an Adam learning rate, e.g. 0.001)")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError("reconstruct.num_samples must be >= 1 (or null for the data config's)")

    @property
    def dampings(self) -> list[float]:
        return [self.damping] if self.damping is not None else list(self.damping_candidates)

    def calibration_data(self, default: DataConfig) -> DataConfig:
        """The calibration data: ``data`` (or ``default``) with ``num_samples`` applied."""
        data = self.data or default
        return replace(data, num_samples=self.num_samples) if self.num_samples is not None else data
