"""Trace one graph of a model to ONNX with transformers' own exporter, and save it.

``transformers.exporters.OnnxExporter`` (torch.export + torch.onnx, with transformers' tracing patches, ONNX
Runtime fusions and quantizers) exports every supported family, pruned or not. Here it is given a static
H×W (the model's native size, so no position-embedding interpolation is traced), a dynamic batch axis (and a
dynamic sequence axis for text, except under the TensorRT profile), and the options' opset, fusions and
quantizer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from torch import nn
from torch.export import Dim
from transformers.exporters import (
    OnnxConfig,
    OnnxExporter,
    OnnxRuntimeDynamicConfig,
    OnnxRuntimeQuantizer,
    OnnxRuntimeStaticConfig,
)

from .errors import ExportError, ExportOptionError
from .options import ExportOptions
from .patches import export_patches
from .specs import (
    TRACE_BATCH_SIZE,
    GraphModule,
    GraphSpec,
    dummy_inputs,
    max_sequence_length,
)

logger = logging.getLogger(__name__)

BATCH_AXIS = "batch_size"
SEQUENCE_AXIS = "sequence_length"
EXTERNAL_DATA_BYTES = 1 << 30  # weights above 1 GiB go beside the graph (protobuf stops at 2 GiB)


def dynamic_axes(spec: GraphSpec, options: ExportOptions) -> dict[str, dict[int, str]]:
    """Per input, the axes left dynamic: the batch; and the sequence of text unless TensorRT-bound."""
    axes = {name: {0: BATCH_AXIS} for name in spec.inputs}
    if spec.modality == "text" and options.target != "tensorrt" and not spec.fixed_sequence_length:
        for name in spec.inputs:
            axes[name][1] = SEQUENCE_AXIS
    return axes


def trace_sequence_length(model: nn.Module, spec: GraphSpec, options: ExportOptions) -> int | None:
    """The fixed text length of a TensorRT-profile text graph; None (trace at a short default) otherwise."""
    if spec.modality == "text" and spec.fixed_sequence_length:
        return max_sequence_length(model)
    if spec.modality != "text" or options.target != "tensorrt":
        return None
    longest = max_sequence_length(model)
    if options.sequence_length is not None and options.sequence_length > longest:
        raise ExportOptionError(f"--sequence-length {options.sequence_length} exceeds the model's maximum {longest}")
    return options.sequence_length or longest


def export_graph(
    model: nn.Module,
    spec: GraphSpec,
    options: ExportOptions,
    calibration: list[dict] | None = None,
) -> onnx.ModelProto:
    """Trace ``spec``'s graph of ``model`` (eval mode, float32) to an ONNX model with named dynamic axes;
    ``calibration`` (model-input batches) calibrates ``--quantize int8-static``."""
    module = GraphModule(model, spec).eval()
    axes = dynamic_axes(spec, options)
    sequence_length = trace_sequence_length(model, spec, options)
    inputs = dummy_inputs(model, spec, TRACE_BATCH_SIZE, sequence_length)
    dims = {BATCH_AXIS: Dim(BATCH_AXIS, min=1)}
    if spec.modality == "text":  # >= 2 tokens (special tokens at both ends), at most the position table
        dims[SEQUENCE_AXIS] = Dim(SEQUENCE_AXIS, min=2, max=max_sequence_length(model))
    config = OnnxConfig(
        dynamic_shapes={
            name: {axis: dims[axis_name] for axis, axis_name in input_axes.items()} for name, input_axes in axes.items()
        },
        opset_version=options.resolved_opset,
        ort_fusions=options.ort_fusions,
        quantizer=quantizer_for(options, calibration),
    )
    try:
        with _quiet_exporter(), export_patches(), torch.no_grad():
            program = OnnxExporter().export(module, inputs, config).program
    except Exception as error:  # torch.export / torch.onnx raise many types; all mean "this model did not trace"
        raise ExportError(f"tracing {spec.name} of {type(model).__name__} failed: {error}") from error
    _name_dynamic_axes(program, axes)
    proto = ir.to_proto(program)
    drop_initializer_value_info(proto)
    if options.ort_fusions == "cpu":
        unfuse_skip_layer_norms(proto)
    return proto


def unfuse_skip_layer_norms(model: onnx.ModelProto) -> int:
    """Replace ONNX Runtime's ``SkipLayerNormalization`` nodes by the Add(s) and ``LayerNormalization`` they fuse
    (in place; returns how many). Its CPU kernel is several times slower than the two ops it replaces, so
    ``--ort-fusions cpu`` keeps every other fusion but this one, and CPU sessions do not re-create it
    (``export.runtime.CPU_DISABLED_OPTIMIZERS``, which gives the measurement). A node whose mean or inverse-std
    output is read by anything is left fused."""
    graph = model.graph
    read = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    nodes, replaced = [], 0
    for node in graph.node:
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft" or \
                any(name and name in read for name in outputs[1:3]):
            nodes.append(node)
            continue
        inputs = list(node.input) + [""] * (5 - len(node.input))
        x, skip, gamma, beta, bias = inputs[:5]
        total = outputs[3] or f"{outputs[0]}_skip_sum"
        residual = f"{total}_without_bias" if bias else total
        nodes.append(onnx.helper.make_node("Add", [x, skip], [residual], name=f"{node.name}_add"))
        if bias:
            nodes.append(onnx.helper.make_node("Add", [residual, bias], [total], name=f"{node.name}_bias"))
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        nodes.append(onnx.helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [outputs[0]],
                                           name=f"{node.name}_norm", axis=-1, epsilon=epsilon))
        replaced += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


def drop_initializer_value_info(model: onnx.ModelProto) -> None:
    """Initializers carry their own type and shape; a second, stale copy in ``value_info`` (the fusions leave
    some) fails strict shape inference."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    kept = [info for info in model.graph.value_info if info.name not in initializers]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep torch.onnx's progress prints and the optimizers' per-initializer logs out of the user's terminal
    (they stay available at debug level)."""
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            # torch.export's own use of a deprecated pytree check, once per export: about torch, not the model
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logger.debug(printed.getvalue())


# "": onnxruntime.quantization logs to the root; transformers.exporters warns on every export that the installed
# torch / onnx versions differ from the ones it was tested with (the suite and export validation cover ours).
_NOISY_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "transformers.exporters", "")


def quantizer_for(options: ExportOptions, calibration: list[dict] | None) -> OnnxRuntimeQuantizer | None:
    """The ONNX Runtime quantizer of ``options.quantize`` (None for float graphs)."""
    if options.quantize == "int8-dynamic":
        # Per-channel int8 weights keep the narrow rows/columns of pruned MLPs accurate; activations are
        # quantized per batch at run time (no calibration data needed).
        return OnnxRuntimeQuantizer(OnnxRuntimeDynamicConfig(per_channel=True))
    if options.quantize == "int8-static":
        if not calibration:
            raise ExportOptionError("--quantize int8-static needs calibration data: pass --calibration-data SOURCE")
        return OnnxRuntimeQuantizer(static_int8_config(), calibration_dataset=calibration)
    return None


def static_int8_config() -> OnnxRuntimeStaticConfig:
    """QDQ int8 for the matmuls with weights (per-channel int8 weights, per-tensor uint8 activations from
    min/max calibration), which ONNX Runtime's CPU provider runs as integer matmuls.

    Matmul *outputs* stay float: BERT-style encoders carry outlier features of a few hundred in the residual
    stream, and one int8 scale over that range erased the rest (mean cosine 0.93 to float32 on all-MiniLM-L6-v2
    with quantized outputs, 0.988 without). Softmax, LayerNorm and the attention-score matmuls stay float too.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return OnnxRuntimeStaticConfig(
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
    )


