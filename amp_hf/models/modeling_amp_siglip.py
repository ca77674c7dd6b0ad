"""SigLIP with per-layer MLP widths in the vision encoder (amp-hf pruned-checkpoint format).

Only the encoder layers are pruned; the attention-pooling head's MLP keeps its width (it is one MLP
outside the layer stack, and it produces the embedding the criterion reads). Saved beside pruned
checkpoints: imports only transformers and its sibling ``amp_layer_widths``.
"""

from transformers import SiglipConfig, SiglipModel, SiglipTextConfig, SiglipVisionConfig, SiglipVisionModel

from .amp_layer_widths import NeuronMap, PerLayerMLPWidthsMixin

# The hidden neurons of one layer's MLP (see NeuronMap).
NEURON_MAPS = (NeuronMap(rows=("mlp.fc1",), columns="mlp.fc2"),)


class AmpSiglipVisionConfig(SiglipVisionConfig):
    model_type = "amp_siglip_vision_model"
    amp_pruning: dict | None = None


class AmpSiglipConfig(SiglipConfig):
    model_type = "amp_siglip"
    sub_configs_defaults = {"vision_config": AmpSiglipVisionConfig, "text_config": SiglipTextConfig}
    amp_pruning: dict | None = None


class AmpSiglipVisionModel(PerLayerMLPWidthsMixin, SiglipVisionModel):
    config_class = AmpSiglipVisionConfig
    _amp_backbone_class = SiglipVisionModel
    _amp_neuron_maps = NEURON_MAPS


class AmpSiglipModel(PerLayerMLPWidthsMixin, SiglipModel):
    config_class = AmpSiglipConfig
    _amp_backbone_class = SiglipVisionModel
    _amp_neuron_maps = NEURON_MAPS
    _amp_width_config = "vision_config"
