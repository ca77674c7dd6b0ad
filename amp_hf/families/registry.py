"""The table of supported families: every other module asks ``get_adapter(model)`` (or, once per run,
``resolve(model)``) and never hard-codes a transformers path (timm-style single funnel). Also the derived
tables: every pruned class by name (``MODEL_CLASSES``) and the Auto classes each is registered with.
"""

from __future__ import annotations

import transformers
from torch import nn
from transformers import (
    AutoConfig,
    BertForSequenceClassification,
    BertModel,
    CLIPModel,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
    SiglipModel,
    SiglipVisionModel,
    ViTForImageClassification,
    ViTModel,
)

from .. import models as amp_models
from ..errors import UnsupportedModelError
from ..files.model_reference import files_to_download
from ..models import modeling_amp_dinov2_with_registers as dinov2_registers
from .base import FamilyAdapter, MlpStack, ModelClass, ResidualWriter, cls_token, masked_mean, pooler_output
from .io_spec import (
    CLS_TOKEN,
    MASKED_MEAN,
    POOLED,
    backbone_spec,
    classifier_spec,
    clip_spec,
    projected_image_spec,
    siglip_spec,
)
from .open_clip import OPEN_CLIP_ADAPTER
from .timm import TIMM_ADAPTER

ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.name: adapter
    for adapter in (
        FamilyAdapter(
            name="vit",
            classes=(
                ModelClass(ViTModel, amp_models.AmpViTModel, backbone_spec("image", CLS_TOKEN)),  # the tanh pooler is unused
                ModelClass(ViTForImageClassification, amp_models.AmpViTForImageClassification, classifier_spec("image"),
                           auto=("AutoModelForImageClassification",)),
            ),
            modality="image",
            pool=cls_token,
            summary="cls",
            notes="embedding: final-norm CLS token (ViTModel's tanh pooler is not used)",
            # attention output, read before layernorm_after; MLP output: the layer's output
            residual_layouts=((ResidualWriter("attention.o_proj", "layernorm_after"), ResidualWriter(None, None)),),
        ),
        FamilyAdapter(
            name="clip",
            classes=(
                ModelClass(CLIPVisionModel, amp_models.AmpCLIPVisionModel, backbone_spec("image", POOLED)),
                # no Auto class maps to it in transformers either: the saved class answers AutoModel
                ModelClass(CLIPVisionModelWithProjection, amp_models.AmpCLIPVisionModelWithProjection, projected_image_spec(),
                           auto=()),
                ModelClass(CLIPModel, amp_models.AmpCLIPModel, clip_spec(),
                           auto=("AutoModel", "AutoModelForZeroShotImageClassification")),
            ),
            modality="image",
            pool=pooler_output,
            summary="cls",
            image_text=True,
            joint_embedding="image_embeds",
            notes="vision tower pruned, text tower untouched; embedding: post-LN CLS before visual_projection",
            residual_layouts=((ResidualWriter("self_attn.out_proj", "layer_norm2"), ResidualWriter(None, None)),),
        ),
        FamilyAdapter(
            name="siglip",
            classes=(
                ModelClass(SiglipVisionModel, amp_models.AmpSiglipVisionModel, backbone_spec("image", POOLED)),
                ModelClass(SiglipModel, amp_models.AmpSiglipModel, siglip_spec(),
                           auto=("AutoModel", "AutoModelForZeroShotImageClassification")),
            ),
            modality="image",
            pool=pooler_output,
            summary="mean",
            image_text=True,
            text_padding="max_length",
            joint_embedding="pooler_output",  # no projection: the pooling head's output is the embedding
            notes="encoder layers pruned; the attention-pooling head's MLP is kept whole; "
            "embedding: the pooling head's output",
            residual_layouts=((ResidualWriter("self_attn.out_proj", "layer_norm2"), ResidualWriter(None, None)),),
        ),
        FamilyAdapter(
            name="dinov2",
            classes=(
                ModelClass(Dinov2Model, amp_models.AmpDinov2Model, backbone_spec("image", POOLED)),
                ModelClass(Dinov2ForImageClassification, amp_models.AmpDinov2ForImageClassification, classifier_spec("image"),
                           auto=("AutoModelForImageClassification",)),
            ),
            modality="image",
            pool=pooler_output,
            summary="cls",
            notes="plain MLP and SwiGLU (gate/up rows pruned together); embedding: final-norm CLS",
            residual_layouts=((ResidualWriter("attention.o_proj", "norm2", "layer_scale1"),
                               ResidualWriter(None, None, "layer_scale2")),),
        ),
        FamilyAdapter(
            name="dinov2_with_registers",
            classes=(
                ModelClass(Dinov2WithRegistersModel, dinov2_registers.AmpDinov2WithRegistersModel,
                           backbone_spec("image", POOLED)),
                ModelClass(Dinov2WithRegistersForImageClassification,
                           dinov2_registers.AmpDinov2WithRegistersForImageClassification, classifier_spec("image"),
                           auto=("AutoModelForImageClassification",)),
            ),
            modality="image",
            pool=pooler_output,
            summary="cls",  # CLS, then the register tokens, then the patches
            notes="as DINOv2 (plain MLP or SwiGLU), with register tokens; embedding: final-norm CLS",
            residual_layouts=((ResidualWriter("attention.o_proj", "norm2", "layer_scale1"),
                               ResidualWriter(None, None, "layer_scale2")),),
        ),
        FamilyAdapter(
            name="bert",
            classes=(
                ModelClass(BertModel, amp_models.AmpBertModel, backbone_spec("text", MASKED_MEAN)),
                ModelClass(BertForSequenceClassification, amp_models.AmpBertForSequenceClassification, classifier_spec("text"),
                           auto=("AutoModelForSequenceClassification",)),
            ),
            modality="text",
            pool=masked_mean,
            summary="cls",
            notes="BERT-style sentence encoders (e.g. all-MiniLM-L6-v2); embedding: attention-masked token mean",
            # post-norm: the sums before attention.output.LayerNorm and output.LayerNorm
            residual_layouts=((ResidualWriter("attention.output.dense", "attention.output.LayerNorm", normalized=True),
                               ResidualWriter(None, "output.LayerNorm", normalized=True)),),
        ),
    )
}

