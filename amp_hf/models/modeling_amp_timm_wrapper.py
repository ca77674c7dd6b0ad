"""timm vision transformers (``VisionTransformer``, DeiT's ``VisionTransformerDistilled``, ``Eva``) with
per-block MLP widths (model type ``amp_timm_wrapper``).

transformers' ``TimmWrapperModel`` / ``TimmWrapperForImageClassification`` build the timm module from
``config.architecture`` + ``config.model_args``; timm builds every block's MLP at one width, so these
subclasses rebuild block i's MLP at ``config.per_layer_config[i].intermediate_size`` (the hidden width; for a
gated unit, the width of the gated product) before the weights load. ``model.timm_model`` is the plain timm
module. Saved beside pruned checkpoints: imports only torch, transformers, timm (when a model is built) and
its sibling ``amp_layer_widths``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .amp_layer_widths import TIMM_NEURON_MAPS, find_neuron_map, layer_widths_from_config

# The hidden neurons of one block's MLP: SwiGLU, GluMlp / SwiGLUPacked, Mlp (see TIMM_NEURON_MAPS).
NEURON_MAPS = TIMM_NEURON_MAPS
# VisionTransformerDistilled (DeiT distilled) is a VisionTransformer with a second prefix token (dist_token) and a
# second head (head_dist): the same blocks; timm's forward_head averages the two tokens / heads in eval.
SUPPORTED_MODEL_CLASSES = ("VisionTransformer", "VisionTransformerDistilled", "Eva")
SUPPORTED_BLOCK_CLASSES = ("Block", "ResPostBlock", "EvaBlock", "EvaBlockPostNorm")
SUPPORTED_MLP_CLASSES = ("Mlp", "GluMlp", "SwiGLU")  # SwiGLUPacked is a GluMlp


class UnsupportedTimmModelError(ValueError):
    pass


def timm_blocks(timm_model: nn.Module) -> nn.Module:
    """The block stack of a supported timm model, or a clear error naming what is supported."""
    model_class = type(timm_model).__name__
    if model_class not in SUPPORTED_MODEL_CLASSES or not hasattr(timm_model, "blocks"):
        raise UnsupportedTimmModelError(
            f"timm {model_class} is not supported: amp-hf prunes timm {', '.join(SUPPORTED_MODEL_CLASSES)} "
            f"models (blocks {', '.join(SUPPORTED_BLOCK_CLASSES)}; MLPs {', '.join(SUPPORTED_MLP_CLASSES)})"
        )
    for index, block in enumerate(timm_model.blocks):
        block_class, mlp_class = type(block).__name__, type(getattr(block, "mlp", None)).__name__
        if (
            block_class not in SUPPORTED_BLOCK_CLASSES
            or mlp_class not in SUPPORTED_MLP_CLASSES
            or find_neuron_map(block, NEURON_MAPS) is None
        ):
            raise UnsupportedTimmModelError(
                f"block {index} of this timm {model_class} is a {block_class} (MLP: {mlp_class}), which amp-hf "
                f"cannot prune: supported timm blocks are {', '.join(SUPPORTED_BLOCK_CLASSES)} with an MLP of "
                f"class {', '.join(SUPPORTED_MLP_CLASSES)} (models: {', '.join(SUPPORTED_MODEL_CLASSES)})"
            )
    return timm_model.blocks


def timm_image_size(timm_model: nn.Module) -> list[int]:
    return [int(size) for size in timm_model.patch_embed.img_size]


class AmpTimmWrapperConfig(TimmWrapperConfig):
    """``num_hidden_layers`` / ``intermediate_size``: the number of blocks and the unpruned MLP width.
    ``image_size`` / ``num_channels`` / ``hidden_size``: the timm model's input size and token width."""

    model_type = "amp_timm_wrapper"
    num_hidden_layers: int = 0
    intermediate_size: int = 0
    image_size: list[int] | None = None
    num_channels: int = 3
    hidden_size: int = 0
    amp_pruning: dict | None = None


class TimmVisionTower(nn.Module):
    """The timm model seen as a transformers vision backbone: ``last_hidden_state`` is every token after the
    final norm (``forward_features``), ``pooler_output`` timm's pre-logits feature (``forward_head(...,
    pre_logits=True)``: CLS token or token average, as ``global_pool`` says; DeiT distilled: the mean of the CLS
    and distillation tokens), ``hidden_states[-1]`` the last block's output before the final norm. Not
    registered as a submodule: it owns no weights of its own."""

    def __init__(self, timm_model: nn.Module, config: AmpTimmWrapperConfig):
        super().__init__()
        object.__setattr__(self, "timm_model", timm_model)  # keep it out of _modules (no duplicate keys)
        self.config = config

    def parameters(self, recurse: bool = True):
        """The timm model's parameters without its classifier head(s) (the tower's own weights)."""
        classifier = self.timm_model.get_classifier()  # VisionTransformerDistilled: (head, head_dist)
        heads = classifier if isinstance(classifier, tuple) else (classifier,)
        head = {id(parameter) for module in heads for parameter in module.parameters()}
        return (parameter for parameter in self.timm_model.parameters() if id(parameter) not in head)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, **_) -> BaseModelOutputWithPooling:
        timm_model = self.timm_model
        captured = []
        handle = timm_model.blocks[-1].register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            tokens = timm_model.forward_features(pixel_values.to(next(timm_model.parameters()).dtype))
        finally:
            handle.remove()
        pooled = timm_model.forward_head(tokens, pre_logits=True)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=pooled, hidden_states=(captured[-1],) if output_hidden_states else None
        )


class AmpTimmWrapperMixin:
    """Put before ``TimmWrapperModel`` / ``TimmWrapperForImageClassification``: rebuilds each block's MLP at
    its pruned width once the timm module exists (``post_init``), and exposes the vision-tower view."""

    _amp_neuron_maps = NEURON_MAPS
    _amp_backbone_class = TimmVisionTower

    @classmethod
    def _amp_stack_root(cls, model: nn.Module) -> nn.Module:
        return model.timm_model

    @classmethod
    def _amp_widths_config(cls, config):
        return config

    def post_init(self):
        # Runs at the end of the wrapper's __init__, before weights are initialised or loaded.
        widths = layer_widths_from_config(self.config)
        blocks = timm_blocks(self.timm_model)
        if len(blocks) != len(widths):
            raise ValueError(f"config lists {len(widths)} block widths but the timm model has {len(blocks)} blocks")
        for block, width in zip(blocks, widths):
            find_neuron_map(block, NEURON_MAPS).resize(block, width)
        super().post_init()

    @property
    def vision_model(self) -> TimmVisionTower:
        return TimmVisionTower(self.timm_model, self.config)


class AmpTimmWrapperModel(AmpTimmWrapperMixin, TimmWrapperModel):
    config_class = AmpTimmWrapperConfig


class AmpTimmWrapperForImageClassification(AmpTimmWrapperMixin, TimmWrapperForImageClassification):
    config_class = AmpTimmWrapperConfig
