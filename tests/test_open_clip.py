"""open_clip models through the amp_open_clip wrapper: wrap, slice, save, reload both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("open_clip")

import numpy as np
import torch
from helpers import run_card_snippets, run_without_amp_hf
from PIL import Image
from tiny_open_clip import (
    EVA_E_CFG,
    EVA_L_CFG,
    NATIVE_CFG,
    build_open_clip,
    sample_batch,
    save_open_clip_folder,
)
from transformers import AutoModel

import amp_hf
from amp_hf.models import AmpOpenCLIPModel

TESTS = Path(__file__).parent


def outputs(model, batch):
    with torch.no_grad():
        out = model(**batch)
        return {
            "image": model.get_image_features(batch["pixel_values"]).pooler_output,
            "text": model.get_text_features(batch["input_ids"]).pooler_output,
            "logits_per_image": out.logits_per_image,
        }


def assert_outputs_close(actual, expected, atol=1e-5):
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, atol=atol, rtol=1e-5, msg=key)


def uneven_plan(model, seed=0):
    widths = amp_hf.get_adapter(model).widths(model)
    generator = torch.Generator().manual_seed(seed)
    keep = [(w // 3, w, 5)[i % 3] for i, w in enumerate(widths)]
    return amp_hf.PrunePlan(widths, [torch.randperm(w, generator=generator)[:k].tolist() for w, k in zip(widths, keep)],
                            method="random")  # fmt: skip


TOWERS = {"native": NATIVE_CFG, "eva02_e": EVA_E_CFG, "eva02_l": EVA_L_CFG}


def wrapped(name: str, seed: int = 0) -> AmpOpenCLIPModel:
    return amp_hf.wrap_open_clip(build_open_clip(TOWERS[name], seed=seed), model_cfg=TOWERS[name], model_name=name)


@pytest.fixture(scope="module")
def native():
    return wrapped("native")


@pytest.fixture(scope="module", params=sorted(TOWERS))
def tower(request):
    return wrapped(request.param)


def test_wrapper_matches_open_clip(tower):
    clip = tower.open_clip_model
    batch = sample_batch()
    out = outputs(tower, batch)
    with torch.no_grad():
        torch.testing.assert_close(out["image"], clip.encode_image(batch["pixel_values"]))
        torch.testing.assert_close(out["text"], clip.encode_text(batch["input_ids"]))
        image, text, scale = clip(batch["pixel_values"], batch["input_ids"])[:3]
        torch.testing.assert_close(out["logits_per_image"], scale * image @ text.T)
        # the criterion's embedding: the pooled image feature before the final projection
        pre_projection = amp_hf.get_adapter(tower).embed(tower, {"pixel_values": batch["pixel_values"]})
        torch.testing.assert_close(tower.project_image(pre_projection), out["image"])
    assert amp_hf.get_adapter(tower).name == "open_clip"


def test_keep_all_is_exact(tower):
    batch = sample_batch()
    sliced = amp_hf.slice_model(tower, amp_hf.keep_all_plan(tower))
    assert_outputs_close(outputs(sliced, batch), outputs(tower, batch), atol=0)  # keep-all copies: same ops


@pytest.fixture(scope="module")
def saved_towers(tmp_path_factory):
    """Each tower kind sliced unevenly and saved, with the sliced model's outputs."""
    root = tmp_path_factory.mktemp("saved")
    batch = sample_batch()
    cases = {}
    for name in sorted(TOWERS):
        model = wrapped(name)
        plan = uneven_plan(model)
        pruned = amp_hf.slice_model(model, plan).eval()
        path = amp_hf.save_pruned(pruned, root / name, plan=plan)
        cases[name] = (path, plan.widths, outputs(pruned, batch))
    torch.save({"batch": batch, "expected": {name: case[2] for name, case in cases.items()}}, root / "expected.pt")
    return root, cases


