"""export/: every family exports and validates, precision variants run within tolerance, the TensorRT profile is
static but for the batch, the runner matches PyTorch, and bad input fails cleanly without an output folder.

ONNX Runtime results are always recomputed here independently of export's own validation, against the
checkpoint reloaded from disk, at batch sizes and sequence lengths the graphs were neither traced nor
validated at.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny_models
import torch
from helpers import polygraphy_check, run_without_amp_hf
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

import amp_hf
from amp_hf.data import default_image_processor
from amp_hf.families import MODEL_CLASSES
from export import (
    SPECS,
    ExportOptionError,
    ExportOptions,
    ExportRunner,
    ValidationError,
    calibration,
    export_checkpoint,
    load_checkpoint,
    tensorrt,
    validation,
)
from export.specs import architecture_spec, image_shape

slow = pytest.mark.slow
# Full CLIP / SigLIP models (two towers each), a plain and a SwiGLU/classifier DINOv2, BERT, ViT run by default;
# the remaining variants share their export code with one of these.
DEFAULT_FAMILIES = {"vit", "clip", "siglip", "dinov2_swiglu_cls", "bert"}
FAMILIES = [name if name in DEFAULT_FAMILIES else pytest.param(name, marks=slow) for name in tiny_models.TINY_FAMILIES]
WORDS = [
    "[PAD]",
    "[BOS]",
    "[EOS]",
    "[UNK]",
    *["a", "photo", "of", "cat", "dog", "car", "tree", "the", "is", "an"],
]


# -- fixtures ------------------------------------------------------------------------------------------------


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer over a handful of words (ids below every tiny config's vocab size)."""
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        unk_token="[UNK]",
    )


