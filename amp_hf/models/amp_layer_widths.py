"""Per-layer MLP widths for width-pruned transformers (the amp-hf checkpoint format).

This file is copied next to every pruned checkpoint and imported by the modeling files through a
single-dot relative import, so it must stay self-contained: torch, transformers and stdlib only.
"""

from __future__ import annotations

import contextlib
import logging

from torch import nn

# (input linears, output linear) of one encoder layer's MLP, relative to the layer module. The hidden
# neurons are the rows of every input linear and the columns of the output linear. Probed in order, so
# gated units (SwiGLU: gate and up share the hidden index) come before plain fc1/fc2.
MLP_LINEAR_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),  # DINOv2 SwiGLU (transformers >= 5.18)
    (("mlp.fc1",), "mlp.fc2"),  # ViT, CLIP, SigLIP, DINOv2, timm Mlp (open_clip timm towers)
    (("mlp.c_fc",), "mlp.c_proj"),  # open_clip native towers (Sequential c_fc, gelu, c_proj)
    (("intermediate.dense",), "output.dense"),  # BERT-style encoders
)

_HETEROGENEITY_LOGGER = "transformers.integrations.heterogeneity.configuration_utils"


def _get_submodule(root: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return root.get_submodule(dotted)
    except AttributeError:
        return None


def find_mlp_linears(layer: nn.Module) -> tuple[tuple[str, ...], str] | None:
    """Names of the MLP's input linears and output linear inside ``layer``, or None if not recognised."""
    for in_names, out_name in MLP_LINEAR_PATTERNS:
        modules = [_get_submodule(layer, name) for name in (*in_names, out_name)]
        if all(isinstance(module, nn.Linear) for module in modules):
            return in_names, out_name
    return None


def mlp_width(layer: nn.Module) -> int:
    names = find_mlp_linears(layer)
    if names is None:
        raise ValueError(f"no MLP found in layer of type {type(layer).__name__}")
    return layer.get_submodule(names[1]).in_features


def _replace_linear(layer: nn.Module, dotted: str, in_features: int, out_features: int) -> None:
    old = layer.get_submodule(dotted)
    if (old.in_features, old.out_features) == (in_features, out_features):
        return
    new = nn.Linear(
        in_features, out_features, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )
    parent_name, _, attr = dotted.rpartition(".")
    setattr(layer.get_submodule(parent_name) if parent_name else layer, attr, new)


def resize_mlp(layer: nn.Module, width: int) -> None:
    """Rebuild the MLP linears of ``layer`` with ``width`` hidden neurons (fresh, uninitialised weights)."""
    names = find_mlp_linears(layer)
    if names is None:
        raise ValueError(f"no MLP found in layer of type {type(layer).__name__}")
    in_names, out_name = names
    for name in in_names:
        _replace_linear(layer, name, layer.get_submodule(name).in_features, width)
    _replace_linear(layer, out_name, width, layer.get_submodule(out_name).out_features)


def layer_widths_from_config(config) -> list[int]:
    """Every layer's MLP width, read from transformers' ``per_layer_config`` (the single source of truth)."""
    return [int(layer_config.intermediate_size) for layer_config in config.per_layer_config]


@contextlib.contextmanager
def global_width_access(*configs):
    """Let stock constructors read the global ``intermediate_size`` of a heterogeneous config.

    Stock modules read ``config.intermediate_size`` while they are built; on a per-layer config that read
    raises ``AmbiguousGlobalPerLayerAttributeError``. The MLPs built from the global value are resized right
    after, so allowing the read for the duration of construction is safe. The one-time warning is silenced.
    """
    logger = logging.getLogger(_HETEROGENEITY_LOGGER)
    previous_level = logger.level
    previous = [config.__dict__.get("allow_global_per_layer_attribute_access") for config in configs]
    logger.setLevel(logging.ERROR)
    for config in configs:
        config.allow_global_per_layer_attribute_access = True
    try:
        yield
    finally:
        for config, value in zip(configs, previous):
            if value is None:
                config.__dict__.pop("allow_global_per_layer_attribute_access", None)
            else:
                config.allow_global_per_layer_attribute_access = value
        logger.setLevel(previous_level)


class PerLayerMLPWidthsMixin:
    """Put before a stock transformers model class: builds it, then resizes each pruned layer's MLP.

    Class attributes set by each modeling file:
      ``_amp_layers_path``: dotted path from the model to the ``ModuleList`` of pruned encoder layers;
      ``_amp_width_config``: attribute of the config holding the pruned tower's sub-config (None = itself).
    """

    _amp_layers_path: str = ""
    _amp_width_config: str | None = None

    @classmethod
    def _amp_widths_config(cls, config):
        return getattr(config, cls._amp_width_config) if cls._amp_width_config else config

    def __init__(self, config, *args, **kwargs):
        widths_config = self._amp_widths_config(config)
        with global_width_access(widths_config):
            super().__init__(config, *args, **kwargs)
        # Sub-models built from (copies of) the sub-config may carry the construction-time flag: drop it.
        for module in self.modules():
            sub_config = getattr(module, "config", None)
            if sub_config is not None and sub_config is not widths_config:
                for candidate in (sub_config, getattr(sub_config, "vision_config", None)):
                    if candidate is not None and hasattr(candidate, "__dict__"):
                        candidate.__dict__.pop("allow_global_per_layer_attribute_access", None)

    def post_init(self):
        # Runs at the end of the stock __init__, before weight initialisation: resize here so the new
        # linears are initialised (random init) or filled (from_pretrained) like every other weight.
        widths = layer_widths_from_config(self._amp_widths_config(self.config))
        layers = self.get_submodule(self._amp_layers_path)
        if len(layers) != len(widths):
            raise ValueError(f"config lists {len(widths)} layer widths but the model has {len(layers)} layers")
        for layer, width in zip(layers, widths):
            resize_mlp(layer, width)
        super().post_init()
