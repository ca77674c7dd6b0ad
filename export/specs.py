"""Declarative export specs: which graphs each supported architecture exports, with which named inputs and
outputs, and the dummy inputs they are traced and validated with.

This is optimum's ``OnnxConfig`` idea (one small spec per architecture + input generators) without optimum,
which cannot be installed next to transformers 5. Every supported model class maps to one
``ArchitectureSpec``; CLIP / SigLIP full models export their vision and text towers as separate graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from amp_hf import get_adapter
from amp_hf.families import TEXT_SEQUENCE_LENGTH

Modality = Literal["image", "text"]
TRACE_BATCH_SIZE = 2  # >1, so torch.export does not specialise the batch axis to 1
TRACE_SEQUENCE_LENGTH = 16  # text graphs with a dynamic sequence axis are traced at (at most) this length


@dataclass(frozen=True)
class Embedding:
    """How the runner reads one embedding per example from a graph's outputs."""

    output: str
    pooling: Literal["none", "cls", "masked_mean"] = "none"

    def pool(self, outputs: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> np.ndarray:
        """One embedding per example from a graph's (or the model's) ``outputs`` for ``inputs``."""
        output = outputs[self.output]
        if self.pooling == "cls":
            return output[:, 0]
        if self.pooling == "masked_mean":
            mask = np.asarray(inputs["attention_mask"])[..., None].astype(output.dtype)
            return (output * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        return output


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: ``{name}.onnx`` with ``inputs`` -> ``outputs`` computed by ``forward(model, **inputs)``.

    ``outputs`` lists every output the forward may return, in graph order; outputs the model does not have
    (``pooler_output`` of a ViT built without its pooler) are left out of the graph.
    """

    name: str
    modality: Modality
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    forward: Callable[..., dict]
    embedding: Embedding | None = None
    text_padding: Literal["longest", "max_length"] = "longest"  # how the model's tokenizer is meant to pad
    fixed_sequence_length: bool = False  # text graphs of models that take exactly their context length (open_clip)

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


@dataclass(frozen=True)
class ArchitectureSpec:
    task: Literal[
        "feature-extraction",
        "image-classification",
        "text-classification",
        "zero-shot-image-classification",
    ]
    graphs: tuple[GraphSpec, ...]
    zero_shot: Literal["softmax", "sigmoid"] | None = None  # CLIP: softmax over labels; SigLIP: per-label sigmoid


class GraphModule(nn.Module):
    """One graph of a model as a module: named tensor inputs in, a dict of the spec's outputs out."""

    def __init__(self, model: nn.Module, spec: GraphSpec):
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.spec.forward(self.model, **inputs)
        return {name: outputs[name] for name in self.spec.outputs if outputs.get(name) is not None}


# -- forwards ------------------------------------------------------------------------------------------


def _whole_model(model: nn.Module, **inputs: torch.Tensor) -> dict:
    return dict(model(**inputs, return_dict=True))


def _clip_vision(model: nn.Module, pixel_values: torch.Tensor) -> dict:
    vision = model.vision_model(pixel_values=pixel_values)
    return {
        "last_hidden_state": vision.last_hidden_state,
        "pooler_output": vision.pooler_output,
        "image_embeds": model.visual_projection(vision.pooler_output),
    }


def _clip_text(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    text = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
    return {
        "last_hidden_state": text.last_hidden_state,
        "pooler_output": text.pooler_output,
        "text_embeds": model.text_projection(text.pooler_output),
    }


def _siglip_vision(model: nn.Module, pixel_values: torch.Tensor) -> dict:
    vision = model.vision_model(pixel_values=pixel_values)  # pooler_output = the attention-pooling head
    return {
        "last_hidden_state": vision.last_hidden_state,
        "image_embeds": vision.pooler_output,
    }


def _siglip_text(model: nn.Module, input_ids: torch.Tensor) -> dict:
    text = model.text_model(input_ids=input_ids)  # SigLIP is trained on max_length padding, without a mask
    return {
        "last_hidden_state": text.last_hidden_state,
        "text_embeds": text.pooler_output,
    }


def _open_clip_vision(model: nn.Module, pixel_values: torch.Tensor) -> dict:
    tower = model.vision_model(pixel_values=pixel_values)  # pooler_output: before the final projection
    return {
        "last_hidden_state": tower.last_hidden_state,
        "pooler_output": tower.pooler_output,
        "image_embeds": model.project_image(tower.pooler_output),
    }


def _open_clip_text(model: nn.Module, input_ids: torch.Tensor) -> dict:
    # open_clip pools the end token it finds in the ids (no attention mask) and projects it
    return {"text_embeds": model.get_text_features(input_ids=input_ids).pooler_output}


# -- the table -------------------------------------------------------------------------------------------

_PIXELS = ("pixel_values",)
_TOKENS = ("input_ids", "attention_mask")
_HIDDEN_AND_POOLED = ("last_hidden_state", "pooler_output")


def _image_backbone(embedding: Embedding) -> ArchitectureSpec:
    graph = GraphSpec("model", "image", _PIXELS, _HIDDEN_AND_POOLED, _whole_model, embedding)
    return ArchitectureSpec("feature-extraction", (graph,))


def _classifier(modality: Modality, task) -> ArchitectureSpec:
    inputs = _PIXELS if modality == "image" else _TOKENS
    return ArchitectureSpec(task, (GraphSpec("model", modality, inputs, ("logits",), _whole_model),))


_CLS = Embedding("last_hidden_state", "cls")
_POOLED = Embedding("pooler_output")

# Keyed by the amp_* class a model is (or prunes into), so stock and pruned models share one spec.
SPECS: dict[str, ArchitectureSpec] = {
    "AmpViTModel": _image_backbone(_CLS),  # ViT's tanh pooler is not an embedding: the CLS token is
    "AmpViTForImageClassification": _classifier("image", "image-classification"),
    "AmpDinov2Model": _image_backbone(_POOLED),
    "AmpDinov2ForImageClassification": _classifier("image", "image-classification"),
    "AmpCLIPVisionModel": _image_backbone(_POOLED),
    "AmpCLIPVisionModelWithProjection": ArchitectureSpec(
        "feature-extraction",
        (
            GraphSpec(
                "model",
                "image",
                _PIXELS,
                ("image_embeds", "last_hidden_state"),
                _whole_model,
                Embedding("image_embeds"),
            ),
        ),
    ),
    "AmpSiglipVisionModel": _image_backbone(_POOLED),
    "AmpCLIPModel": ArchitectureSpec(
        "zero-shot-image-classification",
        (
            GraphSpec(
                "vision_model",
                "image",
                _PIXELS,
                (*_HIDDEN_AND_POOLED, "image_embeds"),
                _clip_vision,
                Embedding("image_embeds"),
            ),
            GraphSpec(
                "text_model",
                "text",
                _TOKENS,
                (*_HIDDEN_AND_POOLED, "text_embeds"),
                _clip_text,
                Embedding("text_embeds"),
            ),
        ),
        zero_shot="softmax",
    ),
    "AmpSiglipModel": ArchitectureSpec(
        "zero-shot-image-classification",
        (
            GraphSpec(
                "vision_model",
                "image",
                _PIXELS,
                ("last_hidden_state", "image_embeds"),
                _siglip_vision,
                Embedding("image_embeds"),
            ),
            GraphSpec(
                "text_model",
                "text",
                ("input_ids",),
                ("last_hidden_state", "text_embeds"),
                _siglip_text,
                Embedding("text_embeds"),
                text_padding="max_length",
            ),
        ),
        zero_shot="sigmoid",
    ),
    "AmpOpenCLIPModel": ArchitectureSpec(
        "zero-shot-image-classification",
        (
            GraphSpec(
                "vision_model",
                "image",
                _PIXELS,
                (*_HIDDEN_AND_POOLED, "image_embeds"),
                _open_clip_vision,
                Embedding("image_embeds"),
            ),
            GraphSpec(
                "text_model",
                "text",
                ("input_ids",),
                ("text_embeds",),
                _open_clip_text,
                Embedding("text_embeds"),
                text_padding="max_length",
                fixed_sequence_length=True,
            ),
        ),
        zero_shot="softmax",
    ),
    "AmpBertModel": ArchitectureSpec(
        "feature-extraction",
        (
            GraphSpec(
                "model",
                "text",
                _TOKENS,
                _HIDDEN_AND_POOLED,
                _whole_model,
                Embedding("last_hidden_state", "masked_mean"),
            ),
        ),
    ),
    "AmpBertForSequenceClassification": _classifier("text", "text-classification"),
    # timm through TimmWrapper: pooler_output is timm's pre-logits feature (CLS token or token average)
    "AmpTimmWrapperModel": _image_backbone(_POOLED),
    "AmpTimmWrapperForImageClassification": _classifier("image", "image-classification"),
}


def architecture_spec(model: nn.Module) -> tuple[str, ArchitectureSpec]:
    """The spec of ``model`` and its architecture name (raises ``UnsupportedModelError`` for other models)."""
    name = get_adapter(model).amp_class(model).__name__
    return name, SPECS[name]


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
    return min(length, TEXT_SEQUENCE_LENGTH) if get_adapter(model).name == "bert" else length


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
