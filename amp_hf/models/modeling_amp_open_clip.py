"""open_clip CLIP models as a transformers model type (``amp_open_clip``), with per-layer MLP widths.

A thin ``PreTrainedModel`` wrapper, like transformers' ``TimmWrapperModel`` for timm: ``open_clip_model`` is
the open_clip ``CLIP`` / ``CustomTextCLIP`` module itself, built from the open_clip model config stored in
``config.open_clip_config`` (the ``open_clip_config.json`` of open_clip's Hub layout, which is also written
beside the weights). The image tower's MLPs are rebuilt at ``config.per_layer_config[i].intermediate_size``
before the weights load. Saved beside pruned checkpoints: imports only torch, transformers, open_clip
(when a model is built) and its sibling ``amp_layer_widths``.
"""

from __future__ import annotations

import copy
import json
import os

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput

from .amp_layer_widths import TIMM_NEURON_MAPS, NeuronMap, PerLayerMLPWidthsMixin

OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"

# The hidden neurons of one image-tower block's MLP (see NeuronMap), tried in order: open_clip's
# CustomResidualAttentionBlock with scale_fc (a LayerNorm over the hidden width), its ResidualAttentionBlock
# (Sequential c_fc, gelu, c_proj); in timm-trunk towers (EVA02) timm's SwiGLU (separate gate / value
# projections, norm over the hidden width with scale_mlp), GluMlp (one fused [gate; value] fc1) and Mlp
# (their norm is Identity unless scale_mlp).
NEURON_MAPS = (
    NeuronMap(rows=("mlp.c_fc",), columns="mlp.c_proj", vectors=("mlp.ln",)),
    NeuronMap(rows=("mlp.c_fc",), columns="mlp.c_proj"),
    *TIMM_NEURON_MAPS,
)


def _is_timm_tower(model_cfg: dict) -> bool:
    return "timm_model_name" in model_cfg.get("vision_cfg", {})


def build_open_clip_model(model_cfg: dict) -> nn.Module:
    """The open_clip CLIP / CustomTextCLIP of ``model_cfg``, random-initialised, no weights downloaded
    (what ``open_clip.create_model`` builds for this config before it loads a checkpoint)."""
    try:
        from open_clip.model import CLIP, CustomTextCLIP
    except ImportError as error:
        raise ImportError("this checkpoint is an open_clip model: `pip install open-clip-torch`") from error
    cfg = copy.deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise ValueError("open_clip CoCa models are not supported (only CLIP / CustomTextCLIP)")
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    if _is_timm_tower(cfg):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    try:
        return (CustomTextCLIP if custom_text else CLIP)(**cfg)
    except RuntimeError as error:
        if "Unknown model" in str(error):  # timm trunk name this timm does not know
            raise ValueError(f"the image tower's timm model is unknown to this timm ({error}): upgrade timm") from error
        raise


class AmpOpenCLIPConfig(PreTrainedConfig):
    """``open_clip_config``: {"model_cfg": ..., "preprocess_cfg": ...} as in open_clip's Hub layout.
    ``num_hidden_layers`` / ``hidden_size`` / ``intermediate_size``: the image tower's depth, width and unpruned
    MLP width. ``max_position_embeddings`` / ``vocab_size``: the text tower's context length and vocabulary."""

    model_type = "amp_open_clip"
    open_clip_config: dict | None = None
    open_clip_model_name: str | None = None  # the open_clip base id (built-in name or hf-hub:org/repo)
    num_hidden_layers: int = 0
    hidden_size: int = 0
    intermediate_size: int = 0
    image_size: int | list[int] = 224
    num_channels: int = 3
    projection_dim: int = 0
    max_position_embeddings: int = 77
    vocab_size: int = 49408
    pad_token_id: int | None = 0  # open_clip's tokenizers pad with 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    amp_pruning: dict | None = None

    @property
    def model_cfg(self) -> dict:
        return (self.open_clip_config or {}).get("model_cfg", {})

    @property
    def preprocess_cfg(self) -> dict:
        return (self.open_clip_config or {}).get("preprocess_cfg", {})

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.get("text_cfg", {}).get("context_length", 77))


