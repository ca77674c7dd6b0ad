"""`amp-hf import`: official AMP / DGMR pruned .pth layouts -> amp-hf checkpoints (outputs equal the
hand-pruned model), and one clear error per mismatch kind with nothing written."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from tiny_models import build

import amp_hf
from amp_hf.cli import main

needs_open_clip = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="needs open_clip")


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


# -- DINOv2 (facebookresearch layout) ------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def dinov2_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("dinov2")
    base = build("dinov2_swiglu")
    with torch.no_grad():  # non-trivial layer scales and biases
        for name, parameter in base.named_parameters():
            if name.endswith(("lambda1", "bias")):
                parameter.normal_(0, 0.1)
    base.save_pretrained(root / "base")
    pruned = amp_hf.slice_model(base, hand_plan(base)).eval()
    return root, pruned


@pytest.mark.parametrize("chunks", [0, 2])
def test_dgmr_dinov2_file_imports(dinov2_case, tmp_path, chunks):
    root, pruned = dinov2_case
    weights = tmp_path / "distill.pth"
    torch.save(to_facebook_dinov2(pruned.state_dict(), chunks), weights)
    assert run_import(weights, root / "base", tmp_path / "out", "--method", "dgmr") == 0
    imported = amp_hf.load_model(str(tmp_path / "out"))
    assert amp_hf.get_adapter(imported).widths(imported) == amp_hf.get_adapter(pruned).widths(pruned)
    config = json.loads((tmp_path / "out" / "config.json").read_text())["amp_pruning"]
    assert config["method"] == "imported-dgmr" and config["source_layout"] == "dinov2"
    assert config["source_file"] == "distill.pth" and len(config["source_sha256"]) == 64
    assert_same_outputs(imported, pruned, {"pixel_values": torch.randn(2, 3, 32, 32)})


def _mismatch_cases(state: dict, width_key: str, shape_key: str) -> dict:
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


def test_dinov2_mismatches_fail_clearly_and_write_nothing(dinov2_case, tmp_path, capsys):
    root, pruned = dinov2_case
    state = to_facebook_dinov2(pruned.state_dict())
    cases = _mismatch_cases(state, "blocks.1.mlp.w3.weight", "norm.weight")
    for expected, broken in cases.items():
        weights = tmp_path / "bad.pth"
        torch.save(broken, weights)
        assert run_import(weights, root / "base", tmp_path / "out") == 2
        message = capsys.readouterr().err
        assert expected in message and "Traceback" not in message, message
        assert len([line for line in message.splitlines() if "error" in line]) == 1, message
        assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.pth"]
    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "bad.pth")
    assert run_import(tmp_path / "bad.pth", root / "base", tmp_path / "out") == 2
    assert "state dict" in capsys.readouterr().err


# -- open_clip native towers (AMP vision-tower files, DGMR whole-CLIP files) -----------------------------------


@pytest.fixture(scope="module")
def open_clip_case(tmp_path_factory):
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("needs open_clip")
    from tiny_open_clip import NATIVE_CFG, build_open_clip, save_open_clip_folder

    root = tmp_path_factory.mktemp("open_clip")
    clip = build_open_clip(seed=4)
    save_open_clip_folder(clip, root / "base")
    base = amp_hf.wrap_open_clip(clip, model_cfg=NATIVE_CFG)
    return root, amp_hf.slice_model(base, hand_plan(base)).eval()


OPEN_CLIP = "open_clip_model."


@needs_open_clip
@pytest.mark.parametrize("layout", ["amp-visual", "dgmr-clip", "fsdp-wrapped"])
def test_official_open_clip_files_import(open_clip_case, tmp_path, layout):
    from tiny_open_clip import sample_batch

    root, pruned = open_clip_case
    state = pruned.state_dict()
    if layout == "amp-visual":  # ScoreEstimator.save: the VisionTransformer's own state dict
        file_state = {k[len(OPEN_CLIP + "visual."):]: v for k, v in state.items() if k.startswith(OPEN_CLIP + "visual.")}
    else:  # distill.py: the whole CLIP, `visual.` + text tower
        file_state = {k[len(OPEN_CLIP):]: v for k, v in state.items()}
    if layout == "fsdp-wrapped":
        file_state = {"state_dict": {"module." + k: v for k, v in file_state.items()}}
    weights = tmp_path / "model_layer.pth"
    torch.save(file_state, weights)
    method = "amp" if layout == "amp-visual" else "dgmr"
    assert run_import(weights, root / "base", tmp_path / "out", "--method", method) == 0
    imported = amp_hf.load_model(str(tmp_path / "out"))
    assert amp_hf.get_adapter(imported).widths(imported) == amp_hf.get_adapter(pruned).widths(pruned)
    info = imported.config.amp_pruning
    assert info["method"] == f"imported-{method}"
    assert info["source_layout"] == ("open_clip-visual" if layout == "amp-visual" else "open_clip-clip")
    assert_same_outputs(imported, pruned, sample_batch())


@needs_open_clip
def test_open_clip_mismatches_fail_clearly(open_clip_case, dinov2_case, tmp_path, capsys):
    root, pruned = open_clip_case
    prefix = OPEN_CLIP + "visual."
    state = {k[len(prefix):]: v for k, v in pruned.state_dict().items() if k.startswith(prefix)}
    cases = _mismatch_cases(state, "transformer.resblocks.0.mlp.c_proj.weight", "ln_post.weight")
    cases["matches no official layout"] = to_facebook_dinov2(dinov2_case[1].state_dict())  # wrong model
    for expected, broken in cases.items():
        torch.save(broken, tmp_path / "bad.pth")
        assert run_import(tmp_path / "bad.pth", root / "base", tmp_path / "out") == 2
        message = capsys.readouterr().err
        assert expected in message and "Traceback" not in message, message
        assert not (tmp_path / "out").exists()
