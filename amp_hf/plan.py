"""PrunePlan: which hidden neurons every layer keeps. The one object selection methods produce and
slicing, reports, cards and re-slicing read (plain data, saved as JSON beside the checkpoint)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import PlanError
from .files.artifacts import PLAN_FILE  # noqa: F401  (amp_hf.plan.PLAN_FILE, as checkpoint code reads it)


@dataclass
class PrunePlan:
    """Per-layer kept neuron indices (ascending, original numbering) plus how they were chosen."""

    original_widths: list[int]
    kept: list[list[int]]
    method: str = "manual"
    details: dict = field(default_factory=dict)  # criterion, ΔE, budget, … (goes into amp_pruning)

    def __post_init__(self):
        self.original_widths = [int(w) for w in self.original_widths]
        self.kept = [sorted(int(i) for i in _as_list(k)) for k in self.kept]
        self.validate()

    @property
    def widths(self) -> list[int]:
        return [len(k) for k in self.kept]

    def validate(self, original_widths: Sequence[int] | None = None) -> None:
        if original_widths is not None and list(original_widths) != self.original_widths:
            raise PlanError(
                f"plan was made for MLP widths {self.original_widths}, but this model has {list(original_widths)}: "
                "re-run selection on this model, or slice the base model the plan was made for"
            )
        if len(self.kept) != len(self.original_widths):
            raise PlanError(f"plan lists {len(self.kept)} layers but the model has {len(self.original_widths)}")
        for layer, (kept, width) in enumerate(zip(self.kept, self.original_widths)):
            if len(kept) < 1:
                raise PlanError(f"layer {layer}: width must be at least 1 (every MLP keeps a neuron)")
            if len(kept) > width:
                raise PlanError(f"layer {layer}: width {len(kept)} exceeds the original width {width}")
            if len(set(kept)) != len(kept):
                raise PlanError(f"layer {layer}: kept indices contain duplicates")
            if kept[0] < 0 or kept[-1] >= width:
                raise PlanError(f"layer {layer}: kept indices must lie in [0, {width})")

    @classmethod
    def from_scores(
        cls, scores: Sequence[torch.Tensor], widths: Sequence[int], method: str, details: dict | None = None
    ) -> PrunePlan:
        """Keep the top-``widths[l]`` neurons of every layer by score (ties broken by lower index)."""
        kept = [top_indices(s, w) for s, w in zip(scores, widths)]
        return cls([len(s) for s in scores], kept, method, dict(details or {}))

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> PrunePlan:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        values = json.loads(path.read_text())
        return cls(**values)


def top_indices(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores; a stable sort makes ties deterministic (lower index first)."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if not 1 <= k <= scores.numel():
        raise PlanError(f"cannot keep {k} of {scores.numel()} neurons: width must be in [1, {scores.numel()}]")
    order = torch.sort(-scores, stable=True).indices
    return sorted(order[:k].tolist())


def _as_list(values) -> list:
    if isinstance(values, torch.Tensor):
        return values.flatten().tolist()
    return list(values)
