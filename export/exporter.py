"""The export pipeline: model -> one validated ONNX graph per spec entry, its preprocessing files and metadata,
written atomically (an error leaves no output folder).

Per graph: trace (``graph``), convert precision (``precision``), simplify and check for TensorRT
(``tensorrt``), save, then validate the saved file (``validation``). Results go to ``amp_export.json``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path

import onnx
import torch
from torch import nn
from transformers import PreTrainedModel

from amp_hf import __version__, get_adapter
from amp_hf.checkpoint import write_config
from amp_hf.data import default_image_processor
from amp_hf.files.artifacts import TOKENIZER_FILES
from amp_hf.files.outputs import atomic_directory, copy_processor_files, expand, prepare_output
from amp_hf.files.provenance import portable_reference

from . import tensorrt
from .calibration import Calibration, calibration_modality, load_calibration
from .errors import ExportOptionError, TensorRTBlockerError
from .graph import BATCH_AXIS, export_graph, save_graph, trace_sequence_length
from .loading import load_checkpoint
from .options import ExportOptions
from .precision import to_float16
from .runtime import METADATA_FILE
from .specs import (
    ArchitectureSpec,
    GraphSpec,
    architecture_spec,
    max_sequence_length,
    vision_config,
)
from .validation import (
    TOLERANCES,
    check_structure,
    compare_with_pytorch,
    quantization_error,
)

logger = logging.getLogger(__name__)

METADATA_VERSION = 1
TOOLS = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxslim")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: dict

    @property
    def graph_files(self) -> list[Path]:
        return [self.path / graph["file"] for graph in self.metadata["graphs"].values()]


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    options: ExportOptions | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export the checkpoint folder ``checkpoint`` (pruned or stock) into ``out_dir``, validated.

    The checkpoint's processor / tokenizer files are copied into the export so the runner preprocesses
    exactly as the model expects.
    """
    options = options or ExportOptions()
    prepare_output(out_dir, overwrite=overwrite, inputs=[checkpoint], flag="--overwrite")
    model = load_checkpoint(checkpoint)
    return export_model(model, out_dir, options, overwrite=overwrite, source=checkpoint)


def export_model(
    model: PreTrainedModel,
    out_dir: str | os.PathLike,
    options: ExportOptions | None = None,
    overwrite: bool = False,
    source: str | os.PathLike | None = None,
    processors: tuple = (),
    calibration: Calibration | list[dict] | None = None,
) -> ExportResult:
    """Export an in-memory model; ``processors`` (anything with ``save_pretrained``) go into the folder too,
    as do the processor files of ``source`` (a checkpoint folder) when given. ``calibration`` (model-input
    batches, or a ``Calibration`` with held-out batches) calibrates ``int8-static`` instead of
    ``options.calibration_data``."""
    options = options or ExportOptions()
    architecture, spec = architecture_spec(model)  # UnsupportedModelError before anything is written
    if next(model.parameters()).dtype != torch.float32:  # trace and validate in float32; leave the caller's model be
        model = copy.deepcopy(model).float()
    out_dir = expand(out_dir)
    calibration = _calibration(model, spec, options, calibration, source)  # data errors before anything is written
    with atomic_directory(out_dir, overwrite=overwrite, inputs=[source], flag="--overwrite") as staging, _eval_mode(model):
        graphs, profiles = {}, {}
        for graph_spec in spec.graphs:
            graphs[graph_spec.name], profile = _export_one(model, graph_spec, options, staging, calibration)
            if profile is not None:
                profiles[graph_spec.name] = profile
        if profiles:
            tensorrt.write_build_files(staging, profiles)
        preprocessing = _write_preprocessing(model, spec, staging, source, processors)
        # With the modeling files its auto_map names: the folder's config loads by itself (ORT loaders read it).
        write_config(model, staging)
        # Named by Hub id or relative to the export (which may be pushed), never by a path of this machine.
        origin = portable_reference(source, out_dir) if source is not None else None
        metadata = _metadata(model, architecture, spec, options, graphs, profiles, preprocessing, origin)
        metadata["calibration"] = calibration.describe() if calibration is not None else None
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    logger.info(
        "exported %s to %s (%s)",
        architecture,
        out_dir,
        ", ".join(g["file"] for g in graphs.values()),
    )
    return ExportResult(Path(out_dir), metadata)


