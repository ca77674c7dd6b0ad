"""Export I/O specs: which graphs a model class exports, with which named inputs and outputs.

This is optimum's ``OnnxConfig`` idea (one small spec per architecture) without optimum, which cannot be
installed next to transformers 5. Each family's ``ModelClass`` entries (``amp_hf.families``) carry their
spec; the ``export`` package traces, validates and runs graphs from it. CLIP / SigLIP full models export
their vision and text towers as separate graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

Modality = Literal["image", "text"]
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


# -- the specs families use ---------------------------------------------------------------------------------

PIXELS = ("pixel_values",)
TOKENS = ("input_ids", "attention_mask")
HIDDEN_AND_POOLED = ("last_hidden_state", "pooler_output")
CLS_TOKEN = Embedding("last_hidden_state", "cls")
POOLED = Embedding("pooler_output")
MASKED_MEAN = Embedding("last_hidden_state", "masked_mean")


def backbone_spec(modality: Modality, embedding: Embedding) -> ArchitectureSpec:
    """A feature extractor: one graph, hidden states and pooled output."""
    inputs = PIXELS if modality == "image" else TOKENS
    graph = GraphSpec("model", modality, inputs, HIDDEN_AND_POOLED, _whole_model, embedding)
    return ArchitectureSpec("feature-extraction", (graph,))


def classifier_spec(modality: Modality) -> ArchitectureSpec:
    """A classifier head: one graph, logits."""
    inputs = PIXELS if modality == "image" else TOKENS
    task = "image-classification" if modality == "image" else "text-classification"
    return ArchitectureSpec(task, (GraphSpec("model", modality, inputs, ("logits",), _whole_model),))


def projected_image_spec() -> ArchitectureSpec:
    """CLIPVisionModelWithProjection: the image-text embedding and the hidden states."""
    graph = GraphSpec("model", "image", PIXELS, ("image_embeds", "last_hidden_state"), _whole_model,
                      Embedding("image_embeds"))
    return ArchitectureSpec("feature-extraction", (graph,))


def clip_spec() -> ArchitectureSpec:
    """CLIPModel: vision and text towers as two graphs, projected embeddings, softmax zero-shot."""
    return ArchitectureSpec(
        "zero-shot-image-classification",
        (
            GraphSpec("vision_model", "image", PIXELS, (*HIDDEN_AND_POOLED, "image_embeds"), _clip_vision,
                      Embedding("image_embeds")),
            GraphSpec("text_model", "text", TOKENS, (*HIDDEN_AND_POOLED, "text_embeds"), _clip_text,
                      Embedding("text_embeds")),
        ),
        zero_shot="softmax",
    )


def siglip_spec() -> ArchitectureSpec:
    """SiglipModel: the pooling head's output is the image embedding; text padded to max_length, no mask."""
    return ArchitectureSpec(
        "zero-shot-image-classification",
        (
            GraphSpec("vision_model", "image", PIXELS, ("last_hidden_state", "image_embeds"), _siglip_vision,
                      Embedding("image_embeds")),
            GraphSpec("text_model", "text", ("input_ids",), ("last_hidden_state", "text_embeds"), _siglip_text,
                      Embedding("text_embeds"), text_padding="max_length"),
        ),
        zero_shot="sigmoid",
    )


def open_clip_spec() -> ArchitectureSpec:
    """amp_open_clip: image tower (hidden, pooled, projected) and text tower (ids at the fixed context length,
    no mask) as two graphs, softmax zero-shot."""
    return ArchitectureSpec(
        "zero-shot-image-classification",
        (
            GraphSpec("vision_model", "image", PIXELS, (*HIDDEN_AND_POOLED, "image_embeds"), _open_clip_vision,
                      Embedding("image_embeds")),
            GraphSpec("text_model", "text", ("input_ids",), ("text_embeds",), _open_clip_text, Embedding("text_embeds"),
                      text_padding="max_length", fixed_sequence_length=True),
        ),
        zero_shot="softmax",
    )
