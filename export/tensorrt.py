"""The TensorRT-ready profile: a simplified, constant-folded graph whose only dynamic axis is the batch, every op
on TensorRT's ONNX-parser allow-list, and the ``trtexec`` / ONNX Runtime TensorRT-EP settings to build it.

Nothing here needs TensorRT: readiness is checked statically (the allow-list is data, from onnx-tensorrt's
operator matrix; see ``data/tensorrt_onnx_ops.json``), so the files can be produced and tested on a CPU box.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from pathlib import Path

import onnx

from .errors import ExportOptionError

OPS_FILE = Path(__file__).parent / "data" / "tensorrt_onnx_ops.json"
ENGINE_CACHE_DIR = "trt_engine_cache"  # relative to the export folder; neither is pushed (hub_cards.push)
TIMING_CACHE_DIR = "trt_timing_cache"


@functools.cache
def tensorrt_ops() -> dict:
    """The allow-list: ``supported_ops``, ``data_dependent_ops`` (name -> reason), ``source``, ``tensorrt_version``."""
    return json.loads(OPS_FILE.read_text())


def simplify(model: onnx.ModelProto, batch_axis: str) -> onnx.ModelProto:
    """Constant-fold and simplify with onnxslim (folds the shape arithmetic a static profile leaves constant)."""
    try:
        import onnxslim
    except ImportError as error:
        raise ExportOptionError("--target tensorrt simplifies graphs with onnxslim: `pip install onnxslim`") from error
    model = onnxslim.slim(model)
    # onnxslim re-infers shapes and may call an output's batch axis `unk__N`; every axis 0 here is the batch.
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = batch_axis
    return model


def find_blockers(model: onnx.ModelProto) -> list[str]:
    """Everything in ``model`` TensorRT's parser would reject or could not build statically (empty = ready)."""
    ops = tensorrt_ops()
    supported, data_dependent = set(ops["supported_ops"]), ops["data_dependent_ops"]
    problems: Counter = Counter()
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            problems[f"{node.op_type} (domain {node.domain}): not a standard ONNX op; TensorRT needs a plugin"] += 1
        elif node.op_type in data_dependent:
            problems[f"{node.op_type}: data-dependent ({data_dependent[node.op_type]})"] += 1
        elif node.op_type not in supported:
            problems[f"{node.op_type}: not on TensorRT {ops['tensorrt_version']}'s supported ONNX operators"] += 1
    blockers = [f"{problem} ×{count}" for problem, count in sorted(problems.items())]
    return blockers + _axis_blockers(model)


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:  # If / Loop bodies
            for subgraph in [attribute.g, *attribute.graphs] if attribute.type in _GRAPH_ATTRIBUTES else []:
                yield from _all_nodes(subgraph)


_GRAPH_ATTRIBUTES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def _axis_blockers(model: onnx.ModelProto) -> list[str]:
    blockers = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                dynamic = not dim.HasField("dim_value")
                if axis == 0 and not dynamic:
                    blockers.append(f"{kind} {value.name}: batch axis is fixed to {dim.dim_value}")
                elif axis > 0 and dynamic:
                    blockers.append(f"{kind} {value.name}: axis {axis} ({dim.dim_param or '?'}) is dynamic")
    return blockers


def dynamic_axis_count(model: onnx.ModelProto) -> int:
    """How many distinct dynamic axis names the graph's inputs and outputs use."""
    names = {
        dim.dim_param or f"{value.name}:{axis}"
        for value in (*model.graph.input, *model.graph.output)
        for axis, dim in enumerate(value.type.tensor_type.shape.dim)
        if not dim.HasField("dim_value")
    }
    return len(names)


def profile_shapes(model: onnx.ModelProto, batch: tuple[int, int, int]) -> dict[str, dict[str, list[int]]]:
    """min / opt / max shape of every input, the batch axis taking ``batch``'s three sizes."""
    shapes: dict[str, dict[str, list[int]]] = {"min": {}, "opt": {}, "max": {}}
    for value in model.graph.input:
        static = [dim.dim_value for dim in value.type.tensor_type.shape.dim[1:]]
        for key, size in zip(shapes, batch):
            shapes[key][value.name] = [size, *static]
    return shapes


def _shape_flag(shapes: dict[str, list[int]]) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in shapes.items())


def trtexec_command(graph_file: str, shapes: dict, fp16: bool) -> str:
    """The ``trtexec`` line that builds (and times) an engine of ``graph_file`` for the profile."""
    engine = Path(graph_file).with_suffix(".plan").name
    parts = [
        "trtexec",
        f"--onnx={graph_file}",
        f"--minShapes={_shape_flag(shapes['min'])}",
        f"--optShapes={_shape_flag(shapes['opt'])}",
        f"--maxShapes={_shape_flag(shapes['max'])}",
        f"--saveEngine={engine}",
    ]
    if fp16:
        parts.append("--fp16")
    return " ".join(parts)


def ort_tensorrt_options(shapes: dict, fp16: bool) -> dict:
    """ONNX Runtime TensorRT execution provider options for the same profile, engine and timing cache."""
    return {
        "trt_profile_min_shapes": _shape_flag(shapes["min"]),
        "trt_profile_opt_shapes": _shape_flag(shapes["opt"]),
        "trt_profile_max_shapes": _shape_flag(shapes["max"]),
        "trt_fp16_enable": fp16,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": ENGINE_CACHE_DIR,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": TIMING_CACHE_DIR,
    }


def write_build_files(directory: Path, profiles: dict[str, dict]) -> None:
    """``trtexec.sh`` (one build line per graph) beside the graphs; the settings also go to the metadata."""
    lines = [
        "#!/usr/bin/env bash",
        "# Build a TensorRT engine per graph (run from this folder).",
        "set -euo pipefail",
    ]
    lines += [profile["trtexec"] for profile in profiles.values()]
    script = directory / "trtexec.sh"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    options = {name: profile["ort_provider_options"] for name, profile in profiles.items()}
    (directory / "ort_tensorrt_options.json").write_text(json.dumps(options, indent=2) + "\n")
