"""CLIP with per-layer MLP widths in the vision tower (amp-hf pruned-checkpoint format).

The text tower is never pruned. Saved beside pruned checkpoints so that
`from_pretrained(..., trust_remote_code=True)` works without amp-hf: imports only transformers and its
sibling ``amp_layer_widths``.
"""

from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from .amp_layer_widths import NeuronMap, PerLayerMLPWidthsMixin

# The hidden neurons of one layer's MLP (see NeuronMap).
NEURON_MAPS = (NeuronMap(rows=("mlp.fc1",), columns="mlp.fc2"),)


class AmpCLIPVisionConfig(CLIPVisionConfig):
    model_type = "amp_clip_vision_model"
    amp_pruning: dict | None = None


class AmpCLIPConfig(CLIPConfig):
    model_type = "amp_clip"
    sub_configs_defaults = {"vision_config": AmpCLIPVisionConfig, "text_config": CLIPTextConfig}
    amp_pruning: dict | None = None


class AmpCLIPVisionModel(PerLayerMLPWidthsMixin, CLIPVisionModel):
    config_class = AmpCLIPVisionConfig
    _amp_backbone_class = CLIPVisionModel
    _amp_neuron_maps = NEURON_MAPS


class AmpCLIPVisionModelWithProjection(PerLayerMLPWidthsMixin, CLIPVisionModelWithProjection):
    config_class = AmpCLIPVisionConfig
    _amp_backbone_class = CLIPVisionModel
    _amp_neuron_maps = NEURON_MAPS


class AmpCLIPModel(PerLayerMLPWidthsMixin, CLIPModel):
    config_class = AmpCLIPConfig
    _amp_backbone_class = CLIPVisionModel
    _amp_neuron_maps = NEURON_MAPS
    _amp_width_config = "vision_config"
