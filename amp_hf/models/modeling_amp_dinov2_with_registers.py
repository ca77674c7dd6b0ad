"""DINOv2 with registers (plain MLP or SwiGLU) with per-layer MLP widths (amp-hf pruned-checkpoint format).

Like DINOv2, the stock config has no ``intermediate_size`` (widths derive from the integer ``mlp_ratio``), so
this config adds one: the hidden width of the MLP, or of the gated unit for SwiGLU. Saved beside pruned
checkpoints: imports only transformers and its sibling ``amp_layer_widths``.
"""

from transformers import (
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
)

from .amp_layer_widths import NeuronMap, PerLayerMLPWidthsMixin

# The hidden neurons of one layer's MLP (see NeuronMap), tried in order: SwiGLU (gate and up rows share the
# hidden index), then the plain MLP.
NEURON_MAPS = (
    NeuronMap(rows=("mlp.gate_proj", "mlp.up_proj"), columns="mlp.down_proj"),
    NeuronMap(rows=("mlp.fc1",), columns="mlp.fc2"),
)


def mlp_width(hidden_size: int, mlp_ratio: float, use_swiglu_ffn: bool) -> int:
    """The width the stock MLP / SwiGLU FFN build (SwiGLU: 2/3, rounded up to a multiple of 8)."""
    width = int(hidden_size * mlp_ratio)
    return (int(width * 2 / 3) + 7) // 8 * 8 if use_swiglu_ffn else width


class AmpDinov2WithRegistersConfig(Dinov2WithRegistersConfig):
    model_type = "amp_dinov2_with_registers"
    intermediate_size: int | None = None
    amp_pruning: dict | None = None

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = mlp_width(self.hidden_size, self.mlp_ratio, self.use_swiglu_ffn)
        super().__post_init__(**kwargs)


class AmpDinov2WithRegistersModel(PerLayerMLPWidthsMixin, Dinov2WithRegistersModel):
    config_class = AmpDinov2WithRegistersConfig
    _amp_backbone_class = Dinov2WithRegistersModel
    _amp_neuron_maps = NEURON_MAPS


class AmpDinov2WithRegistersForImageClassification(PerLayerMLPWidthsMixin, Dinov2WithRegistersForImageClassification):
    config_class = AmpDinov2WithRegistersConfig
    _amp_backbone_class = Dinov2WithRegistersModel
    _amp_neuron_maps = NEURON_MAPS
