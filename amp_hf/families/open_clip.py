"""The open_clip family: open_clip CLIP / CustomTextCLIP models (native ``VisionTransformer`` towers with
``c_fc``/``c_proj`` MLPs, and timm-trunk towers ``visual.trunk``), seen through the ``amp_open_clip`` wrapper.

Every open_clip model amp-hf touches is first wrapped (``wrap_open_clip``) into ``AmpOpenCLIPModel``, a
transformers ``PreTrainedModel``; from then on scoring, search, slicing and saving are the common code paths.
Only the image tower is pruned; the text tower is untouched. open_clip is imported lazily: amp-hf works
without it for every other family.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..files.provenance import is_hub_id
from ..models.amp_layer_widths import find_layer_stack, find_neuron_map
from ..models.modeling_amp_open_clip import (
    NEURON_MAPS,
    OPEN_CLIP_CONFIG_FILE,
    AmpOpenCLIPConfig,
    AmpOpenCLIPModel,
    OpenCLIPProcessor,
    OpenCLIPVisionTower,
)
from .base import FamilyAdapter, ModelClass, ResidualWriter
from .io_spec import open_clip_spec
from .timm import TIMM_RESIDUAL_LAYOUTS

_OPEN_CLIP_HUB = "hf-hub:"  # how open_clip names a Hub model: hf-hub:org/name
OPEN_CLIP_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)


class OpenCLIPError(CheckpointError):
    pass


def _require_open_clip():
    try:
        import open_clip
    except ImportError as error:
        raise OpenCLIPError("open_clip models need open_clip: `pip install amp-hf[open_clip]`") from error
    return open_clip


def is_open_clip_folder(path: str | os.PathLike) -> bool:
    """A folder in open_clip's Hub layout (open_clip_config.json, no transformers config.json)."""
    path = Path(path)
    return (path / OPEN_CLIP_CONFIG_FILE).is_file() and not (path / "config.json").is_file()


