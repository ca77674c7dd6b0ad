"""What post-hoc reconstruction and the in-search refit share besides their config (``config``): the input of a
layer, the Gram statistics of a layer's output projection (all-reduced across processes), the corrected
projection, and the fit / held-out split of the calibration batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..data import DataError, model_inputs
from ..families import MlpStack, resolve
from ..layer_stack import run_layer
from .gram import accumulate_gram, new_gram


class _InputCaptured(Exception):
    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


@torch.no_grad()
def layer_input(stack: MlpStack, index: int, batch: dict) -> torch.Tensor:
    """The input of layer ``index`` for ``batch`` (a forward pass stopped there)."""

    def capture(module, args):
        raise _InputCaptured(args[0])

    handle = stack.layers[index].register_forward_pre_hook(capture)
    try:
        stack.backbone(**model_inputs(batch))
    except _InputCaptured as captured:
        return captured.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"layer {index} of {type(stack.model).__name__} did not run in the forward pass")


def output_projection(stack: MlpStack, index: int) -> nn.Linear:
    layer, neuron_map = stack.mlps()[index]
    return neuron_map.output(layer)


@torch.no_grad()
def projection_grams(model: nn.Module | MlpStack, index: int, batches: Sequence[dict], inputs: Sequence | None,
                     is_fit: Sequence[bool], accelerator=None, keep_outputs: bool = False):
    """Fit and held-out Gram matrices (``gram.new_gram``) of the input of layer ``index``'s MLP output
    projection, summed over the batches marked fit / held out and all-reduced across processes; and the
    layer's outputs when ``keep_outputs`` (else Nones).

    ``inputs``: each batch's input to the layer (None entries, or ``inputs=None``: computed by a forward pass
    through the layers before it).
    """
    stack = resolve(model)
    width = output_projection(stack, index).in_features
    device = next(stack.model.parameters()).device
    grams = {True: new_gram(width, device), False: new_gram(width, device)}
    outputs = []
    for position, (batch, fit) in enumerate(zip(batches, is_fit)):
        hidden = inputs[position] if inputs is not None else None
        if hidden is None and index > 0:
            hidden = layer_input(stack, index, batch)

        def collect(h, batch=batch, gram=grams[fit]):
            accumulate_gram(gram, h, token_mask(batch, h))

        output = run_layer(stack, index, batch, hidden, collect)
        outputs.append(output if keep_outputs else None)
    fit, heldout = (all_reduce_sum(grams[k], accelerator).cpu() for k in (True, False))
    return fit, heldout, outputs


def gram_bytes(model: nn.Module | MlpStack) -> int:
    """Memory of every layer's fit and held-out Gram matrices (float64, (H + 1)² each)."""
    stack = resolve(model)
    return sum(2 * (neuron_map.output(layer).in_features + 1) ** 2 * 8 for layer, neuron_map in stack.mlps())


class ProjectionGramCollector:
    """Every layer's fit and held-out Gram matrices of its output projection's input, accumulated from a pass that
    runs anyway: called with (step, batch, activations) for the ``step``-th batch, ``activations[i]`` the input of
    layer i's output projection (what Taylor scoring records, ``taylor_scores(on_activations=...)``), ``is_fit``
    the batches' fit / held-out split. ``grams`` all-reduces them as ``all_projection_grams`` returns them."""

    def __init__(self, model: nn.Module | MlpStack, is_fit: Sequence[bool], layers: int | None = None):
        stack = resolve(model)
        self.mlps = stack.mlps()[: len(stack.layers) if layers is None else layers]
        self.is_fit = list(is_fit)
        device = next(stack.model.parameters()).device
        self.sums = [{True: new_gram(neuron_map.output(layer).in_features, device),
                      False: new_gram(neuron_map.output(layer).in_features, device)} for layer, neuron_map in self.mlps]
        self.batches = 0

    @torch.no_grad()
    def add(self, index: int, batch: dict, fit: bool, hidden: torch.Tensor) -> None:
        accumulate_gram(self.sums[index][fit], hidden.detach(), token_mask(batch, hidden))

    def __call__(self, step: int, batch: dict, activations: Sequence[torch.Tensor]) -> None:
        if step >= len(self.is_fit):
            raise ValueError(f"batch {step}: the fit / held-out split covers {len(self.is_fit)} batches")
        for index in range(len(self.sums)):
            self.add(index, batch, self.is_fit[step], activations[index])
        self.batches = max(self.batches, step + 1)

    def grams(self, accelerator=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.batches != len(self.is_fit):
            raise ValueError(f"the pass covered {self.batches} of the split's {len(self.is_fit)} batches")
        return [tuple(all_reduce_sum(pair[k], accelerator).cpu() for k in (True, False)) for pair in self.sums]


@torch.no_grad()
def all_projection_grams(model: nn.Module | MlpStack, batches: Sequence[dict], is_fit: Sequence[bool],
                         accelerator=None, layers: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``projection_grams`` of layers 0 .. ``layers`` - 1 (default: all) in one forward pass per batch: every
    output projection's input is accumulated as the pass goes by it, so no layer input is cached and no
    layer is run twice. The statistics equal the per-layer ones (same activations, batches added in the same
    order); memory is ``gram_bytes``.
    """
    stack = resolve(model)
    collector = ProjectionGramCollector(stack, is_fit, layers)
    current: dict = {}  # the batch going through, and whether it is a fit batch

    def hook_of(index):
        def hook(module, args):
            collector.add(index, current["batch"], current["fit"], args[0])

        return hook

    handles = [neuron_map.output(layer).register_forward_pre_hook(hook_of(index))
               for index, (layer, neuron_map) in enumerate(collector.mlps)]
    try:
        for step, (batch, fit) in enumerate(zip(batches, is_fit)):
            current.update(batch=batch, fit=fit)
            stack.backbone(**model_inputs(batch))
            collector.batches = step + 1
    finally:
        for handle in handles:
            handle.remove()
    return collector.grams(accelerator)


def corrected_projection(original: nn.Linear, kept: Sequence[int], delta: torch.Tensor):
    """(weight, bias) of the sliced output projection plus the refit correction ``delta`` (``gram`` layout:
    kept columns, then the bias), in ``original``'s dtype and device."""
    weight = original.weight.detach().to("cpu", torch.float64)[:, list(kept)] + delta[:, : len(kept)]
    bias = None
    if original.bias is not None:
        bias = (original.bias.detach().to("cpu", torch.float64) + delta[:, len(kept)]).to(
            original.bias.device, original.bias.dtype)
    return weight.to(original.weight.device, original.weight.dtype), bias


def token_mask(batch: dict, hidden: torch.Tensor) -> torch.Tensor | None:
    """Text encoders: the attention mask (padding tokens do not count); images: every token counts."""
    mask = batch.get("attention_mask")
    return mask if mask is not None and tuple(mask.shape) == tuple(hidden.shape[:-1]) else None


def split_heldout(batches: Sequence[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """Fit batches first, the last ``fraction`` (at least one) held out. Whole batches keep the in-batch
    criterion meaningful and the split identical for any number of processes."""
    if len(batches) < 2:
        raise DataError(
            f"reconstruction needs at least 2 calibration batches (whole batches are held out) but got "
            f"{len(batches)}: raise reconstruct.num_samples or lower the data's batch_size"
        )
    heldout = min(len(batches) - 1, max(1, round(fraction * len(batches))))
    return list(batches[:-heldout]), list(batches[-heldout:])


def all_reduce_sum(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator is not None and accelerator.num_processes > 1:
        return accelerator.reduce(tensor, reduction="sum")
    return tensor
