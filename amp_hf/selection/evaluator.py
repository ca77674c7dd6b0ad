"""Criterion evaluation on fixed batches that re-runs only the layers a candidate changes.

AMP's search changes one layer at a time, last to first, so everything before the searched layer is still the
original network. The inputs of every layer are cached once; a candidate for layer l is then scored from
layer l with its cached input (``layer_stack.start_at_layer``): the same numbers as a full forward pass,
without recomputing the unchanged prefix.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from ..data import model_inputs
from ..families import MlpStack, resolve
from ..layer_stack import start_at_layer

logger = logging.getLogger(__name__)


class CriterionEvaluator:
    """Mean criterion value over fixed batches, all-reduced across processes.

    ``batches``: this process's shards of the evaluation batches (identical for every candidate).
    ``cache_gb``: memory allowed for cached layer inputs; above it, every evaluation runs the full network.
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
        self.layer_inputs: list[list[torch.Tensor]] | None = None
        self.evaluations = 0

    @property
    def layers(self) -> nn.ModuleList:
        return self.stack.layers

    @torch.no_grad()
    def cache_inputs(self) -> bool:
        """Record every layer's input for every batch (one full pass). False if it would exceed ``cache_gb``."""
        layers = self.layers
        captured: list[list[torch.Tensor]] = [[] for _ in layers]

        def recorder(index):
            def hook(module, args):
                captured[index].append(args[0].detach())

            return hook

        handles = [layer.register_forward_pre_hook(recorder(i)) for i, layer in enumerate(layers)]
        try:
            first = self.batches[0]
            self.adapter.embed(self.model, model_inputs(first))
            per_batch = sum(t.numel() * t.element_size() for t in (c[0] for c in captured))
            if per_batch * len(self.batches) > self.cache_gb * 2**30:
                logger.warning(
                    "layer-input cache would need %.1f GB > search.cache_gb=%.1f: evaluating full passes instead",
                    per_batch * len(self.batches) / 2**30, self.cache_gb,
                )
                return False
            for batch in self.batches[1:]:
                self.adapter.embed(self.model, model_inputs(batch))
        finally:
            for handle in handles:
                handle.remove()
        self.layer_inputs = captured
        return True

    @torch.no_grad()
    def evaluate(self, start: int = 0) -> float:
        """Mean criterion over the batches; layers before ``start`` must be unchanged since ``cache_inputs``."""
        self.evaluations += 1
        values = []
        use_cache = self.layer_inputs is not None and start > 0
        for index, batch in enumerate(self.batches):
            context = start_at_layer(self.layers, start, self.layer_inputs[start][index]) if use_cache \
                else contextlib.nullcontext()
            with context:
                values.append(self.criterion(self.stack, batch).double())
        value = torch.stack(values).mean()
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            value = self.accelerator.reduce(value, reduction="mean")
        return float(value)
