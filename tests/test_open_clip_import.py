"""`amp-hf import` of the official open_clip layouts (AMP vision-tower files, DGMR whole-CLIP files) and EVA-CLIP
layouts into open_clip EVA02 bases (AMP vision-tower files, DGMR's whole-model EVA ft.pth)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("open_clip")

import torch
from import_layouts import (
    assert_mismatches_fail_clearly,
    assert_same_outputs,
    hand_plan,
    mismatch_cases,
    run_import,
    to_facebook_dinov2,
)
from tiny_models import build
from tiny_open_clip import (
    NATIVE_CFG,
    build_open_clip,
    sample_batch,
    save_open_clip_folder,
)

import amp_hf


@pytest.fixture(scope="module")
def open_clip_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip")
    clip = build_open_clip(seed=4)
    save_open_clip_folder(clip, root / "base")
    base = amp_hf.wrap_open_clip(clip, model_cfg=NATIVE_CFG)
    return root, amp_hf.slice_model(base, hand_plan(base)).eval()


OPEN_CLIP = "open_clip_model."


@pytest.mark.parametrize("layout", ["amp-visual", "dgmr-clip", "fsdp-wrapped"])
def test_official_open_clip_files_import(open_clip_case, tmp_path, layout):
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


def test_open_clip_mismatches_fail_clearly(open_clip_case, tmp_path, capsys):
    root, pruned = open_clip_case
    prefix = OPEN_CLIP + "visual."
    state = {k[len(prefix):]: v for k, v in pruned.state_dict().items() if k.startswith(prefix)}
    cases = mismatch_cases(state, "transformer.resblocks.0.mlp.c_proj.weight", "ln_post.weight")
    cases["matches no official layout"] = to_facebook_dinov2(build("dinov2_swiglu").state_dict())  # wrong model
    assert_mismatches_fail_clearly(cases, root / "base", tmp_path, capsys)


# -- EVA-CLIP vision towers (AMP's EVA02-CLIP files) into open_clip EVA02 models with timm trunks ----------------


def to_eva_clip(state: dict) -> dict:
    """A timm-trunk image tower's tensors with EVA-CLIP's EVAVisionTransformer names (its own code)."""
    prefix = OPEN_CLIP + "visual.trunk."
    swiglu = any(key.endswith(".mlp.fc1_g.weight") for key in state)  # EVA-CLIP's SwiGLU: w1, w2, ffn_ln, w3
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        key = key.replace("mlp.norm.", "mlp.ffn_ln.").replace("attn.norm.", "attn.inner_attn_ln.")
        key = key.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.")
        if swiglu:
            key = key.replace("mlp.fc2.", "mlp.w3.")
        key = key.replace("attn.q_proj.bias", "attn.q_bias").replace("attn.v_proj.bias", "attn.v_bias")
        out[key] = value
    out["rope.freqs_cos"] = torch.zeros(16, 8)  # EVA-CLIP saves its rotary tables; they are rebuilt, not loaded
    out["rope.freqs_sin"] = torch.zeros(16, 8)
    return out


@pytest.mark.parametrize("config_name", ["eva02_e", "eva02_l"])
def test_amp_eva_clip_files_import(tmp_path, config_name):
    from tiny_open_clip import EVA_E_CFG, EVA_L_CFG

    model_cfg = {"eva02_e": EVA_E_CFG, "eva02_l": EVA_L_CFG}[config_name]
    clip = build_open_clip(model_cfg, seed=6)
    save_open_clip_folder(clip, tmp_path / "base", model_cfg)
    base = amp_hf.wrap_open_clip(clip, model_cfg=model_cfg)
    pruned = amp_hf.slice_model(base, hand_plan(base)).eval()
    file_state = to_eva_clip(pruned.state_dict())
    assert "blocks.0.mlp.fc1.weight" in file_state or "blocks.0.mlp.w1.weight" in file_state
    torch.save(file_state, tmp_path / "model_layer.pth")
    assert run_import(tmp_path / "model_layer.pth", tmp_path / "base", tmp_path / "out") == 0
    imported = amp_hf.load_model(str(tmp_path / "out"))
    assert imported.config.amp_pruning["source_layout"] == "eva_clip-visual"
    assert amp_hf.get_adapter(imported).widths(imported) == amp_hf.get_adapter(pruned).widths(pruned)
    assert_same_outputs(imported, pruned, sample_batch())


# -- DGMR's EVA ft.pth: the whole EVA-CLIP CustomCLIP after text-tower fine-tuning, in bf16 ----------------------
# DGMR finetune.py builds EVA-CLIP with create_model_and_transforms(..., force_custom_clip=True) (visual + text +
# logit_scale), freezes the image tower, trains the text tower, model.to(torch.bfloat16), and saves
# model.module.state_dict(): `visual.` EVAVisionTransformer names, `text.` TextTransformer names, `logit_scale`.

# EVA-CLIP's TextTransformer tensors (baaivision/EVA EVA-CLIP/rei/eva_clip/transformer.py, the tower DGMR's
# clip/eva_clip/model.py builds: nn.MultiheadAttention blocks, LayerNorm weights and biases; attn_mask is not
# persistent), written out by hand so that open_clip's names are checked against them, not assumed.
EVA_CLIP_TEXT_BLOCK = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                       "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                       "mlp.c_proj.weight", "mlp.c_proj.bias")  # fmt: skip


def eva_clip_text_names(layers: int) -> list[str]:
    blocks = [f"transformer.resblocks.{i}.{name}" for i in range(layers) for name in EVA_CLIP_TEXT_BLOCK]
    return ["token_embedding.weight", "positional_embedding", *blocks, "ln_final.weight", "ln_final.bias",
            "text_projection"]  # fmt: skip


@pytest.fixture(scope="module")
def dgmr_eva_ft(tmp_path_factory):
    """A tiny EVA02-E open_clip base, its hand-pruned image tower, a fine-tuned text tower, and the ft.pth."""
    from tiny_open_clip import EVA_E_CFG, TEXT_CFG

    root = tmp_path_factory.mktemp("dgmr_eva_ft")
    clip = build_open_clip(EVA_E_CFG, seed=8)
    save_open_clip_folder(clip, root / "base", EVA_E_CFG)
    base = amp_hf.wrap_open_clip(clip, model_cfg=EVA_E_CFG)
    pruned = amp_hf.slice_model(base, hand_plan(base, seed=2)).eval()
    generator = torch.Generator().manual_seed(9)
    text_prefix = OPEN_CLIP + "text."
    state = pruned.state_dict()
    fine_tuned_text = {key[len(text_prefix):]: value + 0.05 * torch.randn(value.shape, generator=generator)
                       for key, value in state.items() if key.startswith(text_prefix)}  # fmt: skip
    assert sorted(fine_tuned_text) == sorted(eva_clip_text_names(TEXT_CFG["layers"]))  # the same names
    file_state = {
        **{"visual." + key: value for key, value in to_eva_clip(state).items()},
        **{"text." + name: fine_tuned_text[name] for name in eva_clip_text_names(TEXT_CFG["layers"])},
        "logit_scale": torch.tensor(3.2),
    }
    file_state = {key: value.to(torch.bfloat16) for key, value in file_state.items()}  # model.to(torch.bfloat16)
    torch.save(file_state, root / "ft.pth")
    # What the file holds as an open_clip model: the pruned model's tensors replaced by the file's, strictly.
    reference = amp_hf.slice_model(base, hand_plan(base, seed=2)).eval()
    reference_state = {key[len(OPEN_CLIP):]: value.to(torch.bfloat16).float() for key, value in state.items()}
    reference_state.update({"text." + name: value.to(torch.bfloat16).float() for name, value in fine_tuned_text.items()})
    reference_state["logit_scale"] = file_state["logit_scale"].float()
    reference.open_clip_model.load_state_dict(reference_state, strict=True)
    return root, base, pruned, reference


def test_dgmr_eva_ft_file_imports_with_its_own_text_tower(dgmr_eva_ft, tmp_path):
    root, base, pruned, reference = dgmr_eva_ft
    assert run_import(root / "ft.pth", root / "base", tmp_path / "out", "--method", "dgmr") == 0
    imported = amp_hf.load_model(str(tmp_path / "out"))
    info = imported.config.amp_pruning
    assert (info["method"], info["source_layout"], info["source_file"]) == ("imported-dgmr", "eva_clip-clip", "ft.pth")
    assert amp_hf.get_adapter(imported).widths(imported) == amp_hf.get_adapter(pruned).widths(pruned)
    batch = sample_batch()
    with torch.no_grad():
        text = imported.get_text_features(batch["input_ids"]).pooler_output
        # the text tower and logit_scale are the file's (fine-tuned), not the base's
        assert not torch.allclose(text, base.get_text_features(batch["input_ids"]).pooler_output, atol=1e-2)
        # exact: the file's bf16 tensors widened to float32 are the reference's, and the text ops are the same
        assert torch.equal(text, reference.get_text_features(batch["input_ids"]).pooler_output)
        assert torch.equal(imported.logit_scale, reference.logit_scale)
        image = imported.get_image_features(batch["pixel_values"]).pooler_output
        # the image tower went through the EVA-CLIP -> timm renames: float32 noise at most
        torch.testing.assert_close(image, reference.get_image_features(batch["pixel_values"]).pooler_output,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        # and the file is the pruned tower rounded to bf16 (8-bit mantissa): within 1% of its float32 outputs
        full = pruned.get_image_features(batch["pixel_values"]).pooler_output
        torch.testing.assert_close(image, full, rtol=0, atol=0.01 * float(full.abs().max()))
        assert_same_outputs(imported, reference, batch)


def test_dgmr_eva_ft_mismatches_fail_clearly(dgmr_eva_ft, tmp_path, capsys):
    root, _, _, _ = dgmr_eva_ft
    state = torch.load(root / "ft.pth", weights_only=True)
    cases = mismatch_cases(state, "visual.blocks.1.mlp.fc2.weight", "text.ln_final.weight")  # a text key too
    assert_mismatches_fail_clearly(cases, root / "base", tmp_path, capsys)


def test_card_of_an_imported_model_names_its_source_and_zero_shot_results(open_clip_case, tmp_path):
    """The card of an imported official file: the open_clip base, the source file, and zero-shot results."""
    from hub_cards.card import write_card

    root, pruned = open_clip_case
    prefix = OPEN_CLIP + "visual."
    torch.save({k[len(prefix):]: v for k, v in pruned.state_dict().items() if k.startswith(prefix)}, tmp_path / "model_layer.pth")
    out = tmp_path / "imported"
    assert run_import(tmp_path / "model_layer.pth", root / "base", out) == 0
    (out / "eval_report.json").write_text(json.dumps({"model": str(out), "results": [
        {"task": "zeroshot", "dataset": "digits", "split": "test", "metric": "top1", "value": 0.125}]}))  # fmt: skip
    write_card(out, base_model="laion/CLIP-ViT-g-14-laion2B-s34B-b88K")
    card = (out / "README.md").read_text()
    assert "laion/CLIP-ViT-g-14-laion2B-s34B-b88K" in card and "open_clip" in card
    assert "official visresearch/AMP pruned weights" in card and "model_layer.pth" in card
    assert "zero-shot-image-classification" in card and "0.125" in card
