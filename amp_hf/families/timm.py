"""The timm family: timm ``VisionTransformer`` (and DeiT's ``VisionTransformerDistilled``) and ``Eva`` models
(the papers' towers as the Hub publishes them: OpenCLIP ViT-g/14, EVA02-CLIP, DINOv2-g, SigLIP, DeiT, plain
ViTs), seen through transformers' ``TimmWrapperModel`` / ``TimmWrapperForImageClassification``.

Everything timm-specific lives here and in ``models/modeling_amp_timm_wrapper.py`` (which MLP classes and
blocks are supported, and their hidden-neuron maps). Inputs: a local timm Hub folder (config.json with
``architecture`` / ``pretrained_cfg`` / ``model_args``) or a ``timm.create_model(...)`` object
(``wrap_timm``). timm is imported lazily: amp-hf works without it for every other family.
"""

from __future__ import annotations

import json
import os
import weakref
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoImageProcessor,
    PreTrainedModel,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    TimmWrapperImageProcessor,
    TimmWrapperModel,
)
from transformers.utils import is_timm_available

from ..errors import CheckpointError, UnsupportedModelError
from ..files.reading import from_pretrained_checked
from ..models.amp_layer_widths import global_width_access
from ..models.modeling_amp_timm_wrapper import (
    AmpTimmWrapperConfig,
    AmpTimmWrapperForImageClassification,
    AmpTimmWrapperModel,
    TimmVisionTower,
    UnsupportedTimmModelError,
    timm_blocks,
    timm_image_size,
)
from .base import FamilyAdapter, ModelClass, ResidualWriter
from .io_spec import POOLED, backbone_spec, classifier_spec

TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_CONFIG_KEYS_NOT_CARRIED = ("model_type", "transformers_version", "architectures", "auto_map", "per_layer_config",
                            "serialize_explicit_per_layer_config", "amp_pruning")


class TimmError(CheckpointError):
    pass


def _require_timm():
    try:
        import timm
    except ImportError as error:
        raise TimmError("timm models need timm: `pip install amp-hf[timm]`") from error
    return timm


def checked_blocks(timm_model: nn.Module) -> nn.Module:
    """The timm model's block stack; ``UnsupportedModelError`` (naming what is supported) for anything else."""
    try:
        return timm_blocks(timm_model)
    except UnsupportedTimmModelError as error:
        raise UnsupportedModelError(str(error)) from None


def is_timm_folder(config: dict) -> bool:
    """A timm Hub folder's config.json: ``architecture`` + ``pretrained_cfg``, no transformers model type."""
    return isinstance(config, dict) and "architecture" in config and "pretrained_cfg" in config and "model_type" not in config


def _model_args_without_num_classes(model_args: dict | None) -> tuple[dict | None, int | None]:
    # transformers 5.24's TimmWrapper passes num_classes itself, so a num_classes inside model_args (as
    # timm.models.save_for_hf writes when asked) fails with "got multiple values for keyword argument".
    args = dict(model_args or {})
    num_classes = args.pop("num_classes", None)
    return (args or None), num_classes