def _name_dynamic_axes(model: ir.Model, axes: dict[str, dict[int, str]]) -> None:
    """Replace torch.export's symbols (``s43``) by the axis names users see (``batch_size``), graph-wide."""
    renames: dict[str, str] = {}
    for value in model.graph.inputs:
        for axis, axis_name in axes.get(value.name, {}).items():
            dim = value.shape[axis] if value.shape is not None else None
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                renames[dim.value] = axis_name
    values = [*model.graph.inputs, *model.graph.outputs]
    values += [output for node in model.graph.all_nodes() for output in node.outputs]
    for value in values:
        if value.shape is None:
            continue
        dims = [
            ir.SymbolicDim(renames[d.value]) if isinstance(d, ir.SymbolicDim) and d.value in renames else d
            for d in value.shape
        ]
        value.shape = ir.Shape(dims)


def save_graph(model: onnx.ModelProto, path: Path, external_data: bool | None = None) -> str | None:
    """Write ``model`` to ``path``; the weights go to ``<name>.data`` beside it when asked or when large.

    Returns the external data file name, or None.
    """
    strip_stack_traces(model)
    weight_bytes = sum(_tensor_bytes(tensor) for tensor in model.graph.initializer)
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_BYTES
    location = f"{path.name}.data" if external_data else None
    # Small tensors (shape constants) stay inline, where shape inference can read them.
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=bool(external_data),
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )
    return location


# torch.onnx records each node's Python stack trace: source files of this machine, by absolute path.
STACK_TRACE_KEYS = ("pkg.torch.onnx.stack_trace",)


def strip_stack_traces(model: onnx.ModelProto) -> None:
    """Drop the per-node stack traces (in place): the graph may be pushed, and they name local files."""

    def drop(item) -> None:
        kept = [prop for prop in item.metadata_props if prop.key not in STACK_TRACE_KEYS]
        del item.metadata_props[:]
        item.metadata_props.extend(kept)

    def clean(nodes) -> None:
        for node in nodes:
            drop(node)
            for attribute in node.attribute:
                for subgraph in (attribute.g, *attribute.graphs):
                    clean(subgraph.node)

    clean(model.graph.node)
    for function in model.functions:
        drop(function)
        clean(function.node)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.raw_data:
        return len(tensor.raw_data)
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
