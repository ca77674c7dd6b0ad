"""Family adapters: where a supported model keeps its prunable MLPs and how the criterion reads it.

One registry (timm-style single funnel): every other module asks ``get_adapter(model)`` and never
hard-codes a transformers path. Layers and MLP linears are found by probing module types, because stock
tensor names moved across transformers 5.x minors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from transformers import (
    BertForSequenceClassification,
    BertModel,
    CLIPModel,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2ForImageClassification,
    Dinov2Model,
    PreTrainedConfig,
    PreTrainedModel,
    SiglipModel,
    SiglipVisionModel,
    ViTForImageClassification,
    ViTModel,
)

from . import models as amp_models
from .models.amp_layer_widths import find_mlp_linears, global_width_access, mlp_width

TEXT_SEQUENCE_LENGTH = 128  # native "input size" for text encoders in FLOP accounting


class UnsupportedModelError(ValueError):
    pass


def _cls_token(outputs, batch) -> torch.Tensor:
    return outputs.last_hidden_state[:, 0]


def _pooler_output(outputs, batch) -> torch.Tensor:
    # CLIP / DINOv2: the final-norm CLS token; SigLIP: the attention-pooling head (no CLS token exists).
    if outputs.pooler_output is None:  # SigLIP built without its head
        return outputs.last_hidden_state.mean(dim=1)
    return outputs.pooler_output


def _masked_mean(outputs, batch) -> torch.Tensor:
    # sentence-transformers' mean pooling: padding tokens do not count.
    hidden = outputs.last_hidden_state
    mask = batch.get("attention_mask")
    if mask is None:
        return hidden.mean(dim=1)
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@dataclass(frozen=True)
class FamilyAdapter:
    """What amp-hf needs to know about one architecture family.

    ``backbone_class``: the stock module that owns the prunable layer stack (the whole model for
    ``ViTModel``; ``model.vision_model`` for ``CLIPModel``), found by ``isinstance`` probing.
    ``model_classes``: stock model class -> its amp_* pruned class (the amp class maps to itself).
    ``pool``: the embedding the label-free criterion reads, from the backbone's outputs.
    Which (sub-)config owns the widths is declared once, on the amp class (``_amp_width_config``).
    """

    name: str
    backbone_class: type
    model_classes: dict[type, type]
    modality: str  # "image" | "text"
    pool: Callable
    notes: str = ""
    _amp_to_stock: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._amp_to_stock.update({amp: stock for stock, amp in self.model_classes.items()})

    # -- structure -------------------------------------------------------------------------------
    def supports(self, model: nn.Module) -> bool:
        return type(model) in self.model_classes or type(model) in self._amp_to_stock

    def amp_class(self, model: nn.Module) -> type:
        return type(model) if type(model) in self._amp_to_stock else self.model_classes[type(model)]

    def backbone(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if isinstance(module, self.backbone_class):
                return module
        raise UnsupportedModelError(f"{type(model).__name__} has no {self.backbone_class.__name__} inside")

    def layers_path(self, model: nn.Module) -> str:
        """Dotted path (from ``model``) of the ModuleList whose every element holds a recognised MLP."""
        backbone = self.backbone(model)
        backbone_path = next(name for name, module in model.named_modules() if module is backbone)
        for name, module in backbone.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) and all(find_mlp_linears(m) for m in module):
                return f"{backbone_path}.{name}" if backbone_path else name
        raise UnsupportedModelError(f"no layer stack with recognised MLPs in {type(backbone).__name__}")

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path(model))

    def widths(self, model: nn.Module) -> list[int]:
        """Current hidden width of every layer's MLP, read from the modules themselves."""
        return [mlp_width(layer) for layer in self.layers(model)]

    def width_config(self, model: nn.Module, config: PreTrainedConfig | None = None) -> PreTrainedConfig:
        """The (sub-)config of ``model`` (or ``config``, of the same class) that owns the MLP widths."""
        return self.amp_class(model)._amp_widths_config(config if config is not None else model.config)

    # -- criterion input -------------------------------------------------------------------------
    def embed(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The embedding AMP's entropy criterion reads (before any projection or classifier head)."""
        backbone = self.backbone(model)
        return self.pool(backbone(**batch), batch)

    def dummy_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        """Inputs at the model's native size (images: config image size; text: 128 tokens, or fewer if the
        model's position table is shorter)."""
        config = self.backbone(model).config
        device = next(model.parameters()).device
        if self.modality == "image":
            size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
            height, width = (size, size) if isinstance(size, int) else size
            dtype = next(model.parameters()).dtype
            return {
                "pixel_values": torch.zeros(batch_size, config.num_channels, height, width, device=device, dtype=dtype)
            }
        length = min(TEXT_SEQUENCE_LENGTH, getattr(config, "max_position_embeddings", TEXT_SEQUENCE_LENGTH))
        ids = torch.ones(batch_size, length, dtype=torch.long, device=device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    # -- pruned config -----------------------------------------------------------------------------
    def pruned_config(
        self, model: PreTrainedModel, widths: list[int], amp_pruning: dict | None
    ) -> PreTrainedConfig:
        """The amp_* config of ``model`` with the given per-layer widths (explicit for every layer)."""
        amp_cls = self.amp_class(model)
        config = model.config
        with global_width_access(self.width_config(model)):
            values = config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "per_layer_config"):
            values.pop(key, None)
        values.pop("serialize_explicit_per_layer_config", None)
        per_layer = {i: {"intermediate_size": int(w)} for i, w in enumerate(widths)}
        width_key = amp_cls._amp_width_config
        if width_key:
            sub = dict(values[width_key])
            for key in ("model_type", "transformers_version", "per_layer_config", "serialize_explicit_per_layer_config"):
                sub.pop(key, None)
            sub["per_layer_config"] = per_layer
            values[width_key] = sub
        else:
            values["per_layer_config"] = per_layer
        values["amp_pruning"] = amp_pruning
        new_config = amp_cls.config_class(**values)
        new_config.architectures = [amp_cls.__name__]
        self.width_config(model, new_config).serialize_explicit_per_layer_config = True
        return new_config


def _classes(*pairs: tuple[type, type]) -> dict[type, type]:
    return dict(pairs)


M = amp_models
ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.name: adapter
    for adapter in (
        FamilyAdapter(
            name="vit",
            backbone_class=ViTModel,
            model_classes=_classes(
                (ViTModel, M.AmpViTModel), (ViTForImageClassification, M.AmpViTForImageClassification)
            ),
            modality="image",
            pool=_cls_token,
            notes="embedding: final-norm CLS token (ViTModel's tanh pooler is not used)",
        ),
        FamilyAdapter(
            name="clip",
            backbone_class=CLIPVisionModel,
            model_classes=_classes(
                (CLIPVisionModel, M.AmpCLIPVisionModel),
                (CLIPVisionModelWithProjection, M.AmpCLIPVisionModelWithProjection),
                (CLIPModel, M.AmpCLIPModel),
            ),
            modality="image",
            pool=_pooler_output,
            notes="vision tower pruned, text tower untouched; embedding: post-LN CLS before visual_projection",
        ),
        FamilyAdapter(
            name="siglip",
            backbone_class=SiglipVisionModel,
            model_classes=_classes(
                (SiglipVisionModel, M.AmpSiglipVisionModel), (SiglipModel, M.AmpSiglipModel)
            ),
            modality="image",
            pool=_pooler_output,
            notes="encoder layers pruned; the attention-pooling head's MLP is kept whole; "
            "embedding: the pooling head's output",
        ),
        FamilyAdapter(
            name="dinov2",
            backbone_class=Dinov2Model,
            model_classes=_classes(
                (Dinov2Model, M.AmpDinov2Model), (Dinov2ForImageClassification, M.AmpDinov2ForImageClassification)
            ),
            modality="image",
            pool=_pooler_output,
            notes="plain MLP and SwiGLU (gate/up rows pruned together); embedding: final-norm CLS",
        ),
        FamilyAdapter(
            name="bert",
            backbone_class=BertModel,
            model_classes=_classes(
                (BertModel, M.AmpBertModel), (BertForSequenceClassification, M.AmpBertForSequenceClassification)
            ),
            modality="text",
            pool=_masked_mean,
            notes="BERT-style sentence encoders (e.g. all-MiniLM-L6-v2); embedding: attention-masked token mean",
        ),
    )
}

from .open_clip_family import OPEN_CLIP_ADAPTER  # noqa: E402  (its adapter subclasses FamilyAdapter above)

ADAPTERS[OPEN_CLIP_ADAPTER.name] = OPEN_CLIP_ADAPTER


def supported_models() -> list[str]:
    return sorted(cls.__name__ for adapter in ADAPTERS.values() for cls in adapter.model_classes)


def get_adapter(model: nn.Module) -> FamilyAdapter:
    for adapter in ADAPTERS.values():
        if adapter.supports(model):
            return adapter
    raise UnsupportedModelError(
        f"amp-hf does not support {type(model).__name__}. Supported model classes: "
        f"{', '.join(supported_models())}. Load the checkpoint with one of these classes "
        f"(e.g. AutoModel / AutoModelForImageClassification) or open an issue for the family."
    )

