"""timm VisionTransformer / Eva models through the amp_timm_wrapper type: load (folders and objects), slice,
save, reload both ways, and the equivalences pruning relies on — one tiny case per MLP class."""

from __future__ import annotations

import json

import pytest

timm = pytest.importorskip("timm")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import run_card_snippets, run_without_amp_hf  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_timm import SIZE, TIMM_CASES, build_timm, sample_pixels, save_timm_folder  # noqa: E402
from transformers import AutoModel  # noqa: E402

import amp_hf  # noqa: E402
from amp_hf.families.timm import TimmError, wrap_timm  # noqa: E402
from amp_hf.models import AmpTimmWrapperModel, find_neuron_map  # noqa: E402

CASES = list(TIMM_CASES)


@pytest.fixture(scope="module")
def timm_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm")
    return {case: save_timm_folder(build_timm(case), root / case) for case in CASES}


def uneven_plan(model, seed: int = 3) -> amp_hf.PrunePlan:
    """Layer i keeps a random ~(i+1)/(depth+1) share of its neurons (every width different)."""
    widths = amp_hf.get_adapter(model).widths(model)
    generator = torch.Generator().manual_seed(seed)
    kept = [sorted(torch.randperm(w, generator=generator)[: max(1, w * (i + 1) // (len(widths) + 1) + i)].tolist())
            for i, w in enumerate(widths)]  # fmt: skip
    return amp_hf.PrunePlan(widths, kept, method="random")


def features(model, pixels) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        outputs = model(pixel_values=pixels)
    return {"last_hidden_state": outputs.last_hidden_state, "pooler_output": outputs.pooler_output}


@pytest.mark.parametrize("case", CASES)
def test_timm_folder_loads_despite_num_classes_in_model_args(case, timm_folders):
    folder = timm_folders[case]
    assert json.loads((folder / "config.json").read_text())["model_args"]["num_classes"] == 0  # the wrinkle
    model = amp_hf.load_model(str(folder))
    reference = build_timm(case)
    pixels = sample_pixels()
    assert type(model.timm_model) is type(reference)
    with torch.no_grad():
        torch.testing.assert_close(features(model, pixels)["last_hidden_state"], reference.forward_features(pixels),
                                   rtol=0, atol=0)  # fmt: skip  # exact: same timm model, weights, inputs, process
        # The criterion's embedding is timm's own pre-logits feature.
        embedding = amp_hf.get_adapter(model).embed(model, {"pixel_values": pixels})
        torch.testing.assert_close(embedding, reference.forward_head(reference.forward_features(pixels), pre_logits=True))


@pytest.mark.parametrize("case", CASES)
def test_keeping_every_neuron_is_bit_exact(case, timm_folders):
    model = amp_hf.load_model(str(timm_folders[case]))
    kept = amp_hf.slice_model(model, amp_hf.keep_all_plan(model))
    pixels = sample_pixels()
    for name, value in features(model, pixels).items():
        assert torch.equal(features(kept, pixels)[name], value), name  # keep-all copies every weight: same ops


@pytest.fixture(scope="module")
def pruned_checkpoints(timm_folders, tmp_path_factory):
    """Every case sliced to uneven widths and saved: case -> (path, plan, outputs of the sliced model)."""
    root = tmp_path_factory.mktemp("pruned")
    pixels = sample_pixels()
    torch.save(pixels, root / "pixels.pt")
    saved = {}
    for case in CASES:
        model = amp_hf.load_model(str(timm_folders[case]))
        plan = uneven_plan(model)
        pruned = amp_hf.slice_model(model, plan)
        saved[case] = (amp_hf.save_pruned(pruned, root / case, plan), plan, features(pruned, pixels))
    return root, saved


@pytest.mark.parametrize("case", CASES)
def test_uneven_slice_saves_and_reloads_with_amp_hf(case, pruned_checkpoints):
    root, saved = pruned_checkpoints
    path, plan, expected = saved[case]
    assert len(set(plan.widths)) == len(plan.widths)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "amp_timm_wrapper" and "num_classes" not in (config["model_args"] or {})
    assert [config["per_layer_config"][str(i)]["intermediate_size"] for i in range(len(plan.widths))] == plan.widths
    reloaded = AutoModel.from_pretrained(path)  # amp_hf imported: no remote code
    assert isinstance(reloaded, AmpTimmWrapperModel) and type(reloaded.timm_model).__name__ in (
        "VisionTransformer", "VisionTransformerDistilled", "Eva")
    assert amp_hf.get_adapter(reloaded).widths(reloaded) == plan.widths
    for name, value in features(reloaded, torch.load(root / "pixels.pt")).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-5)


def test_every_case_reloads_with_only_transformers_and_timm(pruned_checkpoints):
    """One interpreter without amp-hf loads every case through the saved remote code."""
    root, saved = pruned_checkpoints
    code = f"""
import torch, timm
from transformers import AutoModel
pixels = torch.load({str(root / 'pixels.pt')!r})
results = {{}}
for case in {list(saved)!r}:
    model = AutoModel.from_pretrained({str(root)!r} + "/" + case, trust_remote_code=True).eval()
    assert type(model).__name__ == "AmpTimmWrapperModel", type(model)
    assert isinstance(model.timm_model, (timm.models.VisionTransformer, timm.models.Eva)), type(model.timm_model)
    with torch.no_grad():
        out = model(pixel_values=pixels)
        tokens = model.timm_model.forward_features(pixels)  # the plain timm module
    results[case] = {{"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output, "timm": tokens}}
torch.save(results, {str(root / 'remote.pt')!r})
"""
    result = run_without_amp_hf(code, cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(root / "remote.pt")
    for case, (_, _, expected) in saved.items():
        for name, value in expected.items():
            torch.testing.assert_close(remote[case][name], value, rtol=0, atol=1e-5, msg=f"{case} {name}")
        torch.testing.assert_close(remote[case]["timm"], expected["last_hidden_state"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", [case for case in CASES if case != "eva02_swiglu_norm"])
def test_slicing_equals_zeroing_the_dropped_neurons(case, timm_folders):
    # Not for SwiGLU with its inner LayerNorm: that norm's statistics run over the kept neurons only, so
    # removing neurons is not the same as zeroing them (the pruned model is the one the search evaluates).
    model = amp_hf.load_model(str(timm_folders[case]))
    plan = uneven_plan(model)
    adapter = amp_hf.get_adapter(model)
    pixels = sample_pixels()
    handles = []
    for layer, kept, width in zip(adapter.layers(model), plan.kept, plan.original_widths):
        mask = torch.zeros(width)
        mask[kept] = 1.0
        output = find_neuron_map(layer, adapter.neuron_maps).output(layer)
        handles.append(output.register_forward_pre_hook(lambda module, args, mask=mask: (args[0] * mask,)))
    zeroed = features(model, pixels)
    for handle in handles:
        handle.remove()
    sliced = features(amp_hf.slice_model(model, plan), pixels)
    for name, value in zeroed.items():
        torch.testing.assert_close(sliced[name], value, rtol=0, atol=1e-5)


def test_a_fused_glu_neuron_is_its_gate_row_and_value_row():
    model = wrap_timm(build_timm("eva02_glu"), model_args=SIZE)
    stack = amp_hf.resolve(model)
    layer, neuron_map = stack.mlps()[0]
    fc1 = layer.mlp.fc1.weight
    width = neuron_map.width(layer)
    assert neuron_map.chunks == 2 and fc1.shape[0] == 2 * width
    vectors = neuron_map.input_vectors(layer)  # what DGMR's Gram-Schmidt reads
    torch.testing.assert_close(vectors[5], torch.cat([fc1[5], fc1[width + 5]]), rtol=0, atol=0)


def test_wrap_timm_holds_the_object_and_checks_model_args():
    timm_model = build_timm("eva02_swiglu_norm")
    wrapped = wrap_timm(timm_model, model_args=SIZE)
    assert wrapped.timm_model is timm_model and type(wrapped).__name__ == "TimmWrapperModel"
    assert amp_hf.get_adapter(wrapped).widths(wrapped) == [timm_model.blocks[0].mlp.fc2.in_features] * SIZE["depth"]
    with pytest.raises(TimmError, match="pass model_args="):
        wrap_timm(timm_model, model_args={**SIZE, "depth": 3})
    classifier = wrap_timm(build_timm("vit_mlp", num_classes=5), model_args=SIZE)
    assert type(classifier).__name__ == "TimmWrapperForImageClassification"
    assert classifier(pixel_values=sample_pixels()).logits.shape == (2, 5)


def test_an_unsupported_timm_block_names_the_supported_classes(tmp_path):
    model = timm.create_model("vit_small_patch16_18x2_224", pretrained=False, num_classes=0, **SIZE)  # parallel blocks
    timm.models.save_for_hf(model, str(tmp_path / "parallel"), model_args={**SIZE, "num_classes": 0})
    with pytest.raises(amp_hf.UnsupportedModelError,
                       match="ParallelThingsBlock.*supported timm blocks are Block, ResPostBlock, EvaBlock"):
        amp_hf.load_model(str(tmp_path / "parallel"))


DIGITS = ["scoring.data.source=digits", "scoring.data.num_samples=32", "scoring.data.batch_size=16"]


def test_amp_run_on_eva02_reloads_with_only_transformers_and_timm(timm_folders, tmp_path):
    """The headline case: EVA02's SwiGLU (fc1_g, fc1_x, inner LayerNorm) pruned by AMP end to end."""
    from amp_hf.cli import main

    output = tmp_path / "eva02-amp"
    assert main(["run", f"model={timm_folders['eva02_swiglu_norm']}", f"output={output}", *DIGITS,
                 "search.delta_e=0.002"]) == 0  # fmt: skip
    report = json.loads((output / "prune_report.json").read_text())
    model = AutoModel.from_pretrained(output)
    assert amp_hf.get_adapter(model).widths(model) == report["widths"]
    assert max(report["widths"]) < 85  # something was pruned
    pixels = sample_pixels()
    torch.save(pixels, tmp_path / "pixels.pt")
    code = f"""
import torch
from transformers import AutoModel
model = AutoModel.from_pretrained({str(output)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    torch.save(model(pixel_values=torch.load({str(tmp_path / 'pixels.pt')!r})).pooler_output, {str(tmp_path / 'out.pt')!r})
"""
    result = run_without_amp_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), features(model, pixels)["pooler_output"],
                               rtol=0, atol=1e-5)  # fmt: skip


# -- DeiT distilled (VisionTransformerDistilled): a distillation token beside the CLS token, and two heads ----------


@pytest.fixture(scope="module")
def deit_classifier_folder(tmp_path_factory):
    """The tiny DeiT distilled model with both heads (5 classes), in timm's Hub layout."""
    root = tmp_path_factory.mktemp("deit")
    return save_timm_folder(build_timm("deit_distilled", num_classes=5), root / "deit", num_classes=5)


def classifier_outputs(model, pixels) -> dict[str, torch.Tensor]:
    """Logits through the wrapper, and what timm's own forward_head averages, computed by hand."""
    timm_model = model.timm_model
    with torch.no_grad():
        tokens = timm_model.forward_features(pixels)
        return {
            "logits": model(pixel_values=pixels).logits,
            "two_heads": (timm_model.head(tokens[:, 0]) + timm_model.head_dist(tokens[:, 1])) / 2,
            "embedding": timm_model.forward_head(tokens, pre_logits=True),
            "two_tokens": (tokens[:, 0] + tokens[:, 1]) / 2,
        }


def test_deit_distilled_embedding_and_logits_follow_timm(deit_classifier_folder):
    model = amp_hf.load_model(str(deit_classifier_folder))
    assert type(model).__name__ == "TimmWrapperForImageClassification"
    assert type(model.timm_model).__name__ == "VisionTransformerDistilled"
    pixels = sample_pixels()
    got = classifier_outputs(model, pixels)
    # eval: the classifier output is the mean of head(CLS) and head_dist(distillation token), the embedding the
    # mean of the two tokens (timm's forward_head); same ops on the same tensors, so equal to the last bit
    torch.testing.assert_close(got["logits"], got["two_heads"], rtol=0, atol=0)
    embedding = amp_hf.get_adapter(model).embed(model, {"pixel_values": pixels})
    torch.testing.assert_close(embedding, got["two_tokens"], rtol=0, atol=0)
    torch.testing.assert_close(got["embedding"], got["two_tokens"], rtol=0, atol=0)
    # the tower's own weights exclude both heads (parameter counts and the criterion read them)
    tower = {id(p) for p in amp_hf.get_adapter(model).backbone(model).parameters()}
    heads = [*model.timm_model.head.parameters(), *model.timm_model.head_dist.parameters()]
    assert heads and not any(id(p) in tower for p in heads)
    assert id(model.timm_model.dist_token) in tower


def test_deit_distilled_keeping_every_neuron_reproduces_the_unpruned_logits(deit_classifier_folder, tmp_path):
    model = amp_hf.load_model(str(deit_classifier_folder))
    plan = amp_hf.keep_all_plan(model)
    kept = amp_hf.slice_model(model, plan)
    pixels = sample_pixels()
    expected = classifier_outputs(model, pixels)
    for name, value in classifier_outputs(kept, pixels).items():
        assert torch.equal(value, expected[name]), name  # keep-all copies every weight: same ops
    reloaded = amp_hf.load_model(str(amp_hf.save_pruned(kept, tmp_path / "kept", plan)))
    for name, value in classifier_outputs(reloaded, pixels).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)


def test_amp_prune_of_deit_distilled_reloads_with_only_transformers_and_timm(deit_classifier_folder, tmp_path):
    """`amp-hf prune` on a DeiT distilled classifier: AMP scores, adaptive search, slice, save; the saved
    remote code rebuilds VisionTransformerDistilled with both heads and gives the in-memory pruned outputs."""
    from amp_hf.cli import main

    output = tmp_path / "deit-amp"
    assert main(["prune", f"model={deit_classifier_folder}", f"output={output}", *DIGITS,
                 "search.delta_e=0.002"]) == 0  # fmt: skip
    report = json.loads((output / "prune_report.json").read_text())
    pruned = amp_hf.load_model(str(output))
    base = amp_hf.load_model(str(deit_classifier_folder))
    assert type(pruned).__name__ == "AmpTimmWrapperForImageClassification"
    assert amp_hf.get_adapter(pruned).widths(pruned) == report["widths"]
    assert sum(report["widths"]) < sum(amp_hf.get_adapter(base).widths(base))  # something was pruned
    for name in ("dist_token", "head.weight", "head_dist.weight", "head_dist.bias"):  # not pruned: copied
        assert torch.equal(pruned.timm_model.state_dict()[name], base.timm_model.state_dict()[name]), name
    pixels = sample_pixels()
    torch.save(pixels, tmp_path / "pixels.pt")
    expected = classifier_outputs(pruned, pixels)
    torch.testing.assert_close(expected["logits"], expected["two_heads"], rtol=0, atol=0)
    code = f"""
import torch, timm
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained({str(output)!r}, trust_remote_code=True).eval()
assert type(model).__name__ == "AmpTimmWrapperForImageClassification", type(model)
assert type(model.timm_model) is timm.models.deit.VisionTransformerDistilled, type(model.timm_model)
pixels = torch.load({str(tmp_path / 'pixels.pt')!r})
with torch.no_grad():
    tokens = model.timm_model.forward_features(pixels)
    out = {{"logits": model(pixel_values=pixels).logits,
            "embedding": model.timm_model.forward_head(tokens, pre_logits=True)}}
torch.save(out, {str(tmp_path / 'remote.pt')!r})
"""
    result = run_without_amp_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "remote.pt")
    for name in ("logits", "embedding"):
        torch.testing.assert_close(remote[name], expected[name], rtol=0, atol=1e-5, msg=name)


def test_deit_distilled_classifier_exports_to_onnx(deit_classifier_folder, tmp_path):
    import onnxruntime

    from export import ExportOptions, export_checkpoint

    model = amp_hf.load_model(str(deit_classifier_folder))
    plan = uneven_plan(model)
    path = amp_hf.save_pruned(amp_hf.slice_model(model, plan), tmp_path / "pruned", plan)
    result = export_checkpoint(path, tmp_path / "onnx", ExportOptions(target="onnx"))
    validation = result.metadata["graphs"]["model"]["validation"]
    assert validation["onnx_checker"] == "passed" and set(validation["outputs"]) == {"logits"}
    assert all(output["passed"] for output in validation["outputs"].values())
    pixels = sample_pixels(batch_size=3, seed=7)  # another batch size than the export traced
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
    expected = classifier_outputs(amp_hf.load_model(str(path)), pixels)["logits"]
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.multiprocess
def test_two_process_scoring_equals_one_process(timm_folders, tmp_path):
    from helpers import REPO, accelerate_launch
    from safetensors.torch import load_file

    from amp_hf.cli import main

    args = ["score", f"model={timm_folders['eva02_glu']}", *DIGITS]
    assert main([*args, "--output", str(tmp_path / "one")]) == 0
    double = accelerate_launch([*args, "--output", str(tmp_path / "two")], cwd=REPO)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = load_file(str(tmp_path / "one" / "scores.safetensors")), load_file(str(tmp_path / "two" / "scores.safetensors"))
    assert one.keys() == two.keys() and one
    for key in one:
        if key.endswith(".abs"):  # the scores pruning uses: every neuron within rtol 1e-5
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-12)
        else:  # signed means cancel across samples: float32 noise at the layer's scale
            torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5 * float(one[key].abs().max()))