def test_slice_save_reload_in_process(saved_towers):
    _, cases = saved_towers
    batch = sample_batch()
    for name, (path, widths, expected) in cases.items():
        config = json.loads((path / "config.json").read_text())
        assert config["model_type"] == "amp_open_clip"
        assert [v["intermediate_size"] for v in config["per_layer_config"].values()] == widths
        assert json.loads((path / "open_clip_config.json").read_text())["model_cfg"] == TOWERS[name]
        for reloaded in (AutoModel.from_pretrained(path), amp_hf.load_model(str(path))):
            assert type(reloaded) is AmpOpenCLIPModel
            assert amp_hf.get_adapter(reloaded).widths(reloaded) == widths
            assert_outputs_close(outputs(reloaded.eval(), batch), expected)


def test_reload_with_only_transformers_and_open_clip(saved_towers):
    """trust_remote_code: the flat modeling file, open_clip and timm (the EVA trunks), no amp_hf."""
    root, cases = saved_towers
    code = f"""
import sys, torch, open_clip
from transformers import AutoModel
sys.path.insert(0, {str(TESTS)!r})
from tiny_open_clip import register_tiny_eva_trunks  # the tiny timm architectures (timm's registry, not amp_hf)
register_tiny_eva_trunks()
data = torch.load({str(root / "expected.pt")!r})
batch = data["batch"]
for name, expected in sorted(data["expected"].items()):
    model = AutoModel.from_pretrained({str(root)!r} + "/" + name, trust_remote_code=True).eval()
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    assert isinstance(model.open_clip_model, (open_clip.CLIP, open_clip.CustomTextCLIP))
    with torch.no_grad():
        out = model(**batch)
        got = {{"image": model.get_image_features(batch["pixel_values"]).pooler_output,
                "text": model.get_text_features(batch["input_ids"]).pooler_output,
                "logits_per_image": out.logits_per_image}}
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, atol=1e-5, rtol=1e-5)
    assert model.get_tokenizer()(["a photo of a cat"]).shape == (1, 16)
    print("ok", name, model.config.amp_pruning["widths"])
"""
    result = run_without_amp_hf(code, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, (_, widths, _) in cases.items():
        assert f"ok {name} {widths}" in result.stdout, result.stdout


def test_card_snippets_run_as_written(tmp_path):
    """The card's open_clip lines (model.get_processor(): open_clip's transform and tokenizer), both snippets on
    a real image file, the transformers one where amp_hf is not installed; the same embeddings both ways."""
    from hub_cards import write_card

    model = amp_hf.load_model(str(save_open_clip_folder(build_open_clip(seed=3), tmp_path / "hub")))
    path = amp_hf.save_pruned(amp_hf.slice_model(model, uneven_plan(model)), tmp_path / "pruned")
    write_card(path, repo_id="me/open-clip-amp")
    assert "AutoTokenizer" not in (path / "README.md").read_text()  # open_clip's tokenizer is no transformers one
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "image.jpg")
    with_amp_hf, without_amp_hf = run_card_snippets(path / "README.md", "me/open-clip-amp", path, tmp_path)
    assert set(with_amp_hf) == set(without_amp_hf) >= {"image_embeds", "text_embeds", "probs"}
    for key, value in with_amp_hf.items():
        torch.testing.assert_close(without_amp_hf[key], value, atol=1e-5, rtol=1e-5, msg=key)
    embed_dim = NATIVE_CFG["embed_dim"]
    assert with_amp_hf["image_embeds"].shape == (1, embed_dim) and with_amp_hf["text_embeds"].shape == (2, embed_dim)
    torch.testing.assert_close(with_amp_hf["probs"].sum(dim=-1), torch.ones(1))


def test_open_clip_hub_folder_loads_through_load_model(tmp_path):
    clip = build_open_clip(seed=3)
    folder = save_open_clip_folder(clip, tmp_path / "hub")
    model = amp_hf.load_model(str(folder))
    assert type(model) is AmpOpenCLIPModel
    batch = sample_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(batch["pixel_values"]).pooler_output,
                                   clip.encode_image(batch["pixel_values"]))  # fmt: skip
    assert model.config.preprocess_cfg["size"] == 32


