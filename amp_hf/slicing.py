"""Physical removal of MLP hidden neurons: pure state-dict functions plus the pruned-model builder.

Every tensor the layer's ``NeuronMap`` lists keeps the kept neurons' entries along its hidden dim (input
projection rows, in every block of a fused one; per-neuron vectors; output projection columns); the output
projection's bias is kept whole. Kept neurons stay in their original order, so keeping all of them
reproduces the model exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from .families import MlpStack, resolve
from .models.amp_layer_widths import chunk_index
from .plan import PrunePlan

HiddenTensorNames = list[list[tuple[str, int, int]]]  # per layer: (state-dict name, hidden dim, chunks)


def hidden_tensor_names(model: nn.Module | MlpStack) -> HiddenTensorNames:
    """Per layer: (state-dict name, hidden dim, chunks) of every tensor indexed by hidden neurons."""
    return resolve(model).hidden_tensor_names()


def slice_state_dict(
    state_dict: dict[str, torch.Tensor], tensor_names: HiddenTensorNames, kept: Sequence[Sequence[int]],
    original_widths: Sequence[int],
) -> dict[str, torch.Tensor]:
    """A new state dict whose MLP tensors hold only the kept neurons (others are shared, not copied)."""
    sliced = dict(state_dict)
    for names, indices, width in zip(tensor_names, kept, original_widths):
        index = torch.as_tensor(list(indices), dtype=torch.long)
        for name, dim, chunks in names:
            tensor = state_dict[name]
            sliced[name] = tensor.index_select(dim, chunk_index(index, chunks, width).to(tensor.device)).contiguous()
    return sliced


def slice_model(model: PreTrainedModel | MlpStack, plan: PrunePlan, amp_pruning: dict | None = None) -> PreTrainedModel:
    """Return a new amp_* model holding only ``plan.kept`` neurons of each MLP; ``model`` is not changed.

    ``amp_pruning`` (provenance) is stored in the new config; by default it is built from the plan.
    """
    return slice_stack(model, plan, amp_pruning).model


def slice_stack(model: PreTrainedModel | MlpStack, plan: PrunePlan, amp_pruning: dict | None = None) -> MlpStack:
    """``slice_model``, handing back the pruned model resolved: slicing changes widths, not structure, so its
    layer path and neuron maps are ``model``'s and the pruned model is never probed again."""
    stack = resolve(model)
    model = stack.model
    plan.validate(stack.widths())
    if amp_pruning is None:
        amp_pruning = {"method": plan.method, **plan.details}
    amp_pruning = {**amp_pruning, "original_widths": plan.original_widths, "widths": plan.widths}
    state_dict = slice_state_dict(model.state_dict(), stack.hidden_tensor_names(), plan.kept, plan.original_widths)
    pruned = build_pruned_model(stack, plan.widths, state_dict, amp_pruning)
    return MlpStack(pruned, stack.adapter, stack.layers_path, stack.maps)


def build_pruned_model(model: PreTrainedModel | MlpStack, widths: Sequence[int], state_dict: dict[str, torch.Tensor],
                       amp_pruning: dict | None) -> PreTrainedModel:  # fmt: skip
    """The amp_* model of ``model``'s family with MLP ``widths``, holding exactly ``state_dict``."""
    stack = resolve(model)
    model, adapter = stack.model, stack.adapter
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


def keep_all_plan(model: nn.Module | MlpStack) -> PrunePlan:
    widths = resolve(model).widths()
    return PrunePlan(widths, [range(w) for w in widths], method="none")
