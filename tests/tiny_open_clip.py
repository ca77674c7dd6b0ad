"""Tiny random open_clip models (native and timm-trunk towers) from model-config dicts, built offline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
NATIVE_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "mlp_ratio": 2, "patch_size": 8},
    "text_cfg": TEXT_CFG,
}
# open_clip's timm towers build their trunk by timm model name: tiny EVA02 trunks registered under test names.
# EVA02-E style: plain Mlp, post-norm blocks (EVA02-CLIP-bigE-14(-plus)); EVA02-L style: SwiGLU with a LayerNorm
# over the hidden width (scale_mlp), separate q/k/v projections.
EVA_E_TIMM = "amp_test_eva02_e_tiny"
EVA_L_TIMM = "amp_test_eva02_l_tiny"
EVA_E_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "timm_model_name": EVA_E_TIMM, "timm_model_pretrained": False,
                   "timm_pool": "token", "timm_proj": None},
    "text_cfg": TEXT_CFG,
    "custom_text": True,
}
EVA_L_CFG = {**EVA_E_CFG, "vision_cfg": {**EVA_E_CFG["vision_cfg"], "timm_model_name": EVA_L_TIMM}}


def register_tiny_eva_trunks() -> None:
    """Register the tiny EVA02 trunks with timm (idempotent)."""
    import timm
    from timm.models import register_model
    from timm.models.eva import _create_eva

    if timm.is_model(EVA_E_TIMM):
        return
    base = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, use_rot_pos_emb=True,
                ref_feat_shape=(4, 4))  # fmt: skip

    def eva_e(pretrained=False, **kwargs):
        args = dict(base, mlp_ratio=2.5, use_post_norm=True, global_pool=kwargs.pop("global_pool", "token"))
        return _create_eva(EVA_E_TIMM, pretrained=pretrained, **dict(args, **kwargs))

    def eva_l(pretrained=False, **kwargs):
        args = dict(base, mlp_ratio=4 * 2 / 3, qkv_fused=False, swiglu_mlp=True, scale_mlp=True,
                    scale_attn_inner=True, global_pool=kwargs.pop("global_pool", "token"))  # fmt: skip
        return _create_eva(EVA_L_TIMM, pretrained=pretrained, **dict(args, **kwargs))

    eva_e.__name__, eva_l.__name__ = EVA_E_TIMM, EVA_L_TIMM
    register_model(eva_e)
    register_model(eva_l)


PREPROCESS_CFG = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic"}


def build_open_clip(model_cfg: dict = NATIVE_CFG, seed: int = 0):
    """The open_clip CLIP of ``model_cfg`` with seeded random weights (eval mode)."""
    from amp_hf.models.modeling_amp_open_clip import build_open_clip_model

    if "timm_model_name" in model_cfg["vision_cfg"]:
        register_tiny_eva_trunks()
    torch.manual_seed(seed)
    model = build_open_clip_model(copy.deepcopy(model_cfg)).eval()
    with torch.no_grad():  # open_clip zero-inits some biases; random values make slicing mistakes visible
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.02)
    return model


def save_open_clip_folder(model, path: Path, model_cfg: dict = NATIVE_CFG) -> Path:
    """Write ``model`` in open_clip's Hub layout (open_clip_config.json + open_clip_model.safetensors)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS_CFG}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


def sample_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 49000, (3, TEXT_CFG["context_length"]), generator=generator)
    ids[:, -1] = 49407  # an end token: open_clip's text pooling takes the argmax id
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator), "input_ids": ids}
