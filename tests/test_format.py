"""The pruned-checkpoint format: slicing, saving, reloading both ways, for every supported family."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import transformers
from helpers import REPO, run_with_amp_hf, run_without_amp_hf
from tiny_models import TINY_FAMILIES, build, sample_inputs
from transformers import AutoConfig, AutoModel

import amp_hf


def uneven_plan(model, seed: int = 0) -> amp_hf.PrunePlan:
    """A different random subset per layer: a third, all of them (still explicit in the config), one."""
    widths = amp_hf.get_adapter(model).widths(model)
    generator = torch.Generator().manual_seed(seed)
    keep = [(max(1, w // 3), w, 1)[i % 3] for i, w in enumerate(widths)]
    kept = [torch.randperm(w, generator=generator)[:k].tolist() for w, k in zip(widths, keep)]
    return amp_hf.PrunePlan(widths, kept, method="random")


def tensor_outputs(outputs) -> dict[str, torch.Tensor]:
    return {k: v for k, v in outputs.items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Every family sliced to uneven widths and saved; outputs on fixed inputs recorded before saving."""
    root = tmp_path_factory.mktemp("checkpoints")
    cases = {}
    for name in TINY_FAMILIES:
        model = build(name)
        plan = uneven_plan(model)
        pruned = amp_hf.slice_model(model, plan)
        inputs = sample_inputs(model)
        with torch.no_grad():
            expected = tensor_outputs(pruned(**inputs))
        path = root / name
        amp_hf.save_pruned(pruned, path, plan)
        torch.save({"inputs": inputs, "expected": expected}, root / f"{name}.pt")
        cases[name] = (model, plan, pruned, path, inputs, expected)
    return root, cases


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_keeping_every_neuron_reproduces_the_model_exactly(name):
    model = build(name)
    pruned = amp_hf.slice_model(model, amp_hf.keep_all_plan(model))
    inputs = sample_inputs(model)
    with torch.no_grad():
        before, after = tensor_outputs(model(**inputs)), tensor_outputs(pruned(**inputs))
    assert before.keys() == after.keys()
    for key in before:
        # exact: keeping every neuron copies every weight, so both run the same ops on the same values
        assert torch.equal(before[key], after[key]), key


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_slicing_equals_zeroing_the_dropped_neurons(name):
    model = build(name)
    plan = uneven_plan(model, seed=3)
    adapter = amp_hf.get_adapter(model)
    handles = []
    for layer, kept, width in zip(adapter.layers(model), plan.kept, plan.original_widths):
        mask = torch.zeros(width)
        mask[kept] = 1.0
        out_linear = amp_hf.models.find_neuron_map(layer, adapter.neuron_maps).output(layer)
        handles.append(out_linear.register_forward_pre_hook(lambda m, args, mask=mask: (args[0] * mask,)))
    inputs = sample_inputs(model)
    with torch.no_grad():
        zeroed = tensor_outputs(model(**inputs))
        for handle in handles:
            handle.remove()
        sliced = tensor_outputs(amp_hf.slice_model(model, plan)(**inputs))
    for key in zeroed:
        torch.testing.assert_close(sliced[key], zeroed[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_reload_with_amp_hf(saved, name):
    _, cases = saved
    model, plan, pruned, path, inputs, expected = cases[name]
    auto_classes = amp_hf.families.AUTO_CLASSES[type(pruned.config)]
    auto_name = next((a for a, cls in auto_classes.items() if cls is type(pruned)), None)
    if auto_name is None:  # e.g. CLIPVisionModelWithProjection: no Auto class maps to it, as in transformers
        reloaded = amp_hf.load_pruned(path)
    else:
        reloaded = getattr(transformers, auto_name).from_pretrained(path)
    assert type(reloaded) is type(pruned)
    assert amp_hf.get_adapter(reloaded).widths(reloaded) == plan.widths
    # same tensor names as the stock class; only MLP tensors changed shape
    stock, pruned_state = model.state_dict(), reloaded.state_dict()
    assert stock.keys() == pruned_state.keys()
    changed = {k for k in stock if stock[k].shape != pruned_state[k].shape}
    assert changed and all(".mlp." in k or ".intermediate." in k or ".output.dense" in k for k in changed)
    with torch.no_grad():
        outputs = tensor_outputs(reloaded(**inputs))
    for key, value in expected.items():
        torch.testing.assert_close(outputs[key], value, atol=1e-5, rtol=1e-5)


def test_config_json_follows_the_format(saved):
    _, cases = saved
    _, plan, _, path, _, _ = cases["clip"]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "amp_clip"
    vision = config["vision_config"]
    assert vision["model_type"] == "amp_clip_vision_model"
    assert [vision["per_layer_config"][k]["intermediate_size"] for k in sorted(vision["per_layer_config"])] == plan.widths
    assert "per_layer_config" not in config["text_config"]
    assert config["auto_map"]["AutoModel"] == "modeling_amp_clip.AmpCLIPModel"
    assert config["amp_pruning"]["widths"] == plan.widths
    assert {"modeling_amp_clip.py", "amp_layer_widths.py", "amp_plan.json", "model.safetensors"} <= set(os.listdir(path))
    assert amp_hf.PrunePlan.load(path).kept == plan.kept
    for line in (path / "modeling_amp_clip.py").read_text().splitlines():
        assert "amp_hf" not in line or line.lstrip().startswith(("#", '"""')), line
    # an unpruned layer (full width) is still explicit
    _, dino_plan, _, dino_path, _, _ = cases["dinov2_swiglu"]
    dino = json.loads((dino_path / "config.json").read_text())
    assert len(dino["per_layer_config"]) == dino["num_hidden_layers"]
    assert dino_plan.widths[1] == dino_plan.original_widths[1]


def test_reload_without_amp_hf_via_trust_remote_code(saved, tmp_path):
    """Only transformers importable: every family loads from its own modeling files, same outputs."""
    root, _ = saved
    code = f"""
import torch
from pathlib import Path
import transformers
from transformers import AutoConfig, AutoModel
root = Path({str(root)!r})
for name in {TINY_FAMILIES!r}:
    config = AutoConfig.from_pretrained(root / name, trust_remote_code=True)
    head = next((h for h in ("ForImageClassification", "ForSequenceClassification")
                 if config.architectures[0].endswith(h)), None)
    cls = getattr(transformers, "AutoModel" + head) if head else AutoModel
    model = cls.from_pretrained(root / name, trust_remote_code=True).eval()
    assert type(model).__name__ == config.architectures[0], (type(model).__name__, config.architectures)
    case = torch.load(root / f"{{name}}.pt")
    with torch.no_grad():
        out = model(**case["inputs"])
    for key, value in case["expected"].items():
        torch.testing.assert_close(out[key], value, atol=1e-5, rtol=1e-5)
    print("ok", name, type(model).__module__)
"""
    result = run_without_amp_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("ok ") == len(TINY_FAMILIES)
    assert "transformers_modules" in result.stdout  # really the remote-code copies


def test_plain_stock_class_refuses_the_pruned_checkpoint(saved):
    """The amp_* model type makes a reader without the code fail loudly, not load wrong shapes silently."""
    _, cases = saved
    path = cases["vit"][3]
    from transformers import ViTModel

    # transformers refuses the MLP shapes the amp_* config declares (ignore_mismatched_sizes is off)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        ViTModel.from_pretrained(path)


def test_image_feature_extraction_pipeline_loads_a_pruned_checkpoint(tmp_path):
    from PIL import Image
    from transformers import ViTImageProcessor, pipeline

    model = build("vit")
    pruned = amp_hf.slice_model(model, uneven_plan(model))
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    amp_hf.save_pruned(pruned, tmp_path / "vit", processor=processor)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path / "vit"))
    features = extractor(Image.new("RGB", (40, 40), color=(10, 200, 30)))
    assert torch.tensor(features).shape[-1] == 32
    assert type(extractor.model).__name__ == "AmpViTModel"


