"""Shared by the `amp-hf import` tests: hand-pruned plans, the facebookresearch DINOv2 key layout written by
hand (independently of amp_hf.importing's map), and the mismatch kinds every layout must reject."""

from __future__ import annotations

import torch

import amp_hf
from amp_hf.cli import main


def hand_plan(model, seed=0):
    """A different random subset per layer, in shuffled order (AMP stores kept neurons by importance)."""
    widths = amp_hf.get_adapter(model).widths(model)
    generator = torch.Generator().manual_seed(seed)
    keep = [max(1, w // (2 + i)) for i, w in enumerate(widths)]
    return amp_hf.PrunePlan(widths, [torch.randperm(w, generator=generator)[:k].tolist() for w, k in zip(widths, keep)],
                            method="random")  # fmt: skip


def run_import(weights, base, output, *extra):
    return main(["import", str(weights), "--base", str(base), "--output", str(output), *extra])


def assert_same_outputs(imported, expected, inputs):
    with torch.no_grad():
        got, want = imported(**inputs), expected(**inputs)
    for key in ("last_hidden_state", "pooler_output", "logits_per_image", "image_embeds", "text_embeds"):
        if getattr(want, key, None) is not None:
            torch.testing.assert_close(getattr(got, key), getattr(want, key), atol=1e-5, rtol=1e-5, msg=key)


def to_facebook_dinov2(state: dict, chunks: int = 0) -> dict:
    """A transformers Dinov2 state dict written with the facebookresearch DinoVisionTransformer names."""
    out = {
        "cls_token": state["embeddings.cls_token"],
        "mask_token": state["embeddings.mask_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    per_chunk = -(-len(layers) // chunks) if chunks else 0
    for i in layers:
        src = f"encoder.layer.{i}."
        dst = f"blocks.{i // per_chunk}.{i}." if chunks else f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"norm1.{kind}"] = state[src + f"norm1.{kind}"]
            out[dst + f"norm2.{kind}"] = state[src + f"norm2.{kind}"]
            out[dst + f"attn.qkv.{kind}"] = torch.cat([state[src + f"attention.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.proj.{kind}"] = state[src + f"attention.o_proj.{kind}"]
            out[dst + f"mlp.w12.{kind}"] = torch.cat([state[src + f"mlp.gate_proj.{kind}"], state[src + f"mlp.up_proj.{kind}"]])
            out[dst + f"mlp.w3.{kind}"] = state[src + f"mlp.down_proj.{kind}"]
        out[dst + "ls1.gamma"] = state[src + "layer_scale1.lambda1"]
        out[dst + "ls2.gamma"] = state[src + "layer_scale2.lambda1"]
    return out


def mismatch_cases(state: dict, width_key: str, shape_key: str) -> dict:
    larger = dict(state)
    base_rows = larger[width_key]
    larger[width_key] = torch.cat([base_rows] * 10, dim=1)  # more hidden neurons than the base has
    wrong_shape = dict(state)
    wrong_shape[shape_key] = torch.zeros(wrong_shape[shape_key].shape[0] + 1)
    return {
        "missing key": {k: v for k, v in state.items() if k != shape_key},
        "extra key": {**state, "head.weight": torch.zeros(3, 3)},
        "MLP width": larger,
        "has shape": wrong_shape,
    }


def assert_mismatches_fail_clearly(cases: dict, base, tmp_path, capsys) -> None:
    """Each broken file of ``cases`` (expected message -> state dict) is refused with that message, one line, no
    traceback, nothing written."""
    import torch

    for expected, broken in cases.items():
        torch.save(broken, tmp_path / "bad.pth")
        assert run_import(tmp_path / "bad.pth", base, tmp_path / "out") == 2
        message = capsys.readouterr().err
        assert expected in message and "Traceback" not in message, message
        assert not (tmp_path / "out").exists()