def uneven_plan(model, seed: int = 0) -> amp_hf.PrunePlan:
    """Keep a different, odd-sized random subset of neurons in every layer."""
    widths = amp_hf.get_adapter(model).widths(model)
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for layer, width in enumerate(widths):
        keep = max(1, (width * (5 - layer % 3)) // 8) | 1
        kept.append(torch.randperm(width, generator=generator)[:keep].tolist())
    return amp_hf.PrunePlan(widths, kept, method="random")


def save_tiny_checkpoint(name: str, path: Path) -> Path:
    """A tiny model of family ``name`` pruned to uneven widths, saved with its processor / tokenizer."""
    model = tiny_models.build(name)
    plan = uneven_plan(model)
    pruned = amp_hf.slice_model(model, plan)
    adapter = amp_hf.get_adapter(model)
    amp_hf.save_pruned(pruned, path, plan=plan)
    vision = getattr(model.config, "vision_config", None) or model.config
    if adapter.modality == "image":
        default_image_processor(vision).save_pretrained(path)
    if hasattr(model.config, "text_config") or adapter.modality == "text":
        word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each family at most once per module: ``exported(name) -> (checkpoint, export folder)``."""
    cache = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            checkpoint = save_tiny_checkpoint(name, root / "checkpoint")
            out = root / "onnx"
            export_checkpoint(checkpoint, out)
            cache[name] = checkpoint, out
        return cache[name]

    return get


def ort_outputs(path: Path, feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v.numpy() for k, v in feeds.items()})))


def fresh_inputs(model, modality: str, batch: int, length: int = 7, with_mask: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(99)
    if modality == "image":
        return {"pixel_values": torch.randn(batch, *image_shape(model), generator=generator)}
    vocab = (getattr(model.config, "text_config", None) or model.config).vocab_size
    ids = torch.randint(3, vocab, (batch, length), generator=generator)
    if not with_mask:
        return {"input_ids": ids}
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def no_partial_output(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))


# -- every family ---------------------------------------------------------------------------------------------


def test_every_supported_class_has_an_export_spec():
    assert set(SPECS) == set(MODEL_CLASSES)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_exports_and_matches_pytorch(name, exported):
    checkpoint, out = exported(name)
    metadata = json.loads((out / "amp_export.json").read_text())
    model = load_checkpoint(checkpoint)
    architecture, spec = architecture_spec(model)
    assert metadata["architecture"] == architecture
    assert metadata["mlp_widths"] == uneven_plan(tiny_models.build(name)).widths  # pruned, unevenly
    assert [graph.name for graph in spec.graphs] == list(metadata["graphs"])
    if name in ("clip", "siglip"):
        assert set(metadata["graphs"]) == {"vision_model", "text_model"}

    for graph_spec in spec.graphs:
        entry = metadata["graphs"][graph_spec.name]
        path = out / entry["file"]
        proto = onnx.load(str(path))
        assert proto.opset_import[0].version == 18
        assert [v.name for v in proto.graph.input] == list(graph_spec.inputs)
        dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.input}
        if graph_spec.modality == "image":
            assert dims["pixel_values"] == [
                "batch_size",
                *image_shape(model),
            ]  # static H×W, dynamic batch
            assert "Resize" not in entry["op_counts"]  # no position-embedding interpolation
        else:
            assert all(shape == ["batch_size", "sequence_length"] for shape in dims.values())
        assert entry["validation"]["onnx_checker"] == "passed"
        assert all(report["passed"] for report in entry["validation"]["outputs"].values())

        # Independent re-check: batch 5, text length 7 (traced at 2 / 16, validated at 3 / 11).
        inputs = fresh_inputs(
            model,
            graph_spec.modality,
            5,
            with_mask="attention_mask" in graph_spec.inputs,
        )
        onnx_out = ort_outputs(path, inputs)
        with torch.no_grad():
            torch_out = graph_spec.forward(model, **inputs)
        assert list(onnx_out) == [o for o in graph_spec.outputs if torch_out.get(o) is not None]
        for output, value in onnx_out.items():
            np.testing.assert_allclose(value, torch_out[output].numpy(), atol=1e-4, rtol=1e-3, err_msg=output)


def test_export_folder_config_loads_without_amp_hf(exported, tmp_path):
    """ORT loaders (optimum's ORTModel*) read the export folder's own config.json: the modeling files its
    auto_map names sit beside it, so it loads with trust_remote_code=True where amp_hf is not installed."""
    folders = {name: str(exported(name)[1]) for name in sorted(DEFAULT_FAMILIES)}
    code = f"""
import json, sys
from transformers import AutoConfig

def widths(values):  # every per_layer_config in the config, sub-configs included
    if not isinstance(values, dict):
        return []
    found = [w["intermediate_size"] for w in values.get("per_layer_config", {{}}).values()]
    return found + [w for value in values.values() for w in widths(value)]

result = {{}}
for name, folder in {folders!r}.items():
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    result[name] = [type(config).__module__, config.model_type, widths(config.to_dict())]
assert "amp_hf" not in sys.modules
print(json.dumps(result))
"""
    result = run_without_amp_hf(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.splitlines()[-1])
    for name, folder in folders.items():
        module, model_type, widths = loaded[name]
        metadata = json.loads((Path(folder) / "amp_export.json").read_text())
        assert module.startswith("transformers_modules."), module  # the folder's own copy of the code
        assert model_type == json.loads((Path(folder) / "config.json").read_text())["model_type"]
        assert model_type.startswith("amp_") and widths == metadata["mlp_widths"]


# -- precision ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, check_graph",
    [
        (
            ExportOptions(dtype="fp16", external_data=True),
            lambda proto: (
                any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
                and _layer_norms_compute_in_fp32(proto)
            ),
        ),
        (
            ExportOptions(quantize="int8-dynamic"),
            lambda proto: {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in proto.graph.node},
        ),
        (  # calibrated on scikit-learn's digits (8x8 greyscale, resized by the model's processor)
            ExportOptions(quantize="int8-static", calibration_data="digits", calibration_samples=16),
            lambda proto: (
                {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= {n.op_type for n in proto.graph.node}
                and "DynamicQuantizeLinear" not in {n.op_type for n in proto.graph.node}
            ),
        ),
    ],
    ids=["fp16", "int8-dynamic", "int8-static"],
)
def test_precision_variants_run_on_ort_cpu_within_tolerance(options, check_graph, tmp_path):
    checkpoint = save_tiny_checkpoint("dinov2_swiglu", tmp_path / "checkpoint")
    result = export_checkpoint(checkpoint, tmp_path / "onnx", options)
    path = result.graph_files[0]
    assert check_graph(onnx.load(str(path)))
    if options.external_data:
        assert (path.parent / "model.onnx.data").is_file()
    model = load_checkpoint(checkpoint)
    inputs = fresh_inputs(model, "image", 4)
    onnx_out = ort_outputs(path, inputs)
    with torch.no_grad():
        torch_out = model(**inputs)
    tolerance = validation.TOLERANCES[options.tolerance_key]
    for name, value in onnx_out.items():
        reference = torch_out[name].numpy()
        assert value.dtype == np.float32  # float32 in and out, whatever the graph computes in
        np.testing.assert_allclose(value, reference, atol=tolerance.atol_for(reference), rtol=tolerance.rtol)
        assert not np.allclose(value, reference, atol=1e-6, rtol=0)  # it really is lower precision
    if options.quantize == "int8-static":
        error = result.metadata["graphs"]["model"]["validation"]["quantization_error"]
        assert error["samples"] == calibration.HOLDOUT_SAMPLES and 0.9 < error["embedding_mean_cosine"] < 1
        assert result.metadata["calibration"] == {"source": "digits", "samples": 16, "holdout_samples": 32}


def _layer_norms_compute_in_fp32(proto: onnx.ModelProto) -> bool:
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    norms = [n for n in proto.graph.node if n.op_type == "LayerNormalization"]
    return bool(norms) and all(types.get(n.input[0]) == onnx.TensorProto.FLOAT for n in norms)


def test_cli_export_with_ort_fusions_produces_fused_ops_that_validate(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint("vit", tmp_path / "checkpoint")
    out = tmp_path / "onnx"
    assert _cli("export", str(checkpoint), str(out), "--ort-fusions", "cpu") == 0
    assert f"{out / 'model.onnx'}: validated on CPUExecutionProvider" in capsys.readouterr().out
    ops = json.loads((out / "amp_export.json").read_text())["graphs"]["model"]["op_counts"]
    # attention and GELU stay fused; the skip norms are written as Add + LayerNormalization (faster on CPU)
    assert ops["com.microsoft.Attention"] == 3 and "com.microsoft.SkipLayerNormalization" not in ops
    assert ops["LayerNormalization"] >= 2 * 3
    model = load_checkpoint(checkpoint)
    inputs = fresh_inputs(model, "image", 4)
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state.numpy()
    np.testing.assert_allclose(
        ort_outputs(out / "model.onnx", inputs)["last_hidden_state"],
        reference,
        atol=1e-4,
    )


def test_int8_static_calibrates_on_the_given_source_and_reports_held_out_error(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint("bert", tmp_path / "checkpoint")
    generator = np.random.default_rng(0)
    texts = [" ".join(generator.choice(WORDS[4:], size=generator.integers(2, 12))) for _ in range(48)]
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    out = tmp_path / "onnx"
    code = _cli("export", str(checkpoint), str(out), "--quantize", "int8-static", "--calibration-data", str(data),
                "--calibration-samples", "16")  # fmt: skip
    assert code == 0
    assert "quantization error on 32 held-out examples: embedding mean cosine" in capsys.readouterr().out
    metadata_text = (out / "amp_export.json").read_text()
    assert str(data) not in metadata_text  # only the data source's name is recorded, never a local path
    metadata = json.loads(metadata_text)
    assert metadata["calibration"] == {"source": "texts.jsonl", "samples": 16, "holdout_samples": 32}
    assert metadata["options"]["calibration_data"] == "texts.jsonl"
    proto = onnx.load(str(out / "model.onnx"))
    # The activation scale of the first quantized matmul input (the embeddings' LayerNorm output) is the
    # uint8 min/max range of that activation over exactly the 16 calibration texts.
    model = load_checkpoint(checkpoint)
    spec = architecture_spec(model)[1]
    batches = calibration.load_calibration(model, spec, str(data), 16, checkpoint).batches
    assert sum(len(b["input_ids"]) for b in batches) == 16
    with torch.no_grad():
        hidden = torch.cat([model.embeddings(input_ids=b["input_ids"]).flatten() for b in batches])
    expected_scale = (max(hidden.max().item(), 0) - min(hidden.min().item(), 0)) / 255
    first_norm = next(n for n in proto.graph.node if n.op_type == "LayerNormalization").output[0]
    quantize = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == first_norm)
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert float(scales[quantize.input[1]]) == pytest.approx(expected_scale, rel=1e-4)
    # Recomputed independently on fresh inputs: close to PyTorch, but really int8.
    inputs = fresh_inputs(model, "text", 5, length=9)
    with torch.no_grad():
        reference = model(**inputs).last_hidden_state.numpy()
    actual = ort_outputs(out / "model.onnx", inputs)["last_hidden_state"]
    assert 0.95 < validation.mean_cosine(actual, reference) < 1 - 1e-7


def test_int8_static_refuses_two_tower_models(exported, tmp_path, capsys):
    checkpoint, _ = exported("clip")
    out = tmp_path / "onnx"
    assert _cli("export", str(checkpoint), str(out), "--quantize", "int8-static", "--calibration-data", "digits") == 2
    assert "calibrates one modality" in capsys.readouterr().err
    assert no_partial_output(out)


# -- TensorRT profile -----------------------------------------------------------------------------------------


def test_tensorrt_profile_is_static_but_for_batch_and_on_the_allow_list(tmp_path):
    pytest.importorskip("onnxslim", reason="--target tensorrt needs onnxslim (pip install onnxslim)")
    checkpoint = save_tiny_checkpoint("clip", tmp_path / "checkpoint")
    out = tmp_path / "trt"
    result = export_checkpoint(
        checkpoint,
        out,
        ExportOptions(target="tensorrt", dtype="fp16", tensorrt_batch=(1, 4, 16)),
    )
    allowed = set(
        json.loads((Path(tensorrt.__file__).parent / "data" / "tensorrt_onnx_ops.json").read_text())["supported_ops"]
    )
    model = load_checkpoint(checkpoint)
    text_length = model.config.text_config.max_position_embeddings
    for name, entry in result.metadata["graphs"].items():
        proto = onnx.load(str(out / entry["file"]))
        assert proto.opset_import[0].version == 17
        dynamic = {
            (v.name, axis, d.dim_param)
            for v in (*proto.graph.input, *proto.graph.output)
            for axis, d in enumerate(v.type.tensor_type.shape.dim)
            if not d.HasField("dim_value")
        }
        assert {axis for _, axis, _ in dynamic} == {0} and {p for _, _, p in dynamic} == {"batch_size"}
        assert {n.op_type for n in proto.graph.node} <= allowed and all(n.domain == "" for n in proto.graph.node)
        assert all(t.data_type != onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)  # fp16: a builder flag
        assert result.metadata["tensorrt"][name]["blockers"] == []
        if entry["modality"] == "text":
            assert entry["inputs"]["input_ids"]["shape"] == ["batch_size", text_length]
    script = (out / "trtexec.sh").read_text()
    assert (
        "trtexec --onnx=vision_model.onnx --minShapes=pixel_values:1x3x32x32 --optShapes=pixel_values:4x3x32x32 "
        "--maxShapes=pixel_values:16x3x32x32 --saveEngine=vision_model.plan --fp16" in script
    )
    assert f"--maxShapes=input_ids:16x{text_length},attention_mask:16x{text_length}" in script
    for entry in result.metadata["graphs"].values():
        assert_tensorrt_ready_by_polygraphy(out / entry["file"], opset=17)
    provider_options = json.loads((out / "ort_tensorrt_options.json").read_text())
    assert provider_options["vision_model"]["trt_profile_opt_shapes"] == "pixel_values:4x3x32x32"
    assert provider_options["text_model"]["trt_fp16_enable"] is True
    assert provider_options["text_model"]["trt_engine_cache_enable"] is True

    # The fixed-length text graph still agrees with PyTorch on padded input.
    inputs = fresh_inputs(model, "text", 3, length=text_length)
    with torch.no_grad():
        reference = model.get_text_features(**inputs).pooler_output.numpy()
    np.testing.assert_allclose(
        ort_outputs(out / "text_model.onnx", inputs)["text_embeds"],
        reference,
        atol=1e-4,
    )


def assert_tensorrt_ready_by_polygraphy(graph: Path, opset: int) -> None:
    """NVIDIA's own tool agrees: static shapes but for the batch, the opset, and a clean lint."""
    checked = polygraphy_check(graph, batch=3)
    assert checked["opset"] == opset
    assert checked["io"] and all(
        dims[0] == "batch_size" and all(isinstance(d, int) for d in dims[1:]) for dims in checked["io"].values()
    ), checked["io"]
    assert checked["lint_passed"], checked["lint_log"]
    assert checked["lint"]["summary"]["failing"] == [] and checked["lint"]["lint_entries"] == []


def test_polygraphy_check_catches_dynamic_axes_and_lint_errors(exported, tmp_path):
    """The polygraphy check can fail: a plain ONNX text graph has a dynamic sequence axis, and a graph adding
    a float to an int64 tensor fails the lint."""
    _, out = exported("bert")
    plain = polygraphy_check(out / "model.onnx")
    assert plain["io"]["input_ids"] == ["batch_size", "sequence_length"] and plain["lint_passed"]
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch_size", 4])
    i = onnx.helper.make_tensor_value_info("i", onnx.TensorProto.INT64, ["batch_size", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch_size", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Add", ["x", "i"], ["y"])], "bad", [x, i], [y])
    bad = tmp_path / "bad.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), bad)
    linted = polygraphy_check(bad)
    assert not linted["lint_passed"] and linted["lint"]["lint_entries"], linted["lint_log"]


def test_blocker_report_names_every_problem():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch_size", "tokens"])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT64, [None, None])
    z = onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["batch_size", "tokens"])
    nodes = [
        onnx.helper.make_node("NonZero", ["x"], ["y"]),
        onnx.helper.make_node("FastGelu", ["x"], ["z"], domain="com.microsoft"),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [x], [y, z])
    blockers = tensorrt.find_blockers(onnx.helper.make_model(graph))
    text = "\n".join(blockers)
    assert "NonZero: data-dependent" in text
    assert "FastGelu (domain com.microsoft)" in text
    assert "input x: axis 1 (tokens) is dynamic" in text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target": "tensorrt", "ort_fusions": "cpu"}, "contrib ops"),
        ({"target": "tensorrt", "quantize": "int8-dynamic"}, "TensorRT rejects"),
        ({"dtype": "fp16", "quantize": "int8-dynamic"}, "drop --dtype fp16"),
        ({"dtype": "bf16"}, "unknown dtype 'bf16'"),
        ({"opset": 13}, "too old"),
        ({"tensorrt_batch": (8, 1, 32)}, "MIN <= OPT <= MAX"),
        ({"target": "tensorrt", "quantize": "int8-static"}, "symmetric int8"),
        ({"calibration_data": "digits"}, "calibrates --quantize int8-static"),
        ({"quantize": "int8-static", "calibration_samples": 0}, "must be positive"),
    ],
)
def test_impossible_option_combinations_are_refused(kwargs, message):
    with pytest.raises(ExportOptionError, match=message):
        ExportOptions(**kwargs)


