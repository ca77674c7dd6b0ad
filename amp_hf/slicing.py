"""Physical removal of MLP hidden neurons: pure state-dict functions plus the pruned-model builder.

fc1/gate/up keep rows (and bias entries) of the kept neurons, fc2/down keeps those columns; the fc2 bias is
kept whole. Kept neurons stay in their original order, so keeping all of them reproduces the model exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .families import get_adapter
from .models.amp_layer_widths import find_mlp_linears
from .plan import PrunePlan


def mlp_tensor_names(model: nn.Module) -> list[tuple[list[str], str]]:
    """Per layer: (state-dict names sliced along rows, name sliced along columns)."""
    adapter = get_adapter(model)
    prefix = adapter.layers_path(model)
    names = []
    for index, layer in enumerate(adapter.layers(model)):
        in_names, out_name = find_mlp_linears(layer)
        base = f"{prefix}.{index}."
        rows = [f"{base}{n}.{p}" for n in in_names for p in ("weight", "bias") if getattr(layer.get_submodule(n), p) is not None]
        names.append((rows, f"{base}{out_name}.weight"))
    return names


def slice_state_dict(
    state_dict: dict[str, torch.Tensor], tensor_names: list[tuple[list[str], str]], kept: Sequence[Sequence[int]]
) -> dict[str, torch.Tensor]:
    """A new state dict whose MLP tensors hold only the kept neurons (others are shared, not copied)."""
    sliced = dict(state_dict)
    for (row_names, column_name), indices in zip(tensor_names, kept):
        index = torch.as_tensor(list(indices), dtype=torch.long)
        for name in row_names:
            sliced[name] = state_dict[name].index_select(0, index.to(state_dict[name].device)).contiguous()
        weight = state_dict[column_name]
        sliced[column_name] = weight.index_select(1, index.to(weight.device)).contiguous()
    return sliced


def slice_model(model: PreTrainedModel, plan: PrunePlan, amp_pruning: dict | None = None) -> PreTrainedModel:
    """Return a new amp_* model holding only ``plan.kept`` neurons of each MLP; ``model`` is not changed.

    ``amp_pruning`` (provenance) is stored in the new config; by default it is built from the plan.
    """
    adapter = get_adapter(model)
    plan.validate(adapter.widths(model))
    if amp_pruning is None:
        amp_pruning = {"method": plan.method, **plan.details}
    amp_pruning = {**amp_pruning, "original_widths": plan.original_widths, "widths": plan.widths}
    state_dict = slice_state_dict(model.state_dict(), mlp_tensor_names(model), plan.kept)
    return build_pruned_model(model, plan.widths, state_dict, amp_pruning)


def build_pruned_model(model: PreTrainedModel, widths: Sequence[int], state_dict: dict[str, torch.Tensor],
                       amp_pruning: dict | None) -> PreTrainedModel:  # fmt: skip
    """The amp_* model of ``model``'s family with MLP ``widths``, holding exactly ``state_dict``."""
    adapter = get_adapter(model)
    config = adapter.pruned_config(model, list(widths), amp_pruning)
    parameter = next(model.parameters())
    # Models built without their pooler (ViTModel / BertModel(add_pooling_layer=False)) stay without it.
    kwargs = {"add_pooling_layer": False} if getattr(model, "pooler", ...) is None else {}
    with no_init_weights():  # every tensor is overwritten below: skip the random init
        pruned = adapter.amp_class(model)(config, **kwargs)
    pruned.to(device=parameter.device, dtype=parameter.dtype)
    missing, unexpected = pruned.load_state_dict(state_dict, strict=False)
    # Buffers outside the state dict (non-persistent) are rebuilt by the constructor; anything else is a bug.
    if unexpected or missing:
        raise RuntimeError(f"slicing produced mismatched tensors: missing={missing} unexpected={unexpected}")
    pruned.train(model.training)
    return pruned


def keep_all_plan(model: nn.Module) -> PrunePlan:
    widths = get_adapter(model).widths(model)
    return PrunePlan(widths, [range(w) for w in widths], method="none")
