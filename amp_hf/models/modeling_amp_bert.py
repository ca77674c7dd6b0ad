"""BERT-style encoders with per-layer MLP widths (amp-hf pruned-checkpoint format).

Saved beside pruned checkpoints: imports only transformers and its sibling ``amp_layer_widths``.
"""

from transformers import BertConfig, BertForSequenceClassification, BertModel

from .amp_layer_widths import NeuronMap, PerLayerMLPWidthsMixin

# The hidden neurons of one layer's MLP (see NeuronMap).
NEURON_MAPS = (NeuronMap(rows=("intermediate.dense",), columns="output.dense"),)


class AmpBertConfig(BertConfig):
    model_type = "amp_bert"
    amp_pruning: dict | None = None


class AmpBertModel(PerLayerMLPWidthsMixin, BertModel):
    config_class = AmpBertConfig
    _amp_backbone_class = BertModel
    _amp_neuron_maps = NEURON_MAPS


class AmpBertForSequenceClassification(PerLayerMLPWidthsMixin, BertForSequenceClassification):
    config_class = AmpBertConfig
    _amp_backbone_class = BertModel
    _amp_neuron_maps = NEURON_MAPS