class OpenCLIPVisionTower(nn.Module):
    """A view of the image tower returning transformers outputs: ``last_hidden_state`` (every token after the
    last block; open_clip native towers: before ``ln_post``) and ``pooler_output`` (the pooled feature before
    the final projection). Not registered as a submodule: it owns no weights of its own."""

    def __init__(self, visual: nn.Module, config: AmpOpenCLIPConfig):
        super().__init__()
        object.__setattr__(self, "visual", visual)  # keep it out of _modules (no duplicate state-dict keys)
        self.config = config

    def named_parameters(self, *args, **kwargs):  # the image tower's own (parameter counts, devices)
        return self.visual.named_parameters(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self.visual.parameters(recurse)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False, **_) -> BaseModelOutputWithPooling:
        visual = self.visual
        if hasattr(visual, "trunk"):  # open_clip TimmModel
            tokens = visual.trunk.forward_features(pixel_values)
            pooled = visual.trunk.forward_head(tokens, pre_logits=True)
        else:  # open_clip VisionTransformer
            tokens = visual.transformer(visual._embeds(pixel_values))
            pooled, _ = visual._pool(tokens)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=pooled, hidden_states=(tokens,) if output_hidden_states else None
        )


class OpenCLIPTokenizer:
    """open_clip's tokenizer behind the call signature of a transformers tokenizer. open_clip text towers
    take exactly ``context_length`` tokens (pad/truncate arguments are accepted and ignored) and find the end
    token themselves, so only ``input_ids`` is returned."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, return_tensors="pt", **_):
        texts = [text] if isinstance(text, str) else list(text)
        return {"input_ids": self.tokenizer(texts)}


class OpenCLIPProcessor:
    """Images -> ``pixel_values`` with open_clip's eval transform, texts -> ``input_ids`` with its tokenizer,
    both built from an ``open_clip_config`` ({"model_cfg", "preprocess_cfg"})."""

    def __init__(self, open_clip_config: dict):
        from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.open_clip_config = open_clip_config
        text_cfg = open_clip_config.get("model_cfg", {}).get("text_cfg", {})
        context_length = int(text_cfg.get("context_length", 77))
        kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
        if "hf_tokenizer_name" in text_cfg:
            tokenizer = HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length, **kwargs)
        else:
            tokenizer = SimpleTokenizer(context_length=context_length, **kwargs)
        self.tokenizer = OpenCLIPTokenizer(tokenizer)
        self.transform = image_transform_v2(PreprocessCfg(**open_clip_config.get("preprocess_cfg", {})), is_train=False)

    @classmethod
    def from_pretrained(cls, path):
        with open(os.path.join(path, OPEN_CLIP_CONFIG_FILE)) as handle:
            return cls(json.load(handle))

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        batch = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            batch["pixel_values"] = torch.stack([self.transform(image) for image in images])
        if text is not None:
            batch.update(self.tokenizer(text))
        return batch

    def save_pretrained(self, save_directory, **_):
        os.makedirs(save_directory, exist_ok=True)
        with open(os.path.join(save_directory, OPEN_CLIP_CONFIG_FILE), "w") as handle:
            json.dump(self.open_clip_config, handle, indent=2)


class AmpOpenCLIPPreTrainedModel(PreTrainedModel):
    config_class = AmpOpenCLIPConfig
    base_model_prefix = "open_clip_model"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _no_split_modules = ["AmpOpenCLIPModel"]
    model_tags = ["open_clip"]
    _supports_sdpa = True
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        # Every weight comes from the checkpoint (or from open_clip's own init when built directly).
        pass

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.rebuild_non_persistent_buffers()
        return loaded

    def rebuild_non_persistent_buffers(self) -> None:
        """Recompute the buffers no checkpoint holds (loading leaves them uninitialised): open_clip's causal
        text masks and timm's position / rotary tables."""
        for module in self.modules():
            if hasattr(module, "init_non_persistent_buffers"):  # timm
                module.init_non_persistent_buffers()
            if "attn_mask" not in getattr(module, "_non_persistent_buffers_set", ()) or module.attn_mask is None:
                continue
            if hasattr(module, "build_causal_mask"):  # open_clip TextTransformer
                module.attn_mask = module.build_causal_mask().to(module.attn_mask.device)
            else:  # open_clip CLIP keeps its text tower's causal mask: -inf above the diagonal
                size = module.attn_mask.shape[-1]
                mask = torch.full((size, size), float("-inf"), device=module.attn_mask.device).triu_(1)
                module.attn_mask = mask.to(module.attn_mask.dtype)