def load_timm_folder(path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """A local timm Hub folder as ``TimmWrapperModel`` (no classifier: ``num_classes`` 0) or
    ``TimmWrapperForImageClassification`` (a classifier head), weights loaded by transformers."""
    _require_timm()
    path = Path(path)
    if not any((path / name).is_file() for name in TIMM_WEIGHT_FILES):
        raise TimmError(f"{path} holds no timm weights (one of {', '.join(TIMM_WEIGHT_FILES)})")
    config = TimmWrapperConfig.from_pretrained(path)
    config.model_args, args_num_classes = _model_args_without_num_classes(config.model_args)
    num_labels = config.num_labels if args_num_classes is None else args_num_classes
    if num_labels:
        if num_labels != config.num_labels:
            config.num_labels = num_labels
        model_class = TimmWrapperForImageClassification
    else:
        model_class = TimmWrapperModel
    model = from_pretrained_checked(model_class, path, config=config, **kwargs)
    checked_blocks(model.timm_model)  # a clear error now for an unsupported timm model
    return model


def _layout(module: nn.Module) -> dict[str, tuple]:
    return {
        **{name: ("parameter", tuple(value.shape)) for name, value in module.state_dict().items()},
        **{name: ("module", type(child).__name__) for name, child in module.named_modules()},
    }


def wrap_timm(timm_model: nn.Module, model_args: dict | None = None) -> PreTrainedModel:
    """A transformers ``TimmWrapperModel`` (or ``…ForImageClassification`` if the model has a classifier)
    holding (not copying) ``timm_model``, a ``timm.create_model(...)`` object.

    ``model_args``: the keyword arguments ``timm.create_model`` was given besides the name (e.g.
    ``{"depth": 12, "img_size": 336}``); a pruned checkpoint rebuilds the model from them, so they are
    checked by building the model again (on the meta device) and comparing every module and tensor shape.
    """
    timm = _require_timm()
    if isinstance(timm_model, PreTrainedModel):
        return timm_model
    checked_blocks(timm_model)
    pretrained_cfg = dict(getattr(timm_model, "pretrained_cfg", None) or {})
    architecture = pretrained_cfg.get("architecture")
    if not architecture:
        raise TimmError(f"this {type(timm_model).__name__} has no pretrained_cfg['architecture']: build it with "
                        "timm.create_model(name, ...)")
    model_args, _ = _model_args_without_num_classes(model_args)
    num_classes = int(getattr(timm_model, "num_classes", 0) or 0)
    with torch.device("meta"):
        rebuilt = timm.create_model(architecture, pretrained=False, num_classes=num_classes, **(model_args or {}))
    expected, found = _layout(rebuilt), _layout(timm_model)
    if expected != found:
        first = next(key for key in sorted(set(expected) | set(found)) if expected.get(key) != found.get(key))
        raise TimmError(
            f"timm.create_model({architecture!r}, **model_args) does not rebuild this model (at {first!r}: "
            f"{expected.get(first)} vs {found.get(first)}): pass model_args= with the keyword arguments the "
            "model was created with"
        )
    pretrained_cfg = {key: list(value) if isinstance(value, tuple) else value for key, value in pretrained_cfg.items()}
    config = TimmWrapperConfig(architecture=architecture, pretrained_cfg=pretrained_cfg, model_args=model_args,
                               num_labels=num_classes)
    model_class = TimmWrapperForImageClassification if num_classes else TimmWrapperModel
    with torch.device("meta"):
        wrapper = model_class(config)  # a shell: its timm module is replaced right below
    wrapper.timm_model = timm_model
    return wrapper.train(timm_model.training)


def tower_facts(timm_model: nn.Module) -> dict:
    """What the rest of amp-hf reads from a vision backbone's config, taken from the timm model."""
    height, width = timm_image_size(timm_model)
    return {
        "num_hidden_layers": len(timm_model.blocks),
        "image_size": height if height == width else [height, width],
        "num_channels": int(timm_model.patch_embed.proj.in_channels),
        "hidden_size": int(timm_model.embed_dim),
    }


_CHECKED_TIMM_MODELS: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class TimmFamilyAdapter(FamilyAdapter):
    """The backbone is an unregistered view of the wrapper's timm module (``TimmVisionTower``) and the layer
    stack is the timm model's ``blocks`` (an ``nn.Sequential`` in ``VisionTransformer``)."""

    def backbone(self, model: nn.Module) -> TimmVisionTower:
        if isinstance(model.config, AmpTimmWrapperConfig):
            return model.vision_model
        config = AmpTimmWrapperConfig(**tower_facts(model.timm_model))
        return TimmVisionTower(model.timm_model, config)

    def layers_path(self, model: nn.Module) -> str:
        # Checked once per timm module: the search later swaps blocks for stand-ins while it evaluates.
        if model.timm_model not in _CHECKED_TIMM_MODELS:
            checked_blocks(model.timm_model)
            _CHECKED_TIMM_MODELS.add(model.timm_model)
        return "timm_model.blocks"

    def embed(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return self.backbone(model)(**batch).pooler_output

    def pruned_config(self, model: PreTrainedModel, widths: list[int], amp_pruning: dict | None) -> AmpTimmWrapperConfig:
        with global_width_access(model.config):  # a pruned model's config is heterogeneous
            values = model.config.to_dict()
            original = getattr(model.config, "intermediate_size", 0) or max(self.widths(model))
        for key in _CONFIG_KEYS_NOT_CARRIED:
            values.pop(key, None)
        values["model_args"], _ = _model_args_without_num_classes(values.get("model_args"))
        facts = tower_facts(model.timm_model)
        values.update(
            num_hidden_layers=facts["num_hidden_layers"], intermediate_size=int(original),
            image_size=facts["image_size"], num_channels=facts["num_channels"], hidden_size=facts["hidden_size"],
            per_layer_config={i: {"intermediate_size": int(w)} for i, w in enumerate(widths)},
            amp_pruning=amp_pruning,
        )
        config = AmpTimmWrapperConfig.from_dict(values)
        config.architectures = [self.amp_class(model).__name__]
        config.serialize_explicit_per_layer_config = True
        return config


    def is_folder(self, path: str | os.PathLike) -> bool:
        config_file = Path(path) / "config.json"
        if not config_file.is_file():
            return False
        try:
            return is_timm_folder(json.loads(config_file.read_text()))
        except (OSError, ValueError):  # unreadable: the transformers path reports it
            return False

    def load_folder(self, path: str | os.PathLike, **kwargs) -> PreTrainedModel:
        return load_timm_folder(path, **kwargs)

    def hub_base_model(self, config: dict) -> str | None:
        # timm's Hub repos are named timm/<architecture>.<pretrained tag>
        tag = (config.get("pretrained_cfg") or {}).get("tag")
        return f"timm/{config['architecture']}.{tag}" if config.get("architecture") and tag else None

    def usage_example(self, repo: str) -> str:
        return (
            "# needs timm installed (pip install timm)\n"
            "from transformers import TimmWrapperImageProcessor\n"
            f'processor = TimmWrapperImageProcessor.from_pretrained("{repo}")  # timm\'s eval transform, from config.json\n'
            'outputs = model(**processor(images=image, return_tensors="pt"))  # .pooler_output: pre-logits\n'
            "timm_model = model.timm_model  # the plain timm module, for timm code (forward_features, ...)"
        )


# Where timm's pre-norm blocks write into the residual stream (``reconstruct.objective=residual``):
# Block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))) (ls: LayerScale, or Identity without
# init_values); EvaBlock: the same with optional gamma_1 / gamma_2 parameters. The post-norm blocks (ResPostBlock,
# EvaBlockPostNorm: x + norm1(attn(x))) normalise a writer's output before the addition, which no linear correction
# of it can follow: no layout, so the residual objective is refused there.
TIMM_RESIDUAL_LAYOUTS: tuple[tuple[ResidualWriter, ...], ...] = (
    (ResidualWriter("attn.proj", "norm2", "ls1", layer_types=("Block",)),
     ResidualWriter(None, None, "ls2", layer_types=("Block",))),
    (ResidualWriter("attn.proj", "norm2", "gamma_1", layer_types=("EvaBlock",)),
     ResidualWriter(None, None, "gamma_2", layer_types=("EvaBlock",))),
    (ResidualWriter("attn.proj", "norm2", layer_types=("EvaBlock",)),  # without init_values: no gamma
     ResidualWriter(None, None, layer_types=("EvaBlock",))),
)


def _pooled(outputs, batch) -> torch.Tensor:
    return outputs.pooler_output


TIMM_ADAPTER = TimmFamilyAdapter(
    name="timm",
    classes=(
        ModelClass(TimmWrapperModel, AmpTimmWrapperModel, backbone_spec("image", POOLED)),
        ModelClass(TimmWrapperForImageClassification, AmpTimmWrapperForImageClassification, classifier_spec("image"),
                   auto=("AutoModelForImageClassification",)),
    ),
    modality="image",
    pool=_pooled,
    residual_layouts=TIMM_RESIDUAL_LAYOUTS,
    processor_in_config=True,  # TimmWrapperImageProcessor reads pretrained_cfg from config.json
    # distillation compared the token mean before the family facts moved onto the adapter (timm's pre-logits
    # feature is the CLS token or the token average, depending on the model's global_pool)
    summary="mean",
    notes="timm VisionTransformer (DeiT distilled too) / Eva (Mlp, GluMlp / SwiGLUPacked, SwiGLU with its inner "
    "norm) through transformers' TimmWrapper; embedding: timm's pre-logits feature (forward_head(pre_logits=True))",
)

# A pruned timm model keeps its base's pretrained_cfg (mean, std, crop) in config.json, which is where
# TimmWrapperImageProcessor reads it from (the processor needs timm installed).
if is_timm_available():
    AutoImageProcessor.register(
        AmpTimmWrapperConfig, image_processor_classes={"pil": TimmWrapperImageProcessor}, exist_ok=True
    )