ADAPTERS[OPEN_CLIP_ADAPTER.name] = OPEN_CLIP_ADAPTER
ADAPTERS[TIMM_ADAPTER.name] = TIMM_ADAPTER


# Every pruned model class, by name (config.architectures[0] of a saved checkpoint).
MODEL_CLASSES: dict[str, type] = {entry.amp.__name__: entry.amp for a in ADAPTERS.values() for entry in a.classes}

# config class -> {Auto class name: model class}. Also written as `auto_map` into every saved config.
AUTO_CLASSES: dict[type, dict[str, type]] = {}
for _entry in (entry for adapter in ADAPTERS.values() for entry in adapter.classes):
    AUTO_CLASSES.setdefault(_entry.amp.config_class, {}).update({name: _entry.amp for name in _entry.auto})


def register_auto_classes() -> None:
    """Register every amp_* type with AutoConfig and the Auto model classes (idempotent)."""
    for config_cls, auto_classes in AUTO_CLASSES.items():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        for auto_name, model_cls in auto_classes.items():
            getattr(transformers, auto_name).register(config_cls, model_cls, exist_ok=True)


def auto_map_for(config_cls: type, model_cls: type) -> dict[str, str]:
    """The ``auto_map`` a checkpoint of ``model_cls`` carries: the saved class answers AutoModel
    when no Auto class maps to it."""

    def ref(cls: type) -> str:
        return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"

    entries = {"AutoConfig": ref(config_cls)}
    entries.update({auto_name: ref(cls) for auto_name, cls in AUTO_CLASSES[config_cls].items()})
    if model_cls not in AUTO_CLASSES[config_cls].values():
        entries["AutoModel"] = ref(model_cls)  # e.g. CLIPVisionModelWithProjection keeps its projection
    return entries


register_auto_classes()


def supported_models() -> list[str]:
    return sorted(cls.__name__ for adapter in ADAPTERS.values() for cls in adapter.model_classes)


def supported_architectures() -> dict[str, type]:
    """``config.architectures[0]`` -> class, for every stock and amp_* model class amp-hf reads."""
    classes = dict(MODEL_CLASSES)
    for adapter in ADAPTERS.values():
        classes.update({entry.stock.__name__: entry.stock for entry in adapter.classes})
    return classes


def folder_family(path) -> FamilyAdapter | None:
    """The family whose own Hub layout the folder ``path`` is in (None: a transformers folder, or none)."""
    return next((adapter for adapter in ADAPTERS.values() if adapter.is_folder(path)), None)


def hub_files(filenames: list[str]) -> list[str]:
    """The files of a Hub repo a load needs (``files.model_reference.files_to_download``, less what a family
    knows it will not read)."""
    unread = set().union(*(adapter.unread_hub_files(filenames) for adapter in ADAPTERS.values()))
    return [name for name in files_to_download(filenames) if name not in unread]


def get_adapter(model: nn.Module) -> FamilyAdapter:
    for adapter in ADAPTERS.values():
        if adapter.supports(model):
            return adapter
    raise unsupported_model(type(model).__name__)


def unsupported_model(class_name: str) -> UnsupportedModelError:
    """The error for a model class amp-hf does not support, listing the ones it does."""
    return UnsupportedModelError(
        f"amp-hf does not support {class_name}. Supported model classes: "
        f"{', '.join(supported_models())}. Load the checkpoint with one of these classes "
        f"(e.g. AutoModel / AutoModelForImageClassification) or open an issue for the family."
    )



def resolve(model: nn.Module | MlpStack, adapter: FamilyAdapter | None = None) -> MlpStack:
    """``model`` resolved (an ``MlpStack`` is returned as it is): what every step of a run reads."""
    if isinstance(model, MlpStack):
        return model
    return (adapter or get_adapter(model)).resolve(model)
