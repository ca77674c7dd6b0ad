"""Parameters and FLOPs, for the whole model and for the pruned tower, at the model's native input size.

FLOPs come from ``torch.utils.flop_counter`` (matmuls, convolutions, attention), not a hand count; they are
for one sample (batch 1), counting a multiply-add as 2 FLOPs as torch does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .families import MlpStack, resolve


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mlp_parameters(model: nn.Module | MlpStack) -> int:
    """Parameters of every module a layer's neuron map lists (input/output projections, hidden-width norms)."""
    return sum(count_parameters(module) for layer, neuron_map in resolve(model).mlps()
               for module in neuron_map.modules(layer).values())


@torch.no_grad()
def count_flops(module: nn.Module, inputs: dict) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        module(**inputs)
    return int(counter.get_total_flops())


def model_stats(model: nn.Module | MlpStack) -> dict[str, int]:
    """params/FLOPs of the whole model and of the pruned tower (the backbone holding the MLP stack)."""
    stack = resolve(model)
    model, adapter = stack.model, stack.adapter
    backbone = stack.backbone
    inputs = adapter.dummy_inputs(model)
    was_training = model.training
    model.eval()
    try:
        tower_flops = count_flops(backbone, inputs)
        full_flops = count_flops(model, _full_model_inputs(model, inputs))
    finally:
        model.train(was_training)
    return {
        "params_total": count_parameters(model),
        "params_tower": count_parameters(backbone),
        "params_mlp": mlp_parameters(stack),
        "flops_total": full_flops,
        "flops_tower": tower_flops,
    }


def _full_model_inputs(model: nn.Module, inputs: dict) -> dict:
    # CLIP / SigLIP full models also need text: count one text sequence at the text tower's full length.
    text_config = getattr(model.config, "text_config", None)
    if text_config is None or "pixel_values" not in inputs:
        return inputs
    length = getattr(text_config, "max_position_embeddings", 77)
    ids = torch.ones(1, length, dtype=torch.long, device=inputs["pixel_values"].device)
    return {**inputs, "input_ids": ids}


def compare_stats(before: dict[str, int], after: dict[str, int]) -> dict[str, dict[str, float]]:
    """Per quantity: before, after, and the relative reduction."""
    return {
        key: {"before": before[key], "after": after[key], "reduction": 1 - after[key] / before[key] if before[key] else 0.0}
        for key in before
    }