# -- runner ---------------------------------------------------------------------------------------------------


def _images(count: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def test_runner_image_embeddings_match_pytorch(exported):
    checkpoint, out = exported("vit")
    runner = ExportRunner(out)
    assert runner.providers == {"model": ["CPUExecutionProvider"]}  # says which provider ran
    images = _images(3)
    model = load_checkpoint(checkpoint)
    processor = default_image_processor(model.config)
    batch = {"pixel_values": processor(images=images, return_tensors="pt")["pixel_values"]}
    with torch.no_grad():
        reference = amp_hf.get_adapter(model).embed(model, batch).numpy()  # the CLS token, by amp_hf's own code
    np.testing.assert_allclose(runner.embed(images=images), reference, atol=1e-4)
    bound = ExportRunner(out, providers=["CPUExecutionProvider"], io_binding=True)  # the GPU code path, on CPU
    np.testing.assert_allclose(bound.embed(images=images), reference, atol=1e-4)


def test_runner_text_embeddings_match_pytorch(exported):
    checkpoint, out = exported("bert")
    texts = ["a photo of a cat", "the dog", "an tree is a car of the photo"]
    model = load_checkpoint(checkpoint)
    tokens = word_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        reference = amp_hf.get_adapter(model).embed(model, dict(tokens)).numpy()  # attention-masked mean
    np.testing.assert_allclose(ExportRunner(out).embed(texts=texts), reference, atol=1e-4)


def test_runner_zero_shot_matches_clip(exported):
    checkpoint, out = exported("clip")
    labels = ["cat", "dog", "car"]
    images = _images(2, size=32)
    model = load_checkpoint(checkpoint)
    pixels = default_image_processor(model.config.vision_config)(images=images, return_tensors="pt")["pixel_values"]
    tokens = word_tokenizer()(
        [f"a photo of a {label}." for label in labels],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        reference = model(pixel_values=pixels, **tokens).logits_per_image.softmax(dim=-1).numpy()
    probabilities = ExportRunner(out).zero_shot(images, labels)
    np.testing.assert_allclose(probabilities, reference, atol=1e-4)


def test_runner_refuses_providers_this_build_lacks(exported):
    _, out = exported("vit")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(ExportOptionError, match="install onnxruntime-gpu"):
        ExportRunner(out, providers=["CUDAExecutionProvider"])


# -- errors -----------------------------------------------------------------------------------------------------


def _cli(*args: str) -> int:
    from amp_hf.cli import main

    try:
        return main(list(args))
    except SystemExit as exit_:  # argparse errors
        return exit_.code


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "onnx"
    assert _cli("export", str(tmp_path / "nowhere"), str(out)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert no_partial_output(out)


def test_corrupt_checkpoints_are_clear_errors(exported, tmp_path, capsys):
    checkpoint, _ = exported("vit")
    broken_config = tmp_path / "broken-config"
    broken_config.mkdir()
    (broken_config / "config.json").write_text("{not json")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_bytes((checkpoint / "config.json").read_bytes())
    (truncated / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:1000])
    for folder, message in ((broken_config, "not valid JSON"), (truncated, "corrupt")):
        out = tmp_path / f"{folder.name}-onnx"
        assert _cli("export", str(folder), str(out)) == 2
        assert message in capsys.readouterr().err
        assert no_partial_output(out)


def test_unsupported_model_is_a_clear_error_from_the_real_cli(tmp_path):
    checkpoint = tmp_path / "mlm"
    BertForMaskedLM(BertConfig(**tiny_models.TEXT)).save_pretrained(checkpoint)
    out = tmp_path / "onnx"
    result = subprocess.run(
        [sys.executable, "-m", "amp_hf", "export", str(checkpoint), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "amp-hf export: error:" in result.stderr and "BertForMaskedLM" in result.stderr
    assert "Supported model classes:" in result.stderr
    assert no_partial_output(out)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dtype", "fp8"], "invalid choice: 'fp8'"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--target", "tensorrt", "--quantize", "int8-dynamic"], "TensorRT rejects"),
        (["--quantize", "int8-static"], "needs calibration data: pass --calibration-data SOURCE"),
    ],
)
def test_unknown_or_conflicting_options_are_clear_errors(args, message, exported, tmp_path, capsys):
    checkpoint, _ = exported("vit")
    out = tmp_path / "onnx"
    assert _cli("export", str(checkpoint), str(out), *args) == 2
    assert message in capsys.readouterr().err
    assert no_partial_output(out)


