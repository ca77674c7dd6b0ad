"""ViT with per-layer MLP widths (amp-hf pruned-checkpoint format).

Saved beside pruned checkpoints so that `from_pretrained(..., trust_remote_code=True)` works without
amp-hf: imports only transformers and its sibling ``amp_layer_widths``.
"""

from transformers import ViTConfig, ViTForImageClassification, ViTModel

from .amp_layer_widths import PerLayerMLPWidthsMixin


class AmpViTConfig(ViTConfig):
    model_type = "amp_vit"
    amp_pruning: dict | None = None


class AmpViTModel(PerLayerMLPWidthsMixin, ViTModel):
    config_class = AmpViTConfig
    _amp_layers_path = "layers"


class AmpViTForImageClassification(PerLayerMLPWidthsMixin, ViTForImageClassification):
    config_class = AmpViTConfig
    _amp_layers_path = "vit.layers"