def _calibration(model, spec: ArchitectureSpec, options: ExportOptions, given, source) -> Calibration | None:
    if options.quantize != "int8-static":
        if given is not None:
            raise ExportOptionError("calibration data calibrates --quantize int8-static only")
        return None
    calibration_modality(spec)
    if given is not None:
        return given if isinstance(given, Calibration) else Calibration(list(given))
    if options.calibration_data is None:
        raise ExportOptionError(
            "--quantize int8-static needs calibration data: pass --calibration-data SOURCE (fortunes, "
            "fashion_mnist, digits, an image folder, a save_to_disk folder), ideally the data you scored on"
        )
    return load_calibration(model, spec, options.calibration_data, options.calibration_samples, source)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _export_one(
    model: nn.Module,
    spec: GraphSpec,
    options: ExportOptions,
    directory: Path,
    calibration: Calibration | None = None,
) -> tuple[dict, dict | None]:
    logger.info(
        "exporting %s (%s, opset %d, %s)",
        spec.filename,
        options.target,
        options.resolved_opset,
        options.dtype,
    )
    proto = export_graph(model, spec, options, calibration.batches if calibration is not None else None)
    if options.graph_dtype == "fp16":
        proto = to_float16(proto)
    profile = None
    if options.target == "tensorrt":
        proto = tensorrt.simplify(proto, BATCH_AXIS)
        profile = _tensorrt_profile(proto, spec, options)
    path = directory / spec.filename
    external = save_graph(proto, path, options.external_data)
    logger.info("validating %s", spec.filename)
    checks = check_structure(path, spec)
    sequence_length = trace_sequence_length(model, spec, options)
    comparison = compare_with_pytorch(path, model, spec, TOLERANCES[options.tolerance_key], sequence_length)
    graph = onnx.load(str(path), load_external_data=False)
    entry = {
        "file": spec.filename,
        "external_data": external,
        "modality": spec.modality,
        "inputs": _io(graph.graph.input),
        "outputs": _io(graph.graph.output),
        "embedding": None
        if spec.embedding is None
        else {"output": spec.embedding.output, "pooling": spec.embedding.pooling},
        "op_counts": _op_counts(graph),
        "validation": {**checks, **comparison},
    }
    if calibration is not None and calibration.holdout:
        error = quantization_error(path, model, spec, calibration.holdout)
        entry["validation"]["quantization_error"] = error
        logger.info(
            "%s: int8 vs PyTorch float32 on %d held-out examples of %s: embedding mean cosine %s",
            spec.filename,
            error["samples"],
            calibration.describe()["source"],
            f"{error['embedding_mean_cosine']:.4f}" if "embedding_mean_cosine" in error else "n/a",
        )
    if spec.modality == "text":
        entry["text_padding"] = spec.text_padding
        entry["max_sequence_length"] = max_sequence_length(model)
    return entry, profile


def _tensorrt_profile(proto: onnx.ModelProto, spec: GraphSpec, options: ExportOptions) -> dict:
    blockers = tensorrt.find_blockers(proto)
    if blockers:
        raise TensorRTBlockerError(
            f"{spec.filename} is not TensorRT-ready: {'; '.join(blockers)} (allow-list: "
            f"{tensorrt.tensorrt_ops()['source']})"
        )
    shapes = tensorrt.profile_shapes(proto, options.tensorrt_batch)
    fp16 = options.dtype == "fp16"
    return {
        "dynamic_axes": tensorrt.dynamic_axis_count(proto),
        "blockers": blockers,
        "shapes": shapes,
        "fp16": fp16,
        "trtexec": tensorrt.trtexec_command(spec.filename, shapes, fp16),
        "ort_provider_options": tensorrt.ort_tensorrt_options(shapes, fp16),
    }


def _io(values) -> dict:
    return {
        value.name: {
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name,
            "shape": [
                dim.dim_value if dim.HasField("dim_value") else dim.dim_param
                for dim in value.type.tensor_type.shape.dim
            ],
        }
        for value in values
    }


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _write_preprocessing(model, spec: ArchitectureSpec, directory: Path, source, processors) -> dict:
    """Save the model's own image processor / tokenizer beside the graphs; images fall back to a default."""
    modalities = {graph.modality for graph in spec.graphs}
    for processor in processors:
        processor.save_pretrained(directory)
    if source is not None:
        copy_processor_files(source, directory)
    written = {"image_processor": None, "tokenizer": None}
    if "image" in modalities:
        if not (directory / "preprocessor_config.json").is_file():
            logger.warning("no image processor saved with the model: writing a default one from its config")
            default_image_processor(vision_config(model)).save_pretrained(directory)
            written["image_processor"] = "default (none saved with the model)"
        else:
            written["image_processor"] = "preprocessor_config.json"
    if "text" in modalities:
        written["tokenizer"] = next((name for name in TOKENIZER_FILES if (directory / name).is_file()), None)
    return written


def _metadata(
    model,
    architecture: str,
    spec: ArchitectureSpec,
    options: ExportOptions,
    graphs: dict,
    profiles: dict,
    preprocessing: dict,
    source,
) -> dict:
    adapter = get_adapter(model)
    return {
        "format_version": METADATA_VERSION,
        "amp_hf_version": __version__,
        "source": source,
        "architecture": architecture,
        "model_class": type(model).__name__,
        "family": adapter.name,
        "task": spec.task,
        "mlp_widths": adapter.widths(model),
        "amp_pruning": getattr(model.config, "amp_pruning", None),
        "options": options.to_dict(),
        "exporter": "transformers.exporters.OnnxExporter",
        "versions": _versions(),
        "zero_shot": _zero_shot_head(model, spec),
        "graphs": graphs,
        "tensorrt": profiles or None,
        "preprocessing": preprocessing,
    }


def _zero_shot_head(model, spec: ArchitectureSpec) -> dict | None:
    if spec.zero_shot is None:
        return None
    bias = getattr(model, "logit_bias", None)
    return {
        "kind": spec.zero_shot,
        "logit_scale": float(model.logit_scale.detach().reshape(-1)[0]),
        "logit_bias": float(bias.detach().reshape(-1)[0]) if bias is not None else None,
    }


def _versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            continue
    return versions