# EVA02 (rotary embeddings) as the TensorRT-ready graph (opset 17), the ViT with registers as plain ONNX.
@pytest.mark.parametrize(("case", "target"), [("eva02_swiglu_norm", "tensorrt"), ("vit_registers", "onnx")])
def test_onnx_export_is_validated_and_runs_in_onnxruntime(case, target, timm_folders, tmp_path):
    import onnxruntime

    from export import ExportOptions, export_checkpoint

    model = amp_hf.load_model(str(timm_folders[case]))
    plan = uneven_plan(model)
    path = amp_hf.save_pruned(amp_hf.slice_model(model, plan), tmp_path / "pruned", plan)
    result = export_checkpoint(path, tmp_path / "onnx", ExportOptions(target=target))
    validation = result.metadata["graphs"]["model"]["validation"]
    assert validation["onnx_checker"] == "passed"
    assert all(output["passed"] for output in validation["outputs"].values())
    assert set(validation["outputs"]) == {"last_hidden_state", "pooler_output"}

    pixels = sample_pixels(batch_size=3, seed=7)  # another batch size than the export traced
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"pixel_values": pixels.numpy()})))
    expected = features(amp_hf.load_model(str(path)), pixels)
    for name in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(torch.from_numpy(got[name]), expected[name], rtol=1e-3, atol=1e-4)


