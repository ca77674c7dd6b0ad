"""Running a model from one layer of its prunable stack with a cached input.

The search evaluator and reconstruction re-run only the part of the network a change affects: layers
before ``index`` are skipped (they return their input) and layer ``index`` receives its cached input, while
the model's own forward still builds masks and position inputs as usual. The numbers equal a full forward
pass (same kernels, same batches); only the unchanged prefix is not recomputed.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .data import model_inputs
from .families import MlpStack, resolve


class PassThrough(nn.Module):
    """Stands in for a skipped layer: v5 encoder layers take the hidden states first and return a tensor."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def start_at_layer(layers: nn.ModuleList, index: int, hidden: torch.Tensor | None = None):
    """Inside: layers before ``index`` are skipped and layer ``index`` is fed ``hidden`` (its cached input;
    None = whatever reaches it). Everything is put back on exit."""
    originals = [layers[i] for i in range(index)]
    handle = None
    if hidden is not None:
        handle = layers[index].register_forward_pre_hook(lambda module, args: (hidden, *args[1:]))
    for i in range(index):
        layers[i] = PassThrough()
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        for i, layer in enumerate(originals):
            layers[i] = layer


class _LayerDone(Exception):
    """Ends the forward pass right after the wanted layer, carrying its output."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output


@torch.no_grad()
def run_layer(model: nn.Module | MlpStack, index: int, batch: dict, hidden: torch.Tensor | None = None,
              on_projection_input=None) -> torch.Tensor:
    """Output of layer ``index`` for ``batch``, run through the model's own (backbone) forward.

    Layers before ``index`` are skipped and layer ``index`` is fed ``hidden`` (its input, cached from the
    previous step; None = the embeddings, only right for layer 0). The pass stops after the layer.
    ``on_projection_input(h)`` sees the input of its MLP output projection.
    """
    return layer_output(model, index, batch, hidden, on_projection_input)


def layer_output(model: nn.Module | MlpStack, index: int, batch: dict, hidden: torch.Tensor | None = None,
                 on_projection_input=None) -> torch.Tensor:
    """``run_layer`` under the caller's grad mode (blockwise refinement differentiates through the layer)."""
    stack = resolve(model)
    layers = stack.layers
    layer, neuron_map = stack.mlps()[index]

    def finish(module, args, output):
        raise _LayerDone(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(finish)]
    if on_projection_input is not None:
        handles.append(neuron_map.output(layer).register_forward_pre_hook(
            lambda module, args: on_projection_input(args[0])))
    try:
        with start_at_layer(layers, index, hidden):
            stack.backbone(**model_inputs(batch))
    except _LayerDone as done:
        return done.output
    finally:
        for handle in handles:
            handle.remove()
    raise RuntimeError(f"layer {index} of {type(stack.model).__name__} did not run in the forward pass")
