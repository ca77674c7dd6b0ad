"""First-order Taylor importance of every MLP hidden neuron (AMP, arXiv 2603.08100).

For image n and neuron j: c_nj = Σ_tokens a·g, with a the input of the MLP's output projection (the
post-activation hidden state) and g = ∂E/∂a. Importance I_j = mean over every sample on every process of
|c_nj| (the signed mean is kept too). Parameters get no gradients: the hidden states entering the first layer
are made to require grad, and ``torch.autograd.grad`` returns only the activation gradients.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..families import MlpStack, resolve
from ..files.artifacts import SCORES_FILE, SCORES_META_FILE


@dataclass
class NeuronScores:
    """Per-layer neuron importances (float64, original neuron numbering)."""

    abs: list[torch.Tensor]
    signed: list[torch.Tensor]
    num_samples: int
    metadata: dict = field(default_factory=dict)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{i}.abs": s.contiguous() for i, s in enumerate(self.abs)}
        tensors.update({f"layer.{i}.signed": s.contiguous() for i, s in enumerate(self.signed)})
        save_file(tensors, str(directory / SCORES_FILE))
        meta = {"num_samples": self.num_samples, "num_layers": len(self.abs), **self.metadata}
        (directory / SCORES_META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> NeuronScores:
        directory = Path(directory)
        if not (directory / SCORES_FILE).is_file():
            raise FileNotFoundError(f"no {SCORES_FILE} in {directory}: run `amp-hf score` first")
        tensors = load_file(str(directory / SCORES_FILE))
        meta = json.loads((directory / SCORES_META_FILE).read_text())
        layers = meta.pop("num_layers")
        return cls(
            abs=[tensors[f"layer.{i}.abs"] for i in range(layers)],
            signed=[tensors[f"layer.{i}.signed"] for i in range(layers)],
            num_samples=meta.pop("num_samples"),
            metadata=meta,
        )


@contextlib.contextmanager
def _activation_capture(stack: MlpStack):
    """Record the input of every layer's output projection; make the layer stack's input require grad."""
    model, layers = stack.model, stack.layers
    activations: dict[int, torch.Tensor] = {}
    handles = []

    def make_input_require_grad(module, args):
        return (args[0].detach().requires_grad_(True), *args[1:])

    def recorder(index):
        def hook(module, args):
            activations[index] = args[0]

        return hook

    handles.append(layers[0].register_forward_pre_hook(make_input_require_grad))
    for index, (layer, neuron_map) in enumerate(stack.mlps()):
        handles.append(neuron_map.output(layer).register_forward_pre_hook(recorder(index)))
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in frozen:
        parameter.requires_grad_(False)
    try:
        yield activations
    finally:
        for handle in handles:
            handle.remove()
        for parameter, flag in frozen:
            parameter.requires_grad_(flag)


# scoring.precision -> the autocast dtype of the forward and backward passes (None: the model's own dtype)
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def taylor_scores(model: nn.Module | MlpStack, loader, criterion, accelerator=None,
                  max_batches: int | None = None, precision: str = "fp32",
                  on_activations: Callable[[int, dict, list[torch.Tensor]], None] | None = None) -> NeuronScores:
    """Accumulate Taylor importances over ``loader`` (prepared with ``split_batches=True`` under accelerate).

    ``precision`` ``bf16`` / ``fp16`` runs the passes under autocast: the weights stay as they are (no second
    copy), the matmuls run in half precision; the products a·g and their sums stay float64. (On CPU the measured
    peak memory did not drop: docs/bench_scale.md.)

    The criterion's local value is weighted by local/global batch size, so the gradients equal those of the
    global-batch criterion whatever the number of processes (1-process and N-process scores agree).

    ``on_activations(step, batch, activations)``: called after each batch's forward pass with every layer's
    output-projection input (e.g. to accumulate the reconstruction's Gram statistics from this pass instead of
    a second one).
    """
    stack = resolve(model)
    model = stack.model
    widths = stack.widths()
    device = next(model.parameters()).device
    abs_sum = [torch.zeros(w, dtype=torch.float64, device=device) for w in widths]
    signed_sum = [torch.zeros(w, dtype=torch.float64, device=device) for w in widths]
    count = torch.zeros((), dtype=torch.float64, device=device)
    world = accelerator.num_processes if accelerator is not None else 1
    is_main = accelerator is None or accelerator.is_local_main_process
    was_training = model.training
    model.eval()
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"scoring precision must be one of {', '.join(AUTOCAST_DTYPES)}; got {precision!r}")
    dtype = AUTOCAST_DTYPES[precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    with _activation_capture(stack) as activations:
        for step, batch in enumerate(tqdm(loader, total=total, desc="Taylor scores", disable=not is_main)):
            if max_batches is not None and step >= max_batches:
                break
            activations.clear()
            local = next(iter(batch.values())).shape[0]
            with autocast():
                loss = criterion(stack, batch) / world  # equal shards: local/global = 1/world
            ordered = [activations[i] for i in range(len(widths))]
            if on_activations is not None:
                on_activations(step, batch, ordered)
            grads = torch.autograd.grad(loss, ordered)
            for index, (a, g) in enumerate(zip(ordered, grads)):
                contribution = (a.detach().double() * g.double()).flatten(1, -2).sum(dim=1)  # Σ over tokens -> [B, H]
                abs_sum[index] += contribution.abs().sum(dim=0)
                signed_sum[index] += contribution.sum(dim=0)
            count += local
    model.train(was_training)
    if accelerator is not None and world > 1:
        abs_sum = [accelerator.reduce(s, reduction="sum") for s in abs_sum]
        signed_sum = [accelerator.reduce(s, reduction="sum") for s in signed_sum]
        count = accelerator.reduce(count, reduction="sum")
    if count.item() == 0:
        raise ValueError("no scoring samples: the data source is empty or smaller than one batch")
    return NeuronScores(
        abs=[(s / count).cpu() for s in abs_sum],
        signed=[(s / count).cpu() for s in signed_sum],
        num_samples=int(count.item()),
    )
