"""Export specs by architecture (declared on each family's ``ModelClass`` entries, types in
``amp_hf.families.io_spec``), graph modules, and the dummy inputs graphs are traced and validated with."""

from __future__ import annotations

import torch
from torch import nn

from amp_hf import ADAPTERS, UnsupportedModelError, get_adapter
from amp_hf.families import TEXT_SEQUENCE_LENGTH
from amp_hf.families.io_spec import ArchitectureSpec, Embedding, GraphSpec, Modality

__all__ = ["SPECS", "ArchitectureSpec", "Embedding", "GraphModule", "GraphSpec", "Modality", "architecture_spec"]

TRACE_BATCH_SIZE = 2  # >1, so torch.export does not specialise the batch axis to 1
TRACE_SEQUENCE_LENGTH = 16  # text graphs with a dynamic sequence axis are traced at (at most) this length


class GraphModule(nn.Module):
    """One graph of a model as a module: named tensor inputs in, a dict of the spec's outputs out."""

    def __init__(self, model: nn.Module, spec: GraphSpec):
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.spec.forward(self.model, **inputs)
        return {name: outputs[name] for name in self.spec.outputs if outputs.get(name) is not None}


# Keyed by the amp_* class a model is (or prunes into), so stock and pruned models share one spec; declared
# on each family's ModelClass entries.
SPECS: dict[str, ArchitectureSpec] = {
    entry.amp.__name__: entry.export for adapter in ADAPTERS.values() for entry in adapter.classes if entry.export
}


def architecture_spec(model: nn.Module) -> tuple[str, ArchitectureSpec]:
    """The spec of ``model`` and its architecture name (raises ``UnsupportedModelError`` for other models)."""
    adapter = get_adapter(model)
    name = adapter.amp_class(model).__name__
    spec = adapter.model_class(model).export
    if spec is None:
        raise UnsupportedModelError(f"{name} has no export spec yet: amp-hf cannot export the {adapter.name} family")
    return name, spec


# -- dummy inputs ---------------------------------------------------------------------------------------


def vision_config(model: nn.Module):
    return getattr(model.config, "vision_config", None) or model.config


def text_config(model: nn.Module):
    return getattr(model.config, "text_config", None) or model.config


def image_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) at the model's native resolution."""
    config = vision_config(model)
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return config.num_channels, height, width


def max_sequence_length(model: nn.Module) -> int:
    """The longest text the model takes: its position table (BERT-style encoders: capped at 128 tokens)."""
    length = text_config(model).max_position_embeddings
    return min(length, TEXT_SEQUENCE_LENGTH) if get_adapter(model).modality == "text" else length


def dummy_inputs(
    model: nn.Module,
    spec: GraphSpec,
    batch_size: int,
    sequence_length: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Seeded inputs of ``spec``'s graph: normalised-image-like pixels, or token ids with some padding."""
    generator = torch.Generator().manual_seed(seed)
    if spec.modality == "image":
        return {"pixel_values": torch.randn(batch_size, *image_shape(model), generator=generator)}
    length = sequence_length or min(TRACE_SEQUENCE_LENGTH, max_sequence_length(model))
    return _token_inputs(text_config(model), spec.inputs, batch_size, length, generator)


def _token_inputs(config, names: tuple[str, ...], batch_size: int, length: int, generator) -> dict:
    special = [i for i in (config.pad_token_id, config.bos_token_id, config.eos_token_id) if i is not None]
    low = min(max(special, default=-1) + 1, config.vocab_size - 1)  # ordinary tokens only
    input_ids = torch.randint(low, config.vocab_size, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if "attention_mask" in names and length > 2:
        attention_mask[1::2, -(length // 3) - 1 :] = 0  # every other row padded, as a batched tokenizer does
        input_ids[attention_mask == 0] = config.pad_token_id or 0
    if config.eos_token_id is not None:
        last = attention_mask.sum(dim=1) - 1
        input_ids[torch.arange(batch_size), last] = config.eos_token_id
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    return {name: inputs[name] for name in names}