class AmpOpenCLIPModel(PerLayerMLPWidthsMixin, AmpOpenCLIPPreTrainedModel):
    """``get_image_features`` / ``get_text_features`` (projected, like CLIPModel's), and ``forward`` returning
    CLIP-style ``logits_per_image`` / ``logits_per_text``. ``open_clip_model`` is the open_clip module."""

    def __init__(self, config: AmpOpenCLIPConfig):
        super().__init__(config)
        self.open_clip_model = build_open_clip_model(config.model_cfg)
        self.post_init()

    _amp_neuron_maps = NEURON_MAPS

    @classmethod
    def _amp_stack_root(cls, model: nn.Module) -> nn.Module:
        return model.open_clip_model.visual  # native resblocks or timm trunk blocks, found by probing

    @property
    def vision_model(self) -> OpenCLIPVisionTower:
        return OpenCLIPVisionTower(self.open_clip_model.visual, self.config)

    def get_input_embeddings(self):
        return None

    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """The image tower's final projection of its pooled feature (what ``encode_image`` ends with)."""
        visual = self.open_clip_model.visual
        if hasattr(visual, "trunk"):  # the trunk's own head (timm_proj null, e.g. EVA02-E), then open_clip's
            return visual.head(visual.trunk.head(pooled))
        return pooled @ visual.proj if visual.proj is not None else pooled

    def get_image_features(self, pixel_values: torch.Tensor, **_) -> BaseModelOutputWithPooling:
        return BaseModelOutputWithPooling(pooler_output=self.open_clip_model.encode_image(pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        # open_clip text towers find the end token themselves; the attention mask is not used.
        return BaseModelOutputWithPooling(pooler_output=self.open_clip_model.encode_text(input_ids))

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **_) -> CLIPOutput:  # fmt: skip
        image_embeds = text_embeds = logits_per_image = logits_per_text = None
        if pixel_values is not None:
            image_embeds = nn.functional.normalize(self.get_image_features(pixel_values).pooler_output, dim=-1)
        if input_ids is not None:
            text_embeds = nn.functional.normalize(self.get_text_features(input_ids).pooler_output, dim=-1)
        if image_embeds is not None and text_embeds is not None:
            clip = self.open_clip_model
            logits_per_image = clip.logit_scale.exp() * image_embeds @ text_embeds.T
            if getattr(clip, "logit_bias", None) is not None:
                logits_per_image = logits_per_image + clip.logit_bias
            logits_per_text = logits_per_image.T
        return CLIPOutput(logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                          text_embeds=text_embeds, image_embeds=image_embeds)  # fmt: skip

    # -- open_clip side ----------------------------------------------------------------------------
    @property
    def logit_scale(self) -> nn.Parameter:
        return self.open_clip_model.logit_scale

    def get_processor(self) -> OpenCLIPProcessor:
        """Images and texts as this model was trained on them (open_clip's transform and tokenizer)."""
        return OpenCLIPProcessor(self.config.open_clip_config)

    def get_tokenizer(self):
        """open_clip's own tokenizer for this model (``tokenizer(texts)`` -> token-id tensor)."""
        return self.get_processor().tokenizer.tokenizer

    def get_preprocess(self):
        """open_clip's eval image transform for this model (its ``preprocess_cfg``)."""
        return self.get_processor().transform

    def text_tower_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a zero-shot text classifier depends on: everything outside the image tower."""
        return {name: tensor for name, tensor in self.state_dict().items()
                if not name.startswith("open_clip_model.visual.") and "logit_" not in name}  # fmt: skip

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        # open_clip's own config beside the weights: open_clip.get_tokenizer("local-dir:...") reads it.
        with open(os.path.join(save_directory, OPEN_CLIP_CONFIG_FILE), "w") as handle:
            json.dump(self.config.open_clip_config, handle, indent=2)