def test_card_names_the_timm_base_and_shows_timm_usage(timm_folders, tmp_path):
    from huggingface_hub import ModelCard

    from hub_cards import write_card

    model = amp_hf.load_model(str(timm_folders["eva02_swiglu_norm"]))
    plan = uneven_plan(model)
    path = amp_hf.save_pruned(amp_hf.slice_model(model, plan), tmp_path / "pruned", plan)
    write_card(path, repo_id="me/eva02-amp")
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.base_model == "timm/eva02_large_patch14_clip_224.merged2b"  # from the timm config
    assert "timm" in card.data.tags
    body = card.text
    assert 'from_pretrained(\n    "me/eva02-amp", trust_remote_code=True' in body
    assert "model.timm_model" in body and 'TimmWrapperImageProcessor.from_pretrained("me/eva02-amp")' in body
    for layer, width in enumerate(plan.widths):
        assert f"| {layer} | 85 | {width} |" in body

    # Both snippets as written, on a real image file; the transformers one where amp_hf is not installed.
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "image.jpg")
    with_amp_hf, without_amp_hf = run_card_snippets(path / "README.md", "me/eva02-amp", path, tmp_path)
    assert set(with_amp_hf) == set(without_amp_hf) == {"outputs.last_hidden_state", "outputs.pooler_output"}
    for key, value in with_amp_hf.items():
        torch.testing.assert_close(without_amp_hf[key], value, atol=1e-5, rtol=1e-5, msg=key)
    assert with_amp_hf["outputs.pooler_output"].shape == (1, model.timm_model.num_features)  # pre-logits


@pytest.mark.parametrize("name", ["timm_vit_g14_clip", "timm_eva02_clip_e14", "timm_dinov2_g14"])
def test_headline_tower_configs_parse_with_the_papers_settings(name):
    from helpers import REPO

    from amp_hf.files.config_utils import load_config
    from amp_hf.pruning import PruneConfig

    config = load_config(PruneConfig, REPO / "configs" / f"{name}.yaml")
    settings = {"timm_vit_g14_clip": (15, 0.01), "timm_eva02_clip_e14": (20, 0.002), "timm_dinov2_g14": (20, 0.005)}
    assert (config.method, config.search.allocation) == ("amp", "adaptive")
    assert (config.criterion.temp_inv, config.search.delta_e) == settings[name]


def test_ce_criterion_reads_the_timm_classifier_head():
    import torch.nn.functional as F

    from amp_hf.selection.criteria import CriterionConfig, build_criterion

    model = wrap_timm(build_timm("vit_mlp", num_classes=5), model_args=SIZE)
    criterion = build_criterion(CriterionConfig(name="ce"))
    criterion.prepare(amp_hf.resolve(model), None)  # a head inside timm_model counts
    batch = {"pixel_values": sample_pixels(), "labels": torch.tensor([1, 3])}
    with torch.no_grad():
        expected = F.cross_entropy(model.timm_model(batch["pixel_values"]), batch["labels"])
        torch.testing.assert_close(criterion(amp_hf.resolve(model), batch), expected)


