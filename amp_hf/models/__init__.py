"""The amp_* model types: config + model classes per family (registered with transformers' Auto classes
by ``amp_hf.families``, from each family's ``ModelClass`` table).

Each ``modeling_amp_*.py`` file is flat and copied beside every checkpoint of its family (with its sibling
``amp_layer_widths.py``), so users without amp-hf load it with ``trust_remote_code=True``.
"""

from __future__ import annotations

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
from .modeling_amp_siglip import AmpSiglipConfig, AmpSiglipModel, AmpSiglipVisionConfig, AmpSiglipVisionModel
from .modeling_amp_timm_wrapper import AmpTimmWrapperConfig, AmpTimmWrapperForImageClassification, AmpTimmWrapperModel
from .modeling_amp_vit import AmpViTConfig, AmpViTForImageClassification, AmpViTModel

__all__ = [
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
    "NeuronMap",
    "dinov2_mlp_width",
    "find_layer_stack",
    "find_neuron_map",
    "layer_widths_from_config",
]
