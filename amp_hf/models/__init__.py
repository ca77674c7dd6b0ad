"""The amp_* model types: config + model classes per family, registered with transformers' Auto classes.

Each ``modeling_amp_*.py`` file is flat and copied beside every checkpoint of its family (with its sibling
``amp_layer_widths.py``), so users without amp-hf load it with ``trust_remote_code=True``.
"""

from __future__ import annotations

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoModelForZeroShotImageClassification,
)

from .amp_layer_widths import NeuronMap, find_layer_stack, find_neuron_map, layer_widths_from_config
from .modeling_amp_bert import AmpBertConfig, AmpBertForSequenceClassification, AmpBertModel
from .modeling_amp_clip import (
    AmpCLIPConfig,
    AmpCLIPModel,
    AmpCLIPVisionConfig,
    AmpCLIPVisionModel,
    AmpCLIPVisionModelWithProjection,
)
from .modeling_amp_dinov2 import AmpDinov2Config, AmpDinov2ForImageClassification, AmpDinov2Model, dinov2_mlp_width
from .modeling_amp_open_clip import AmpOpenCLIPConfig, AmpOpenCLIPModel
from .modeling_amp_timm_wrapper import AmpTimmWrapperConfig, AmpTimmWrapperForImageClassification, AmpTimmWrapperModel
from .modeling_amp_siglip import AmpSiglipConfig, AmpSiglipModel, AmpSiglipVisionConfig, AmpSiglipVisionModel
from .modeling_amp_vit import AmpViTConfig, AmpViTForImageClassification, AmpViTModel

# Auto class name -> the Auto factory, for registration.
_AUTO_FACTORIES = {
    "AutoModel": AutoModel,
    "AutoModelForImageClassification": AutoModelForImageClassification,
    "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
    "AutoModelForZeroShotImageClassification": AutoModelForZeroShotImageClassification,
}

# config class -> {Auto class name: model class}. Also written as `auto_map` into every saved config.
AUTO_CLASSES: dict[type, dict[str, type]] = {
    AmpViTConfig: {"AutoModel": AmpViTModel, "AutoModelForImageClassification": AmpViTForImageClassification},
    AmpCLIPVisionConfig: {"AutoModel": AmpCLIPVisionModel},
    AmpCLIPConfig: {"AutoModel": AmpCLIPModel, "AutoModelForZeroShotImageClassification": AmpCLIPModel},
    AmpSiglipVisionConfig: {"AutoModel": AmpSiglipVisionModel},
    AmpSiglipConfig: {"AutoModel": AmpSiglipModel, "AutoModelForZeroShotImageClassification": AmpSiglipModel},
    AmpDinov2Config: {
        "AutoModel": AmpDinov2Model,
        "AutoModelForImageClassification": AmpDinov2ForImageClassification,
    },
    AmpBertConfig: {"AutoModel": AmpBertModel, "AutoModelForSequenceClassification": AmpBertForSequenceClassification},
    AmpOpenCLIPConfig: {"AutoModel": AmpOpenCLIPModel},
    AmpTimmWrapperConfig: {
        "AutoModel": AmpTimmWrapperModel,
        "AutoModelForImageClassification": AmpTimmWrapperForImageClassification,
    },
}

# Every pruned model class, by name (config.architectures[0] of a saved checkpoint).
MODEL_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        AmpViTModel,
        AmpViTForImageClassification,
        AmpCLIPVisionModel,
        AmpCLIPVisionModelWithProjection,
        AmpCLIPModel,
        AmpSiglipVisionModel,
        AmpSiglipModel,
        AmpDinov2Model,
        AmpDinov2ForImageClassification,
        AmpBertModel,
        AmpBertForSequenceClassification,
        AmpOpenCLIPModel,
        AmpTimmWrapperModel,
        AmpTimmWrapperForImageClassification,
    )
}


def register_auto_classes() -> None:
    """Register every amp_* type with AutoConfig and the Auto model classes (idempotent)."""
    for config_cls, auto_classes in AUTO_CLASSES.items():
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        for auto_name, model_cls in auto_classes.items():
            _AUTO_FACTORIES[auto_name].register(config_cls, model_cls, exist_ok=True)


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

__all__ = [
    "AUTO_CLASSES",
    "MODEL_CLASSES",
    "AmpBertConfig",
    "AmpBertForSequenceClassification",
    "AmpBertModel",
    "AmpCLIPConfig",
    "AmpCLIPModel",
    "AmpCLIPVisionConfig",
    "AmpCLIPVisionModel",
    "AmpCLIPVisionModelWithProjection",
    "AmpDinov2Config",
    "AmpOpenCLIPConfig",
    "AmpOpenCLIPModel",
    "AmpTimmWrapperConfig",
    "AmpTimmWrapperForImageClassification",
    "AmpTimmWrapperModel",
    "AmpDinov2ForImageClassification",
    "AmpDinov2Model",
    "AmpSiglipConfig",
    "AmpSiglipModel",
    "AmpSiglipVisionConfig",
    "AmpSiglipVisionModel",
    "AmpViTConfig",
    "AmpViTForImageClassification",
    "AmpViTModel",
    "auto_map_for",
    "NeuronMap",
    "dinov2_mlp_width",
    "find_layer_stack",
    "find_neuron_map",
    "layer_widths_from_config",
    "register_auto_classes",
]