def test_wrap_refuses_what_it_cannot_rebuild():
    clip = build_open_clip()
    with pytest.raises(amp_hf.CheckpointError, match="model_name"):
        amp_hf.wrap_open_clip(clip)
    with pytest.raises(amp_hf.CheckpointError, match="not an open_clip CLIP"):
        amp_hf.wrap_open_clip(torch.nn.Linear(2, 2), model_cfg=NATIVE_CFG)


# -- zero-shot evaluation and the CE criterion ------------------------------------------------------------


def test_zero_shot_classification_reuses_the_base_text_classifier(native, tmp_path):
    import torch.nn.functional as F

    from amp_hf.data import DataConfig
    from amp_hf.evaluation.tasks import evaluate_zero_shot

    data = DataConfig(source="digits", num_samples=24, batch_size=12)
    templates = ("a photo of the number {}.", "a drawing of a {}.")
    base_results = evaluate_zero_shot(native, data, templates=templates, cache_dir=tmp_path)
    [cache_file] = list(tmp_path.iterdir())
    pruned = amp_hf.slice_model(native, uneven_plan(native)).eval()
    results = evaluate_zero_shot(pruned, data, templates=templates, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [cache_file]  # same text tower: the cached classifier is reused
    assert {r.metric for r in results} >= {"top1"}
    assert all(0.0 <= r.value <= 1.0 for r in base_results + results)

    # the classifier is open_clip's own: normalised mean over templates of encode_text(tokenize(prompt))
    from amp_hf.evaluation.zero_shot import load_text_classifier

    classifier, classnames, _ = load_text_classifier(cache_file)
    tokenizer = native.get_tokenizer()
    with torch.no_grad():
        expected = torch.stack([
            F.normalize(F.normalize(native.open_clip_model.encode_text(tokenizer([t.format(c) for t in templates])),
                                    dim=-1).mean(0), dim=0)
            for c in classnames
        ]).T  # fmt: skip
    torch.testing.assert_close(classifier, expected, atol=1e-5, rtol=1e-5)


def test_ce_criterion_uses_zero_shot_prompts(native):
    import torch.nn.functional as F

    from amp_hf.selection.criteria import CriterionConfig, build_criterion

    classes = ["cat", "dog", "car"]
    criterion = build_criterion(CriterionConfig(name="ce", class_names=classes))
    criterion.prepare(amp_hf.resolve(native), native.get_processor())
    batch = sample_batch()
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        loss = criterion(amp_hf.resolve(native), {"pixel_values": batch["pixel_values"], "labels": labels})
        clip = native.open_clip_model
        text = clip.encode_text(native.get_tokenizer()([f"a photo of a {c}." for c in classes]), normalize=True)
        logits = clip.logit_scale.exp() * clip.encode_image(batch["pixel_values"], normalize=True) @ text.T
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels), atol=1e-5, rtol=1e-5)


# -- ONNX export --------------------------------------------------------------------------------------------


