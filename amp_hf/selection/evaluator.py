"""Criterion evaluation on fixed batches that re-runs only the layers a candidate changes.

AMP's search changes one layer at a time, last to first, so everything before the searched layer is still the
original network. The inputs of every layer are cached once; a candidate for layer l is then scored from
layer l with its cached input (``layer_stack.start_at_layer``): the same numbers as a full forward pass,
without recomputing the unchanged prefix.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import nn

from ..data import model_inputs
from ..families import MlpStack, resolve
from ..layer_stack import start_at_layer

logger = logging.getLogger(__name__)


class CriterionEvaluator:
    """Mean criterion value over fixed batches, all-reduced across processes.

    ``batches``: this process's shards of the evaluation batches (identical for every candidate).
    ``cache_gb``: memory allowed for cached layer inputs; when every layer's do not fit, every k-th layer's are
    cached (``layer_inputs`` holds None for the others); when not even one layer's fit, every evaluation runs
    the full network.
    """

    def __init__(self, model: nn.Module | MlpStack, criterion, batches: list[dict], accelerator=None,
                 cache_gb: float = 4.0):
        self.stack = resolve(model)
        self.model = self.stack.model
        self.adapter = self.stack.adapter
        self.criterion = criterion
        self.batches = batches
        self.accelerator = accelerator
        self.cache_gb = cache_gb
        self.layer_inputs: list[list[torch.Tensor] | None] | None = None
        self.stride = 1  # cached layers: every one, or every ``stride``-th (bounded cache)
        self.evaluations = 0

    @property
    def layers(self) -> nn.ModuleList:
        return self.stack.layers

    @torch.no_grad()
    def cache_inputs(self) -> bool:
        """Record layer inputs for every batch (one full pass) within ``cache_gb``: every layer's when they fit,
        else every k-th layer's (the smallest k that fits; a candidate at layer l then runs from the nearest
        cached layer at or below l: the same numbers, at most k - 1 extra layers). False when not even one
        layer's inputs fit."""
        layers = self.layers
        captured: list[list[torch.Tensor] | None] = [[] for _ in layers]

        def recorder(index):
            def hook(module, args):
                if captured[index] is not None:
                    captured[index].append(args[0].detach())

            return hook

        handles = [layer.register_forward_pre_hook(recorder(i)) for i, layer in enumerate(layers)]
        try:
            self.adapter.embed(self.model, model_inputs(self.batches[0]))
            per_layer = max(c[0].numel() * c[0].element_size() for c in captured) * len(self.batches)
            budget = self.cache_gb * 2**30
            stride = 1
            if per_layer * len(layers) > budget:
                fitting = int(budget // per_layer)
                if fitting < 1 or len(layers) < 2:
                    logger.warning(
                        "layer-input cache needs %.2f GB per layer > search.cache_gb=%.2f: evaluating full passes "
                        "instead", per_layer / 2**30, self.cache_gb)
                    return False
                stride = math.ceil((len(layers) - 1) / fitting)
                logger.warning(
                    "layer-input cache of every layer would need %.1f GB > search.cache_gb=%.2f: caching every "
                    "%d-th layer's input (%.2f GB; each evaluation re-runs at most %d more layers)",
                    per_layer * len(layers) / 2**30, self.cache_gb, stride,
                    per_layer * ((len(layers) - 1) // stride) / 2**30, stride - 1)
                for index in range(len(layers)):  # layer 0 needs none: starting there is the full pass
                    if index == 0 or index % stride:
                        captured[index] = None
            for batch in self.batches[1:]:
                self.adapter.embed(self.model, model_inputs(batch))
        finally:
            for handle in handles:
                handle.remove()
        self.layer_inputs = captured
        self.stride = stride
        return True

    def cached_start(self, start: int) -> int:
        """The nearest layer at or below ``start`` whose inputs are cached (0: none, run the full pass)."""
        if self.layer_inputs is None:
            return 0
        return next((index for index in range(start, 0, -1) if self.layer_inputs[index] is not None), 0)

    @torch.no_grad()
    def evaluate(self, start: int = 0) -> float:
        """Mean criterion over the batches; layers before ``start`` must be unchanged since ``cache_inputs``
        (then the pass starts at the nearest cached layer at or below ``start``)."""
        self.evaluations += 1
        values = []
        begin = self.cached_start(start)
        for index, batch in enumerate(self.batches):
            context = start_at_layer(self.layers, begin, self.layer_inputs[begin][index]) if begin > 0 \
                else contextlib.nullcontext()
            with context:
                values.append(self.criterion(self.stack, batch).double())
        value = torch.stack(values).mean()
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            value = self.accelerator.reduce(value, reduction="mean")
        return float(value)
