"""SigLIP with per-layer MLP widths in the vision encoder (amp-hf pruned-checkpoint format).

Only the encoder layers are pruned; the attention-pooling head's MLP keeps its width (it is one MLP
outside the layer stack, and it produces the embedding the criterion reads). Saved beside pruned
checkpoints: imports only transformers and its sibling ``amp_layer_widths``.
"""

from transformers import SiglipConfig, SiglipModel, SiglipTextConfig, SiglipVisionConfig, SiglipVisionModel

from .amp_layer_widths import PerLayerMLPWidthsMixin


class AmpSiglipVisionConfig(SiglipVisionConfig):
    model_type = "amp_siglip_vision_model"
    amp_pruning: dict | None = None


class AmpSiglipConfig(SiglipConfig):
    model_type = "amp_siglip"
    sub_configs_defaults = {"vision_config": AmpSiglipVisionConfig, "text_config": SiglipTextConfig}
    amp_pruning: dict | None = None


class AmpSiglipVisionModel(PerLayerMLPWidthsMixin, SiglipVisionModel):
    config_class = AmpSiglipVisionConfig
    _amp_layers_path = "encoder.layers"


class AmpSiglipModel(PerLayerMLPWidthsMixin, SiglipModel):
    config_class = AmpSiglipConfig
    _amp_layers_path = "vision_model.encoder.layers"
    _amp_width_config = "vision_config"
