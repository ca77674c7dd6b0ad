"""ViT with per-layer MLP widths (amp-hf pruned-checkpoint format).

Saved beside pruned checkpoints so that `from_pretrained(..., trust_remote_code=True)` works without
amp-hf: imports only transformers and its sibling ``amp_layer_widths``.
"""

from transformers import ViTConfig, ViTForImageClassification, ViTModel

from .amp_layer_widths import NeuronMap, PerLayerMLPWidthsMixin

# The hidden neurons of one layer's MLP (see NeuronMap).
NEURON_MAPS = (NeuronMap(rows=("mlp.fc1",), columns="mlp.fc2"),)


class AmpViTConfig(ViTConfig):
    model_type = "amp_vit"
    amp_pruning: dict | None = None


class AmpViTModel(PerLayerMLPWidthsMixin, ViTModel):
    config_class = AmpViTConfig
    _amp_backbone_class = ViTModel
    _amp_neuron_maps = NEURON_MAPS


class AmpViTForImageClassification(PerLayerMLPWidthsMixin, ViTForImageClassification):
    config_class = AmpViTConfig
    _amp_backbone_class = ViTModel
    _amp_neuron_maps = NEURON_MAPS