# -- reconstruct.objective=residual: where timm's blocks write into the residual stream --------------------------


def pixel_batches(count: int, first_seed: int = 0) -> list[dict]:
    return [{"pixel_values": sample_pixels(batch_size=8, seed=seed)} for seed in range(first_seed, first_seed + count)]


def eva02_with_layer_scale():
    """EvaBlock with init_values: LayerScale as the gamma_1 / gamma_2 parameters (not modules)."""
    torch.manual_seed(0)
    args = {**SIZE, "init_values": 0.5}
    return wrap_timm(timm.create_model("eva02_tiny_patch14_224", pretrained=False, **args).eval(), model_args=args)


@pytest.mark.parametrize("case, scale", [("vit_mlp", "ls1"), ("vit_registers", "ls1"), ("eva02_swiglu_norm", None),
                                         ("eva02_layer_scale", "gamma_1")])  # fmt: skip
def test_residual_objective_refits_timm_attention_and_mlp_outputs(case, scale):
    model = eva02_with_layer_scale() if case == "eva02_layer_scale" else wrap_timm(build_timm(case), model_args=SIZE)
    from helpers import magnitude_plan, objective_block_errors

    layer = amp_hf.resolve(model).layers[1]
    attention, mlp = amp_hf.get_adapter(model).residual_writers(layer)
    assert (attention.projection, attention.stream, attention.scale) == ("attn.proj", "norm2", scale)
    assert mlp.projection is None and (mlp.scale is None) == (scale is None)
    # 24 batches of 8: with fewer tokens per fit the held-out damping choice keeps the tiny blocks near their start
    errors, pruned, report = objective_block_errors(model, magnitude_plan(model), pixel_batches(24),
                                                    pixel_batches(3, first_seed=100))
    if case == "eva02_swiglu_norm":
        # the inner LayerNorm over the hidden width renormalises the kept neurons: the per-MLP objective fits on the
        # unpruned activations' subset, the residual one on what the pruned fc2 really reads, so it is closer
        assert errors["residual"][0] < errors["mlp"][0], errors
    else:  # nothing pruned upstream of layer 0: both objectives fit the same target on the same inputs
        assert errors["residual"][0] == pytest.approx(errors["mlp"][0], rel=1e-3)
    assert errors["residual"][1] < 0.98 * errors["mlp"][1], errors  # block 1 absorbs block 0's drift
    assert report.attention[0].reason == "no pruned MLP before it"
    assert report.attention[1].error_sliced is not None  # layer 1's attention output was fit (kept if it helped)


def test_residual_objective_is_refused_for_timm_post_norm_blocks():
    from helpers import magnitude_plan

    from amp_hf.errors import ConfigError
    from amp_hf.reconstruct import ReconstructConfig, reconstruct

    model = wrap_timm(build_timm("eva02_post_norm"), model_args=SIZE)
    with pytest.raises(ConfigError, match=r"layout that fits layer 0 \(EvaBlockPostNorm\)"):
        reconstruct(model, magnitude_plan(model), pixel_batches(2),
                    ReconstructConfig(enabled=True, objective="residual"))