def wrap_open_clip(
    model: nn.Module,
    model_cfg: dict | None = None,
    model_name: str | None = None,
    preprocess_cfg: dict | None = None,
) -> AmpOpenCLIPModel:
    """An ``AmpOpenCLIPModel`` holding (not copying) the weights of an ``open_clip.create_model(...)`` object.

    ``model_cfg``: open_clip's model config dict; by default looked up by ``model_name`` (a built-in name,
    ``hf-hub:`` or ``local-dir:`` id) with ``open_clip.get_model_config``.
    """
    open_clip = _require_open_clip()
    if isinstance(model, AmpOpenCLIPModel):
        return model
    if not isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP)) or isinstance(model, open_clip.CoCa):
        raise OpenCLIPError(f"{type(model).__name__} is not an open_clip CLIP / CustomTextCLIP model")
    if model_cfg is None:
        if model_name is None:
            raise OpenCLIPError("pass model_name (e.g. 'ViT-g-14') or model_cfg so the model can be rebuilt")
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            raise OpenCLIPError(f"open_clip has no model config named {model_name!r}")
    preprocess_cfg = dict(preprocess_cfg if preprocess_cfg is not None else open_clip.get_model_preprocess_cfg(model))
    preprocess_cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_cfg.items()}
    _, layers = find_layer_stack(model, model.visual, NEURON_MAPS)
    widths = [find_neuron_map(layer, NEURON_MAPS).width(layer) for layer in layers]
    if len(set(widths)) != 1:
        raise OpenCLIPError(f"the open_clip image tower is already pruned (MLP widths {widths}): load its amp-hf folder")
    image_size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    text_cfg = model_cfg.get("text_cfg", {})
    visual = model.visual
    hidden_size = visual.trunk.num_features if hasattr(visual, "trunk") else visual.transformer.width
    config = AmpOpenCLIPConfig(
        open_clip_config={"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
        open_clip_model_name=model_name,
        num_hidden_layers=len(layers),
        hidden_size=int(hidden_size),
        intermediate_size=widths[0],
        max_position_embeddings=int(text_cfg.get("context_length", 77)),
        vocab_size=int(text_cfg.get("vocab_size", 49408)),
        image_size=list(image_size) if isinstance(image_size, (list, tuple)) else int(image_size),
        projection_dim=int(model_cfg.get("embed_dim", 0)),
    )
    config.architectures = [AmpOpenCLIPModel.__name__]
    with torch.device("meta"):
        wrapper = AmpOpenCLIPModel(config)  # a shell: its open_clip module is replaced right below
    wrapper.open_clip_model = model
    return wrapper.train(model.training)


def load_open_clip_folder(path: str | os.PathLike, model_name: str | None = None) -> AmpOpenCLIPModel:
    """A local folder in open_clip's Hub layout, loaded by open_clip itself and wrapped."""
    open_clip = _require_open_clip()
    path = Path(path)
    try:
        stored = json.loads((path / OPEN_CLIP_CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise OpenCLIPError(f"{path / OPEN_CLIP_CONFIG_FILE} is not valid JSON ({error})") from error
    if "model_cfg" not in stored:
        raise OpenCLIPError(f"{path / OPEN_CLIP_CONFIG_FILE} has no model_cfg: not an open_clip Hub folder")
    if not any((path / name).is_file() for name in OPEN_CLIP_WEIGHT_FILES):
        raise OpenCLIPError(f"{path} holds no open_clip weights (one of {', '.join(OPEN_CLIP_WEIGHT_FILES)})")
    root = logging.getLogger()  # open_clip reports every loading step at INFO on the root logger
    previous = root.level
    root.setLevel(max(previous, logging.WARNING))
    try:
        model = open_clip.create_model(f"local-dir:{path}")
    except RuntimeError as error:  # e.g. a timm trunk this timm does not know, or weights that do not fit
        raise OpenCLIPError(f"open_clip could not build {path}: {error}") from error
    finally:
        root.setLevel(previous)
    preprocess = {**open_clip.get_model_preprocess_cfg(model), **stored.get("preprocess_cfg", {})}
    return wrap_open_clip(model, model_cfg=stored["model_cfg"], model_name=model_name, preprocess_cfg=preprocess)


def _wrapped_pool(outputs, batch) -> torch.Tensor:
    return outputs.pooler_output


class OpenCLIPFamilyAdapter(FamilyAdapter):
    """The image tower is an unregistered view of the wrapper's open_clip module (``OpenCLIPVisionTower``);
    the layer stack is probed inside ``open_clip_model.visual`` (``AmpOpenCLIPModel._amp_stack_root``)."""

    def backbone(self, model: nn.Module) -> OpenCLIPVisionTower:
        return model.vision_model

    def is_folder(self, path: str | os.PathLike) -> bool:
        return is_open_clip_folder(path)

    def load_folder(self, path: str | os.PathLike, **kwargs) -> AmpOpenCLIPModel:
        return load_open_clip_folder(path)  # open_clip builds in float32; from_pretrained options do not apply

    def unread_hub_files(self, filenames: list[str]) -> set[str]:
        # a repo with a config.json as well (laion's CLIP repos carry a transformers conversion) is read as
        # that model (is_open_clip_folder), so open_clip's copy of the weights is never loaded
        if "config.json" not in filenames:
            return set()
        return {name for name in filenames if name.startswith("open_clip_") and name != OPEN_CLIP_CONFIG_FILE}

    def stores_processor(self, path: str | os.PathLike) -> bool:
        return (Path(path) / OPEN_CLIP_CONFIG_FILE).is_file()  # open_clip's Hub layout, or an amp_open_clip save

    def folder_processor(self, path: str | os.PathLike) -> OpenCLIPProcessor:
        return OpenCLIPProcessor.from_pretrained(path)

    def hub_base_model(self, config: dict) -> str | None:
        # open_clip names a Hub base `hf-hub:org/name`
        name = str(config.get("open_clip_model_name"))
        repo_id = name.removeprefix(_OPEN_CLIP_HUB).strip("/")
        return repo_id if name.startswith(_OPEN_CLIP_HUB) and is_hub_id(repo_id) else None

    def base_model_label(self, config: dict) -> str | None:
        name = config.get("open_clip_model_name")
        return f"open_clip `{name}`" if name else None

    def usage_example(self, repo: str) -> str:
        # open_clip's preprocessing is no transformers processor (AutoTokenizer cannot read it): the model builds
        # it from the open_clip_config stored in config.json.
        return (
            "# needs open_clip installed (pip install open-clip-torch)\n"
            "processor = model.get_processor()  # open_clip's eval transform and tokenizer, from config.json\n"
            'inputs = processor(images=image, text=["a photo of a cat", "a photo of a dog"])\n'
            'image_embeds = model.get_image_features(inputs["pixel_values"]).pooler_output  # projected image embedding\n'
            'text_embeds = model.get_text_features(inputs["input_ids"]).pooler_output  # one per text, same space\n'
            "probs = model(**inputs).logits_per_image.softmax(dim=-1)  # zero-shot: the image against each text"
        )


# Where open_clip's blocks write into the residual stream (``reconstruct.objective=residual``): x + ls_1(attention),
# then x + ls_2(mlp(ln_2(x))). ResidualAttentionBlock's nn.MultiheadAttention applies out_proj inside
# F.multi_head_attention_forward, not as a module call, so its input cannot be recorded: only the MLP output is
# refit there (it still absorbs the drift of everything upstream). CustomResidualAttentionBlock calls its
# out_proj, which is linear into the stream unless scale_attn puts ln_attn after it. timm trunks (EVA02): timm's.
OPEN_CLIP_RESIDUAL_LAYOUTS: tuple[tuple[ResidualWriter, ...], ...] = (
    (ResidualWriter(None, None, "ls_2", layer_types=("ResidualAttentionBlock",)),),
    (ResidualWriter("attn.out_proj", "ln_2", "ls_1", layer_types=("CustomResidualAttentionBlock",),
                    identities=("ln_attn",)),
     ResidualWriter(None, None, "ls_2", layer_types=("CustomResidualAttentionBlock",))),
    (ResidualWriter(None, None, "ls_2", layer_types=("CustomResidualAttentionBlock",)),),
    *TIMM_RESIDUAL_LAYOUTS,
)


OPEN_CLIP_ADAPTER = OpenCLIPFamilyAdapter(
    name="open_clip",
    backbone_class=OpenCLIPVisionTower,
    # always wrapped first: the stock and the pruned class are the same
    classes=(ModelClass(AmpOpenCLIPModel, AmpOpenCLIPModel, open_clip_spec()),),
    modality="image",
    pool=_wrapped_pool,
    image_text=True,
    processor_in_config=True,
    summary="cls",  # open_clip image sequences start with the class token
    residual_layouts=OPEN_CLIP_RESIDUAL_LAYOUTS,
    notes="open_clip CLIP / CustomTextCLIP (native or timm-trunk image tower) through the amp_open_clip wrapper; "
    "image tower pruned, text tower untouched; embedding: the pooled image feature before the projection",
)