def test_onnx_vision_and_text_graphs_match_pytorch(native, tmp_path):
    import onnxruntime as ort

    from amp_hf.cli import main

    pruned = amp_hf.slice_model(native, uneven_plan(native)).eval()
    checkpoint = amp_hf.save_pruned(pruned, tmp_path / "pruned", processor=pruned.get_processor())
    assert main(["export", str(checkpoint), str(tmp_path / "onnx")]) == 0
    metadata = json.loads((tmp_path / "onnx" / "amp_export.json").read_text())
    graphs = metadata["graphs"]
    assert set(graphs) == {"vision_model", "text_model"}
    for graph in graphs.values():
        assert all(output["passed"] for output in graph["validation"]["outputs"].values()), graph["validation"]
    assert graphs["text_model"]["inputs"]["input_ids"]["shape"] == ["batch_size", 16]  # open_clip's context length

    # real prompts through open_clip's tokenizer, one image: the graphs agree with the PyTorch model
    tokens = pruned.get_tokenizer()(["a photo of a cat", "a diagram"]).numpy()
    image = sample_batch()["pixel_values"][:1]
    text_session = ort.InferenceSession(str(tmp_path / "onnx" / "text_model.onnx"), providers=["CPUExecutionProvider"])
    vision_session = ort.InferenceSession(str(tmp_path / "onnx" / "vision_model.onnx"), providers=["CPUExecutionProvider"])
    [text_embeds] = text_session.run(["text_embeds"], {"input_ids": tokens})
    [image_embeds] = vision_session.run(["image_embeds"], {"pixel_values": image.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(text_embeds), pruned.get_text_features(torch.from_numpy(tokens)).pooler_output,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
        torch.testing.assert_close(torch.from_numpy(image_embeds), pruned.get_image_features(image).pooler_output,
                                   atol=1e-4, rtol=1e-4)  # fmt: skip


# -- distillation -------------------------------------------------------------------------------------------


def test_distillation_recovers_from_the_open_clip_teacher(tmp_path):
    """`amp-hf distill` with an open_clip Hub folder as teacher and its pruned amp_open_clip student."""
    from amp_hf.cli import main

    clip = build_open_clip(seed=9)
    save_open_clip_folder(clip, tmp_path / "teacher")
    student = amp_hf.slice_model(wrapped("native", seed=9), amp_hf.PrunePlan([64] * 3, [range(16)] * 3, method="magnitude"))
    amp_hf.save_pruned(student, tmp_path / "student")
    argv = ["distill", f"teacher={tmp_path / 'teacher'}", f"student={tmp_path / 'student'}", f"output={tmp_path / 'out'}",
            "data.source=digits", "data.num_samples=32", "data.batch_size=16", "schedule.epochs=1"]  # fmt: skip
    assert main(argv) == 0
    distilled = amp_hf.load_model(str(tmp_path / "out"))
    assert amp_hf.get_adapter(distilled).widths(distilled) == [16, 16, 16]
    changed = [not torch.equal(a, b) for a, b in zip(distilled.state_dict().values(), student.state_dict().values())]
    assert any(changed)  # the student was trained
    batch = sample_batch()
    with torch.no_grad():  # the text tower is not trained: text features stay the teacher's
        torch.testing.assert_close(distilled.get_text_features(batch["input_ids"]).pooler_output,
                                   clip.encode_text(batch["input_ids"]))  # fmt: skip


# -- reconstruct.objective=residual: native towers refit their MLP outputs, EVA02 trunks as timm's --------------


def test_residual_objective_on_open_clip_towers():
    from helpers import magnitude_plan, objective_block_errors

    from amp_hf.errors import ConfigError
    from amp_hf.reconstruct import ReconstructConfig, reconstruct

    def pixels(count, first_seed=0):
        return [{"pixel_values": torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))}
                for seed in range(first_seed, first_seed + count)]

    for name, attention_refit in (("native", False), ("eva02_l", True)):
        model = wrapped(name)
        writers = amp_hf.get_adapter(model).residual_writers(amp_hf.resolve(model).layers[1])
        # nn.MultiheadAttention's out_proj runs inside F.multi_head_attention_forward: the MLP output only
        assert [w.projection for w in writers] == (["attn.proj", None] if attention_refit else [None]), name
        errors, pruned, report = objective_block_errors(model, magnitude_plan(model), pixels(24), pixels(3, first_seed=100))
        if attention_refit:  # EVA02-L's SwiGLU norm renormalises the kept neurons: only the residual fit sees that
            assert errors["residual"][0] < errors["mlp"][0], (name, errors)
        else:
            assert errors["residual"][0] == pytest.approx(errors["mlp"][0], rel=1e-3), name
        for layer in range(1, len(errors["mlp"])):
            assert errors["residual"][layer] < 0.98 * errors["mlp"][layer], (name, errors)
        assert any(r.status == "reconstructed" for r in report.attention) == attention_refit, name
    post_norm = wrapped("eva02_e")  # EvaBlockPostNorm normalises each writer's output before the addition
    with pytest.raises(ConfigError, match=r"layout that fits layer 0 \(EvaBlockPostNorm\)"):
        reconstruct(post_norm, magnitude_plan(post_norm), pixels(2), ReconstructConfig(enabled=True, objective="residual"))