@pytest.mark.parametrize(
    "kept, message",
    [([[], [0], [0]], "at least 1"), ([list(range(65)), [0], [0]], "exceeds the original width"),
     ([[0, 0], [0], [0]], "duplicates"), ([[64], [0], [0]], r"\[0, 64\)"), ([[0], [0]], "lists 2 layers")],
)
def test_bad_widths_are_clear_errors(kept, message):
    with pytest.raises(amp_hf.PlanError, match=message):
        amp_hf.PrunePlan([64, 64, 64], kept)


def test_plan_for_another_model_is_refused():
    model = build("vit")
    with pytest.raises(amp_hf.PlanError, match="re-run selection"):
        amp_hf.slice_model(model, amp_hf.PrunePlan([32, 32, 32], [[0], [0], [0]]))


def test_models_built_without_their_pooler_slice_without_it():
    from tiny_models import _vit
    from transformers import ViTModel

    model = ViTModel(_vit(), add_pooling_layer=False).eval()
    pruned = amp_hf.slice_model(model, uneven_plan(model))
    assert pruned.pooler is None


def test_text_accounting_respects_a_short_position_table():
    model = build("bert")  # max_position_embeddings=64 < the default 128 accounting tokens
    assert amp_hf.model_stats(model)["flops_tower"] > 0


def test_unsupported_model_lists_the_supported_families():
    from transformers import GPT2Config, GPT2Model

    model = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=10, n_positions=8))
    with pytest.raises(amp_hf.UnsupportedModelError, match="CLIPModel.*Dinov2Model.*ViTModel"):
        amp_hf.get_adapter(model)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves neither the target nor a temporary folder behind."""
    model = build("vit")
    pruned = amp_hf.slice_model(model, uneven_plan(model))
    target = tmp_path / "out"

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(amp_hf.PrunePlan, "save", crash)  # fails after the weights were written
    with pytest.raises(RuntimeError, match="disk full"):
        amp_hf.save_pruned(pruned, target, plan=uneven_plan(model))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    amp_hf.save_pruned(pruned, target)
    with pytest.raises(FileExistsError, match="overwrite"):
        amp_hf.save_pruned(pruned, target)
    amp_hf.save_pruned(pruned, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_parameter_and_flop_accounting():
    model = build("vit")
    plan = uneven_plan(model)
    pruned = amp_hf.slice_model(model, plan)
    before, after = amp_hf.model_stats(model), amp_hf.model_stats(pruned)
    hidden = model.config.hidden_size
    removed = sum(plan.original_widths) - sum(plan.widths)
    # each removed neuron: one fc1 row (+ bias) and one fc2 column
    assert before["params_total"] - after["params_total"] == removed * (hidden + 1 + hidden)
    assert before["params_mlp"] - after["params_mlp"] == removed * (2 * hidden + 1)
    tokens = (32 // 8) ** 2 + 1
    assert before["flops_tower"] - after["flops_tower"] == removed * 2 * tokens * 2 * hidden
    assert before["flops_total"] == before["flops_tower"]  # ViTModel is all tower


def test_real_minilm_round_trip(minilm_path, tmp_path):
    from transformers import AutoTokenizer

    model = amp_hf.load_model(minilm_path)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    plan = uneven_plan(model, seed=1)
    pruned = amp_hf.slice_model(model, plan)
    amp_hf.save_pruned(pruned, tmp_path / "minilm", plan, processor=tokenizer)
    reloaded = AutoModel.from_pretrained(tmp_path / "minilm")
    batch = tokenizer(["A cat sits on the mat.", "The stock market fell sharply today."], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).last_hidden_state, pruned(**batch).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)
    assert AutoConfig.from_pretrained(tmp_path / "minilm").model_type == "amp_bert"
    assert amp_hf.get_adapter(reloaded).widths(reloaded) == plan.widths


def test_save_pruned_carries_the_processor_files_of_the_base_folder(vit_checkpoint, tmp_path):
    from transformers import AutoImageProcessor, ViTImageProcessor

    model = amp_hf.load_model(str(vit_checkpoint))  # name_or_path: the base folder
    pruned = amp_hf.slice_model(model, uneven_plan(model))
    carried = amp_hf.save_pruned(pruned, tmp_path / "carried")
    name = "preprocessor_config.json"
    assert (carried / name).read_bytes() == (vit_checkpoint / name).read_bytes()  # copied as it is
    assert AutoImageProcessor.from_pretrained(carried).size == {"height": 32, "width": 32}
    # A processor passed explicitly is what the checkpoint gets; none at all (no base folder): no files.
    given = amp_hf.save_pruned(pruned, tmp_path / "given", processor=ViTImageProcessor(size={"height": 24, "width": 24}))
    assert json.loads((given / name).read_text())["size"] == {"height": 24, "width": 24}
    plain = amp_hf.slice_model(build("vit"), uneven_plan(model))
    assert not (amp_hf.save_pruned(plain, tmp_path / "plain") / name).exists()


def test_readme_python_quick_start_runs_as_written(minilm_path, tmp_path):
    """README's quick start in a fresh process (its relative out/ path under tmp_path), then its tokenizer and
    remote-code loads where amp_hf is not installed: no prompt, no missing tokenizer."""
    readme = (REPO / "README.md").read_text()
    quick_start = re.search(r"## Python quick start\n\n```python\n(.*?)```", readme, flags=re.S).group(1)
    assert 'save_pruned(pruned, "out/minilm-half", plan)' in quick_start and "AutoTokenizer" in quick_start
    result = run_with_amp_hf(quick_start, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    code = """
from transformers import AutoModel, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("out/minilm-half")  # tokenizer_config.json: no config.json, no prompt
model = AutoModel.from_pretrained("out/minilm-half", trust_remote_code=True)
print(model(**tokenizer(["a sentence"], return_tensors="pt")).last_hidden_state.shape[-1])
"""
    bare = run_without_amp_hf(code, cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr[-3000:]
    assert bare.stdout.split()[-1] == "384"  # all-MiniLM-L6-v2's hidden size
