"""What a family is: ``ModelClass`` (one supported class), ``FamilyAdapter`` (where a family keeps its
prunable MLPs and how the criterion reads it), ``MlpStack`` (a model resolved once) and the pooling functions.

The layer stack is found by probing module types and each MLP by its ``NeuronMap`` (declared once, in the
family's modeling file, which also rebuilds pruned checkpoints without amp-hf), because stock tensor names
moved across transformers 5.x minors. The table of families is ``registry.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from ..errors import UnsupportedModelError
from ..models.amp_layer_widths import NeuronMap, find_backbone, find_layer_stack, find_neuron_map, global_width_access
from .io_spec import ArchitectureSpec

TEXT_SEQUENCE_LENGTH = 128  # native "input size" for text encoders in FLOP accounting


def cls_token(outputs, batch) -> torch.Tensor:
    return outputs.last_hidden_state[:, 0]


def pooler_output(outputs, batch) -> torch.Tensor:
    # CLIP / DINOv2: the final-norm CLS token; SigLIP: the attention-pooling head (no CLS token exists).
    if outputs.pooler_output is None:  # SigLIP built without its head
        return outputs.last_hidden_state.mean(dim=1)
    return outputs.pooler_output


def masked_mean(outputs, batch) -> torch.Tensor:
    # sentence-transformers' mean pooling: padding tokens do not count.
    hidden = outputs.last_hidden_state
    mask = batch.get("attention_mask")
    if mask is None:
        return hidden.mean(dim=1)
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


CLASSIFIER_TASKS = ("image-classification", "text-classification")


@dataclass(frozen=True)
class ModelClass:
    """One supported model class: the stock class, the amp_* class it prunes into, its export I/O spec, and
    the transformers Auto classes the amp class is registered with (and written into ``auto_map``).

    ``task`` (the Hub pipeline task) comes from the export spec; a class without one declares it.
    """

    stock: type
    amp: type
    export: ArchitectureSpec | None
    auto: tuple[str, ...] = ("AutoModel",)
    task: str = ""

    def __post_init__(self):
        if not self.task:
            if self.export is None:
                raise ValueError(f"{self.amp.__name__}: a model class without an export spec must declare its task")
            object.__setattr__(self, "task", self.export.task)

    @property
    def has_classifier_head(self) -> bool:
        return self.task in CLASSIFIER_TASKS


@dataclass(frozen=True)
class ResidualWriter:
    """A linear of a layer whose output is added to the residual stream (``reconstruct.objective=residual``).

    ``projection``: its path in the layer (None: the MLP's output projection, the neuron map's ``columns``).
    ``stream``: the module whose input is the stream right after that addition (post-norm layers: the sum
    before the norm); None: the layer's output. ``scale``: what multiplies the projection's output
    channel-wise before the addition (LayerScale), if any: a module (applied to ones) or a parameter (timm
    ``EvaBlock.gamma_1``); the layout does not fit a layer where it is None. ``normalized``: ``stream`` is a
    per-token norm (a post-norm layer's LayerNorm), so a token's error counts as that norm's output sees it:
    divided by the token's standard deviation over channels. ``layer_types``: the layer classes (by name) the
    writer applies to, () any; ``identities``: modules between the projection and the addition that must be
    ``nn.Identity`` for the write to stay linear (open_clip's optional ``ln_attn``).
    """

    projection: str | None
    stream: str | None
    scale: str | None = None
    normalized: bool = False
    layer_types: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()

    def matches(self, layer: nn.Module) -> bool:
        if self.layer_types and type(layer).__name__ not in self.layer_types:
            return False
        if self.projection is not None and not isinstance(_submodule(layer, self.projection), nn.Linear):
            return False
        if not all(isinstance(_submodule(layer, path), nn.Identity) for path in self.identities):
            return False
        if self.scale is not None and self.scale_of(layer) is None:
            return False
        return self.stream is None or _submodule(layer, self.stream) is not None

    def scale_of(self, layer: nn.Module) -> nn.Module | torch.Tensor | None:
        """The writer's LayerScale in ``layer``: a module, a tensor, or None (no scale, or absent)."""
        if self.scale is None:
            return None
        scale = layer_attribute(layer, self.scale)
        return scale if isinstance(scale, (nn.Module, torch.Tensor)) else None


def layer_attribute(layer: nn.Module, path: str) -> nn.Module | torch.Tensor | None:
    """The module, parameter or buffer at dotted ``path`` in ``layer`` (None where absent or set to None)."""
    value = layer
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _submodule(layer: nn.Module, path: str) -> nn.Module | None:
    value = layer_attribute(layer, path)
    return value if isinstance(value, nn.Module) else None


@dataclass(frozen=True)
class FamilyAdapter:
    """Everything amp-hf knows about one architecture family; nothing else checks a family by name.

    ``classes``: every supported model class of the family (``ModelClass``), the one table the Auto
    registration, ``MODEL_CLASSES``, the export specs and the card's pipeline tag derive from.
    ``pool``: the embedding the label-free criterion reads, from the backbone's outputs.
    ``summary``: the token distillation compares as the summary: ``"cls"`` (the sequence starts with a CLS
    token; BERT's [CLS] comes from the tokenizer) or ``"mean"`` (no CLS token, e.g. SigLIP).
    ``image_text``: an image-text model (zero-shot classification and retrieval apply); ``text_padding``:
    how its tokenizer pads (SigLIP was trained on ``max_length`` padding, without an attention mask);
    ``joint_embedding``: the output of a vision-only model that lies in the image-text space, if any
    (``image_embeds`` of CLIPVisionModelWithProjection; SigLIP's pooling head output).
    ``backbone_class``: the stock module that owns the prunable layer stack (the whole model for
    ``ViTModel``; ``model.vision_model`` for ``CLIPModel``), found by ``isinstance`` probing, and
    ``neuron_maps``: the candidate maps of one layer's MLP. Both default to what the family's amp classes
    declare (``_amp_backbone_class``, ``_amp_neuron_maps``), so the remote code probes the same way.
    Which (sub-)config owns the widths is declared once, on the amp class (``_amp_width_config``).
    ``processor_in_config``: the model carries its preprocessing in its own config (no processor files to copy).
    ``residual_layouts``: candidate layouts of one layer's residual-stream writers, each in stream order (the
    first whose modules all exist applies; see ``residual_writers``); () = the residual objective of
    reconstruction does not apply to the family.
    """

    name: str
    classes: tuple[ModelClass, ...]
    modality: Literal["image", "text"]
    pool: Callable
    summary: Literal["cls", "mean"]
    image_text: bool = False
    text_padding: Literal["longest", "max_length"] = "longest"
    joint_embedding: str | None = None
    notes: str = ""
    backbone_class: type | None = None
    neuron_maps: tuple[NeuronMap, ...] = ()
    processor_in_config: bool = False
    residual_layouts: tuple[tuple[ResidualWriter, ...], ...] = ()

    def __post_init__(self):
        if self.summary not in ("cls", "mean"):
            raise ValueError(f"{self.name}: summary must be 'cls' or 'mean', not {self.summary!r}")
        if self.backbone_class is None:
            object.__setattr__(self, "backbone_class", self.classes[0].amp._amp_backbone_class)
        if not self.neuron_maps:
            object.__setattr__(self, "neuron_maps", self.classes[0].amp._amp_neuron_maps)

    @property
    def model_classes(self) -> dict[type, type]:
        """Stock model class -> its amp_* pruned class."""
        return {entry.stock: entry.amp for entry in self.classes}

    def model_class(self, model: nn.Module | type | str) -> ModelClass:
        """The ``ModelClass`` entry of a model, a model class, or an architecture (class) name."""
        cls = model if isinstance(model, (type, str)) else type(model)
        for entry in self.classes:
            if cls in (entry.stock, entry.amp) or cls in (entry.stock.__name__, entry.amp.__name__):
                return entry
        name = cls if isinstance(cls, str) else cls.__name__
        raise UnsupportedModelError(f"{name} is not a model class of the {self.name} family")

    def has_classifier_head(self, model: nn.Module | type | str) -> bool:
        return self.model_class(model).has_classifier_head

    # -- structure -------------------------------------------------------------------------------
    def supports(self, model: nn.Module) -> bool:
        return any(type(model) in (entry.stock, entry.amp) for entry in self.classes)

    def amp_class(self, model: nn.Module) -> type:
        return self.model_class(model).amp

    def backbone(self, model: nn.Module) -> nn.Module:
        try:
            return find_backbone(model, self.backbone_class)
        except ValueError as error:
            raise UnsupportedModelError(str(error)) from None

    def layers_path(self, model: nn.Module) -> str:
        """Dotted path (from ``model``) of the ModuleList whose every element holds a recognised MLP."""
        try:
            return find_layer_stack(model, self.amp_class(model)._amp_stack_root(model), self.neuron_maps)[0]
        except ValueError as error:
            raise UnsupportedModelError(str(error)) from None

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path(model))

    def residual_writers(self, layer: nn.Module) -> tuple[ResidualWriter, ...]:
        """The linears of ``layer`` that write into the residual stream, in stream order; () when none of the
        family's ``residual_layouts`` fits the layer."""
        return next((layout for layout in self.residual_layouts if all(w.matches(layer) for w in layout)), ())

    def widths(self, model: nn.Module) -> list[int]:
        """Current hidden width of every layer's MLP, read from the modules themselves."""
        return self.resolve(model).widths()

    def resolve(self, model: nn.Module) -> MlpStack:
        """Everything a run needs about ``model``'s prunable MLPs, probed once."""
        layers_path = self.layers_path(model)
        maps = [find_neuron_map(layer, self.neuron_maps) for layer in model.get_submodule(layers_path)]
        return MlpStack(model, self, layers_path, maps)

    def width_config(self, model: nn.Module, config: PreTrainedConfig | None = None) -> PreTrainedConfig:
        """The (sub-)config of ``model`` (or ``config``, of the same class) that owns the MLP widths."""
        return self.amp_class(model)._amp_widths_config(config if config is not None else model.config)

    # -- criterion input -------------------------------------------------------------------------
    def embed(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The embedding AMP's entropy criterion reads (before any projection or classifier head)."""
        backbone = self.backbone(model)
        return self.pool(backbone(**batch), batch)

    def dummy_inputs(self, model: nn.Module, batch_size: int = 1) -> dict:
        """Inputs at the model's native size (images: config image size; text: 128 tokens, or fewer if the
        model's position table is shorter)."""
        config = self.backbone(model).config
        device = next(model.parameters()).device
        if self.modality == "image":
            size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
            height, width = (size, size) if isinstance(size, int) else size
            dtype = next(model.parameters()).dtype
            return {
                "pixel_values": torch.zeros(batch_size, config.num_channels, height, width, device=device, dtype=dtype)
            }
        length = min(TEXT_SEQUENCE_LENGTH, getattr(config, "max_position_embeddings", TEXT_SEQUENCE_LENGTH))
        ids = torch.ones(batch_size, length, dtype=torch.long, device=device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    # -- folders in the family's own layout ---------------------------------------------------------
    def is_folder(self, path: str | os.PathLike) -> bool:
        """A folder in this family's own Hub layout, which transformers' Auto classes do not read as it is
        (open_clip's: no config.json; timm's: a config.json without a transformers model type)."""
        return False

    def load_folder(self, path: str | os.PathLike, **kwargs) -> PreTrainedModel:
        """The model of a folder ``is_folder`` accepts (``kwargs``: ``from_pretrained`` options, e.g. dtype)."""
        raise UnsupportedModelError(f"the {self.name} family has no folder layout of its own")

    def unread_hub_files(self, filenames: list[str]) -> set[str]:
        """Files of a Hub repo (its whole file list) that no load of that repo reads although they belong to
        this family, e.g. a second copy of the weights for another library; they are not downloaded."""
        return set()

    def stores_processor(self, path: str | os.PathLike) -> bool:
        """Whether the folder holds this family's own preprocessing files (not transformers' processor files)."""
        return False

    def folder_processor(self, path: str | os.PathLike):
        """The processor of a folder ``stores_processor`` accepts."""
        raise UnsupportedModelError(f"the {self.name} family keeps no processor of its own")

    # -- model card ----------------------------------------------------------------------------------
    def hub_base_model(self, config: dict) -> str | None:
        """The base model's Hub id as a checkpoint's config.json records it, for families that record one."""
        return None

    def base_model_label(self, config: dict) -> str | None:
        """How the card names the model a checkpoint was built from, beside the base model (None: nothing)."""
        return None

    def usage_example(self, repo: str) -> str | None:
        """Lines after ``model = ...from_pretrained(repo)`` in the card's usage examples (preprocessing, the call,
        a comment on what it returns, family-specific access); for an image model ``image`` (a PIL image) is
        opened before them. They run where amp_hf is not installed (tests execute every card's snippets).
        None: the generic lines from the checkpoint's processor / tokenizer files."""
        return None

    # -- pruned config -----------------------------------------------------------------------------
    def pruned_config(
        self, model: PreTrainedModel, widths: list[int], amp_pruning: dict | None
    ) -> PreTrainedConfig:
        """The amp_* config of ``model`` with the given per-layer widths (explicit for every layer)."""
        amp_cls = self.amp_class(model)
        config = model.config
        with global_width_access(self.width_config(model)):
            values = config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "per_layer_config"):
            values.pop(key, None)
        values.pop("serialize_explicit_per_layer_config", None)
        per_layer = {i: {"intermediate_size": int(w)} for i, w in enumerate(widths)}
        width_key = amp_cls._amp_width_config
        if width_key:
            sub = dict(values[width_key])
            for key in ("model_type", "transformers_version", "per_layer_config", "serialize_explicit_per_layer_config"):
                sub.pop(key, None)
            sub["per_layer_config"] = per_layer
            values[width_key] = sub
        else:
            values["per_layer_config"] = per_layer
        values["amp_pruning"] = amp_pruning
        new_config = amp_cls.config_class(**values)
        new_config.architectures = [amp_cls.__name__]
        self.width_config(model, new_config).serialize_explicit_per_layer_config = True
        return new_config


@dataclass(frozen=True)
class MlpStack:
    """A model resolved once: its family adapter, the path of its layer stack and every layer's neuron map.

    Modules are looked up by path on every access, so the object stays valid while the search swaps MLP
    modules in and out.
    """

    model: nn.Module
    adapter: FamilyAdapter
    layers_path: str
    maps: list[NeuronMap]

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self.layers_path)

    @property
    def backbone(self) -> nn.Module:
        return self.adapter.backbone(self.model)

    def mlps(self) -> list[tuple[nn.Module, NeuronMap]]:
        """(layer module, its neuron map) for every layer, first to last."""
        return list(zip(self.layers, self.maps))

    def widths(self) -> list[int]:
        return [neuron_map.width(layer) for layer, neuron_map in self.mlps()]

    def hidden_tensor_names(self) -> list[list[tuple[str, int, int]]]:
        """Per layer: (state-dict name, hidden dim, chunks) of every tensor indexed by hidden neurons."""
        return [
            [(f"{self.layers_path}.{index}.{name}", dim, chunks) for name, dim, chunks in neuron_map.hidden_tensors(layer)]
            for index, (layer, neuron_map) in enumerate(self.mlps())
        ]
