"""Validation of a saved graph, separate from exporting it: ONNX checker, strict full shape inference, the
structure the spec promises, then ONNX Runtime against PyTorch on fresh inputs at a dtype-appropriate
tolerance. Any failure raises ``ValidationError`` naming the max abs difference of every output.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .errors import ValidationError
from .runtime import create_session
from .specs import (
    TRACE_BATCH_SIZE,
    GraphModule,
    GraphSpec,
    dummy_inputs,
    max_sequence_length,
)

VALIDATION_BATCH_SIZE = TRACE_BATCH_SIZE + 1  # differs from the traced batch: proves the batch axis is dynamic
VALIDATION_SEED = 1234  # differs from the tracing seed: fresh inputs
VALIDATION_SEQUENCE_LENGTH = 11  # differs from the traced length: proves the sequence axis is dynamic


@dataclass(frozen=True)
class Tolerance:
    """``|onnx - torch| <= atol + rtol * |torch|`` elementwise; with ``relative_to_range`` atol is a fraction of
    the output's max magnitude (quantization error scales with the activation range)."""

    atol: float
    rtol: float
    relative_to_range: bool = False

    def atol_for(self, reference: np.ndarray) -> float:
        scale = float(np.abs(reference).max()) if self.relative_to_range and reference.size else 1.0
        return self.atol * scale


# Keyed by ExportOptions.tolerance_key.
TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(atol=2e-2, rtol=2e-2),
    "int8-dynamic": Tolerance(atol=0.1, rtol=0.1, relative_to_range=True),
    "int8-static": Tolerance(atol=0.1, rtol=0.1, relative_to_range=True),
}


def check_structure(path: Path, spec: GraphSpec) -> dict:
    """ONNX checker (full) and strict shape inference on the saved file, plus the spec's I/O contract: the
    spec's inputs, and outputs the spec declares, in its order."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        with tempfile.TemporaryDirectory() as scratch:  # infer_shapes_path handles >2 GB graphs, in files only
            inferred_path = Path(scratch) / "inferred.onnx"
            onnx.shape_inference.infer_shapes_path(str(path), str(inferred_path), strict_mode=True, data_prop=True)
            inferred = onnx.load(str(inferred_path), load_external_data=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ValidationError(f"{path.name} fails the ONNX checker / shape inference: {error}") from error
    inputs = [value.name for value in inferred.graph.input]
    outputs = [value.name for value in inferred.graph.output]
    declared = [name for name in spec.outputs if name in outputs]
    if inputs != list(spec.inputs) or not outputs or outputs != declared:
        raise ValidationError(
            f"{path.name} has inputs {inputs} and outputs {outputs}; expected {list(spec.inputs)} -> (some of, in "
            f"order) {list(spec.outputs)}"
        )
    unshaped = [value.name for value in inferred.graph.output if not value.type.tensor_type.shape.dim]
    if unshaped:
        raise ValidationError(f"{path.name}: shape inference left outputs {unshaped} without a shape")
    op_types = sorted({node.op_type for node in inferred.graph.node})
    if spec.modality == "image" and "Resize" in op_types:
        raise ValidationError(
            f"{path.name} resizes inside the graph (position-embedding interpolation was traced); images must be "
            "exported at the model's native size"
        )
    return {
        "onnx_checker": "passed",
        "shape_inference": "passed",
        "inferred_values": len(inferred.graph.value_info),
    }


def compare_with_pytorch(
    path: Path,
    model: nn.Module,
    spec: GraphSpec,
    tolerance: Tolerance,
    sequence_length: int | None = None,
    providers: list[str] | None = None,
) -> dict:
    """Run the graph in ONNX Runtime and ``model`` in PyTorch (float32) on fresh inputs; raise on mismatch."""
    if sequence_length is None and spec.modality == "text":
        sequence_length = min(VALIDATION_SEQUENCE_LENGTH, max_sequence_length(model))
    inputs = dummy_inputs(model, spec, VALIDATION_BATCH_SIZE, sequence_length, seed=VALIDATION_SEED)
    session = create_session(path, providers or ["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    onnx_outputs = dict(
        zip(
            names,
            session.run(names, {name: tensor.numpy() for name, tensor in inputs.items()}),
        )
    )
    with torch.no_grad():
        torch_outputs = GraphModule(model, spec).eval()(**inputs)
    if names != list(torch_outputs):
        raise ValidationError(f"{path.name} returns {names}; the model returns {list(torch_outputs)}")
    report, failures = {}, []
    for name in names:
        reference = torch_outputs[name].float().numpy()
        actual = onnx_outputs[name].astype(np.float32)
        atol = tolerance.atol_for(reference)
        difference = np.abs(actual - reference) if actual.shape == reference.shape else None
        if difference is None:
            failures.append(f"{name}: shape {actual.shape} != PyTorch {reference.shape}")
            continue
        max_diff = float(difference.max()) if difference.size else 0.0
        passed = bool(np.all(difference <= atol + tolerance.rtol * np.abs(reference)))
        report[name] = {
            "max_abs_diff": max_diff,
            "mean_cosine": mean_cosine(actual, reference),
            "atol": atol,
            "rtol": tolerance.rtol,
            "passed": passed,
        }
        if not passed:
            failures.append(f"{name}: max abs diff {max_diff:.3g} (atol {atol:.3g}, rtol {tolerance.rtol:g})")
    if failures:
        every = ", ".join(f"{n}={r['max_abs_diff']:.3g}" for n, r in report.items())
        raise ValidationError(
            f"{path.name}: ONNX Runtime disagrees with PyTorch: {'; '.join(failures)} (max abs diff per output: "
            f"{every})"
        )
    return {
        "outputs": report,
        "inputs": {name: list(tensor.shape) for name, tensor in inputs.items()},
        "providers": session.get_providers(),
        "tolerance": asdict(tolerance),
    }


def mean_cosine(actual: np.ndarray, reference: np.ndarray) -> float:
    """Mean over examples (axis 0) of the cosine similarity of each example's flattened values."""
    a = actual.reshape(len(actual), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(axis=1) / np.clip(norms, 1e-12, None))) if len(a) else 1.0