def test_validation_mismatch_is_an_error_naming_every_output(exported, tmp_path, monkeypatch):
    checkpoint, _ = exported("vit")
    # A zero tolerance: the float32 graph's rounding differences (~1e-6) must now fail the export.
    monkeypatch.setitem(validation.TOLERANCES, "fp32", validation.Tolerance(atol=0.0, rtol=0.0))
    out = tmp_path / "onnx"
    with pytest.raises(
        ValidationError,
        match=r"max abs diff per output: last_hidden_state=\S+, pooler_output=\S+",
    ):
        export_checkpoint(checkpoint, out)
    assert no_partial_output(out)


def test_existing_output_folder_is_kept_unless_overwrite(exported, tmp_path, capsys):
    checkpoint, _ = exported("vit")
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _cli("export", str(checkpoint), str(out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


# -- benchmark -------------------------------------------------------------------------------------------------


@slow
def test_bench_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench"
    code = _cli(
        "bench",
        "hidden_size=32",
        "num_layers=2",
        "num_heads=4",
        "intermediate_size=128",
        "image_size=32",
        "patch_size=8",
        "align=16",
        "repeats=1",
        "warmup=0",
        "batch_sizes=[1]",
        f"out={out}",
    )
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["ideal_speedup"]["pruned"] > 1
    assert {row["runtime"] for row in report["rows"]} == {
        "pytorch-eager",
        "onnxruntime",
        "onnxruntime-fused",
    }
    assert "| onnxruntime-fused |" in out.with_suffix(".md").read_text()


def test_unfused_skip_layer_norm_computes_what_the_fused_node_did(tmp_path):
    """``unfuse_skip_layer_norms`` rewrites ONNX Runtime's SkipLayerNormalization (with bias and its sum output
    read downstream) into Add + LayerNormalization; both graphs agree in ONNX Runtime, and CPU sessions are told
    not to fuse it back."""
    from onnx import TensorProto, helper, numpy_helper

    from export.graph import unfuse_skip_layer_norms
    from export.runtime import create_session, disabled_optimizers

    generator = np.random.default_rng(0)
    weights = [numpy_helper.from_array(generator.standard_normal(16).astype(np.float32), name)
               for name in ("gamma", "beta", "bias")]  # fmt: skip
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y", "", "", "sum"],
                              domain="com.microsoft", epsilon=1e-5),
             helper.make_node("Mul", ["y", "sum"], ["out"])]  # fmt: skip
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 5, 16]) for name in ("x", "skip", "out")]
    model = helper.make_model(helper.make_graph(nodes, "skip", io[:2], io[2:], weights),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    feeds = {"x": generator.standard_normal((2, 5, 16)).astype(np.float32),
             "skip": generator.standard_normal((2, 5, 16)).astype(np.float32)}  # fmt: skip
    fused = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert unfuse_skip_layer_norms(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Add", "Add", "LayerNormalization", "Mul"]
    path = tmp_path / "unfused.onnx"
    onnx.save(model, str(path))
    unfused = create_session(path, ["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(unfused, fused, rtol=1e-5, atol=1e-5)
    assert disabled_optimizers(["CPUExecutionProvider"]) == ["SkipLayerNormFusion"]
    assert disabled_optimizers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == []
