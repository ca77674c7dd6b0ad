"""The cost model of width allocation: what one hidden neuron of each layer costs in parameters or FLOPs, and the
rounding of widths."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..accounting import count_flops, count_parameters, mlp_parameters
from ..errors import ConfigError
from ..families import MlpStack, resolve


def round_width(width: int, full: int, round_to: int) -> int:
    """Round up to a multiple of ``round_to`` (at least one multiple), never above the full width."""
    if round_to <= 1:
        return max(1, min(width, full))
    return min(full, max(round_to, math.ceil(width / round_to) * round_to))


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


def tower_cost(model: nn.Module | MlpStack, metric: str = "params") -> TowerCost:
    """Cost model for ``metric``: the tower's parameters, its FLOPs, or only its MLP parameters."""
    stack = resolve(model)
    mlps = stack.mlps()
    per_neuron = [float(neuron_map.parameters_per_neuron(layer)) for layer, neuron_map in mlps]
    widths = stack.widths()
    if metric == "params":
        return TowerCost(float(count_parameters(stack.backbone)), widths, per_neuron)
    if metric == "mlp_params":
        return TowerCost(float(mlp_parameters(stack)), widths, per_neuron)
    inputs = stack.adapter.dummy_inputs(stack.model)
    tokens = _tokens_per_sample(stack, inputs)
    # a matmul costs 2 FLOPs per multiply-add; biases are not counted by torch's flop counter
    flops_per_neuron = [2.0 * tokens * neuron_map.multiply_adds_per_neuron(layer) for layer, neuron_map in mlps]
    return TowerCost(float(count_flops(stack.backbone, inputs)), widths, flops_per_neuron)


@torch.no_grad()
def _tokens_per_sample(stack: MlpStack, inputs) -> int:
    seen = []
    handle = stack.layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    try:
        stack.adapter.embed(stack.model, inputs)
    finally:
        handle.remove()
    return int(seen[0])


def check_reachable(cost: TowerCost, target: float) -> float:
    """The fraction of the cost the MLPs hold; a target at or above it cannot be met by MLP pruning."""
    removable = sum(p * f for p, f in zip(cost.per_neuron, cost.full_widths)) / cost.base_total
    if target >= removable:
        raise ConfigError(
            f"search.target_reduction {target:.2f} is more than the MLPs hold ({removable:.2f} of the tower's cost): "
            "lower it, or set search.target_metric=mlp_params to count MLP parameters only"
        )
    return removable
