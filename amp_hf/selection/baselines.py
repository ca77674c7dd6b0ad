"""The allocation baselines of ``search.allocation``: uniform keep-ratio, and one global ranking across layers;
both cut at a cost budget (``cost.TowerCost``)."""

from __future__ import annotations

import torch

from .cost import TowerCost, check_reachable, round_width


def uniform_widths(cost: TowerCost, target: float, round_to: int = 1) -> list[int]:
    """Same keep-ratio in every layer, chosen so the tower loses ``target`` of its cost."""
    removable = check_reachable(cost, target)
    keep = 1.0 - target / removable
    return [round_width(round(keep * f), f, round_to) for f in cost.full_widths]


def global_widths(scores: list[torch.Tensor], cost: TowerCost, target: float, round_to: int = 1) -> list[int]:
    """One ranking across layers (scores divided by their layer's mean), cut where the budget is met."""
    check_reachable(cost, target)
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
