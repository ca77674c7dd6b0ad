"""Tiny random timm vision transformers, one per MLP class amp-hf prunes, built offline (pretrained=False)
and written in timm's Hub layout with ``timm.models.save_for_hf``.

Each case is a real timm architecture name (so its block / MLP / pooling settings are the real ones) with
the size shrunk by ``create_model`` keyword arguments.
"""

from __future__ import annotations

from pathlib import Path

import torch

SIZE = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 28, "patch_size": 14}
# case -> (timm architecture, what it covers)
TIMM_CASES = {
    "vit_mlp": ("vit_base_patch16_224", "VisionTransformer, Block, Mlp, CLS token"),
    "vit_registers": ("vit_small_patch14_reg4_dinov2", "VisionTransformer, Mlp, CLS + 4 register tokens"),
    "deit_distilled": ("deit_tiny_distilled_patch16_224",
                       "VisionTransformerDistilled (DeiT): CLS + distillation token, head + head_dist"),
    "dinov2_swiglu_packed": ("vit_giant_patch14_dinov2", "VisionTransformer, SwiGLUPacked (a fused GluMlp)"),
    "eva02_glu": ("eva02_tiny_patch14_224", "Eva, EvaBlock, GluMlp (fused [gate; value] fc1), average pool"),
    "eva02_swiglu_norm": ("eva02_large_patch14_clip_224", "Eva, SwiGLU with the inner LayerNorm (EVA02-CLIP-L)"),
    "eva02_post_norm": ("eva02_enormous_patch14_clip_224", "Eva, EvaBlockPostNorm, Mlp (EVA02-CLIP-E)"),
}


def build_timm(case: str, seed: int = 0, num_classes: int = 0):
    """The tiny timm model of ``case`` with seeded random weights (eval mode). Biases and norm weights are
    randomised too (timm zero/one-inits them), so that slicing mistakes show in the outputs."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(TIMM_CASES[case][0], pretrained=False, num_classes=num_classes, **SIZE).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def save_timm_folder(model, path: Path, num_classes: int = 0) -> Path:
    """``model`` in timm's Hub layout; ``model_args`` holds ``num_classes`` as save_for_hf writes it when
    asked (the TimmWrapper wrinkle amp-hf handles)."""
    import timm

    timm.models.save_for_hf(model, str(path), model_args={**SIZE, "num_classes": num_classes})
    return path


def sample_pixels(batch_size: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, SIZE["img_size"], SIZE["img_size"], generator=generator)