def quantization_error(
    path: Path,
    model: nn.Module,
    spec: GraphSpec,
    batches: list[dict[str, torch.Tensor]],
) -> dict:
    """How far a quantized graph is from PyTorch (float32) on real inputs (held-out calibration-source data):
    max abs difference and mean cosine of every output, and the mean cosine of the embedding users read."""
    session = create_session(path, ["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    module = GraphModule(model, spec).eval()
    onnx_parts: dict[str, list] = {name: [] for name in names}
    torch_parts: dict[str, list] = {name: [] for name in names}
    embeddings: dict[str, list] = {"onnx": [], "torch": []}
    for batch in batches:
        feeds = {name: batch[name].numpy() for name in spec.inputs}
        onnx_out = dict(zip(names, session.run(names, feeds)))
        with torch.no_grad():
            torch_out = {name: value.float().numpy() for name, value in module(**batch_for(spec, batch)).items()}
        for name in names:  # text outputs differ in length from batch to batch: compare per example
            onnx_parts[name].extend(_rows(onnx_out[name], feeds))
            torch_parts[name].extend(_rows(torch_out[name], feeds))
        if spec.embedding is not None:
            embeddings["onnx"].append(spec.embedding.pool(onnx_out, feeds))
            embeddings["torch"].append(spec.embedding.pool(torch_out, feeds))
    outputs = {}
    for name in names:
        pairs = list(zip(onnx_parts[name], torch_parts[name]))
        outputs[name] = {
            "max_abs_diff": max((float(np.abs(a - b).max()) for a, b in pairs if a.size), default=0.0),
            "mean_cosine": float(np.mean([mean_cosine(a[None], b[None]) for a, b in pairs])) if pairs else 1.0,
        }
    report = {"samples": sum(len(part) for part in embeddings["onnx"]) or len(onnx_parts[names[0]]),
              "outputs": outputs}  # fmt: skip
    if spec.embedding is not None and embeddings["onnx"]:
        report["embedding_mean_cosine"] = mean_cosine(np.concatenate(embeddings["onnx"]),
                                                      np.concatenate(embeddings["torch"]))  # fmt: skip
    return report


def batch_for(spec: GraphSpec, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: batch[name] for name in spec.inputs}


def _rows(values: np.ndarray, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each example's values; a text graph's per-token outputs keep only the real (unpadded) tokens."""
    mask = feeds.get("attention_mask")
    if mask is not None and values.ndim >= 2 and values.shape[:2] == mask.shape:
        return [row[m.astype(bool)] for row, m in zip(values, mask)]
    return list(values)
