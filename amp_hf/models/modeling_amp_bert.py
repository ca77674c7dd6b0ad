"""BERT-style encoders with per-layer MLP widths (amp-hf pruned-checkpoint format).

Saved beside pruned checkpoints: imports only transformers and its sibling ``amp_layer_widths``.
"""

from transformers import BertConfig, BertForSequenceClassification, BertModel

from .amp_layer_widths import PerLayerMLPWidthsMixin


class AmpBertConfig(BertConfig):
    model_type = "amp_bert"
    amp_pruning: dict | None = None


class AmpBertModel(PerLayerMLPWidthsMixin, BertModel):
    config_class = AmpBertConfig
    _amp_layers_path = "encoder.layer"


class AmpBertForSequenceClassification(PerLayerMLPWidthsMixin, BertForSequenceClassification):
    config_class = AmpBertConfig
    _amp_layers_path = "bert.encoder.layer"
