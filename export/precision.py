"""float16 graphs that stay numerically safe.

ONNX Runtime's own converter (``onnxruntime.transformers.float16``) casts weights and activations to float16
but keeps a block list of ops in float32. Normalisations and softmax are added to it: their reductions
overflow or lose the small variances of transformer activations in float16, while the matmuls (almost all
the time and memory) gain the most. Inputs and outputs stay float32, so callers feed the same arrays as to
the float32 graph.
"""

from __future__ import annotations

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
from onnxruntime.transformers.onnx_model import OnnxModel

FP32_OPS = (
    "LayerNormalization",
    "SkipLayerNormalization",  # ONNX Runtime's fused residual + LayerNorm (--ort-fusions)
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Softmax",
    "ReduceMean",
    "Pow",
    "Sqrt",
)


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with float16 weights and compute, except ``FP32_OPS`` and ONNX Runtime's default block list."""
    converted = OnnxModel(model)
    # Symbolic shape inference types ONNX Runtime's fused ops too; redundant casts are removed afterwards.
    converted.convert_float_to_float16(
        use_symbolic_shape_infer=True,
        keep_io_types=True,
        op_block_list=sorted({*DEFAULT_OP_BLOCK_LIST, *FP32_OPS}),
    )
    _drop_duplicate_nodes(converted.model.graph)
    converted.topological_sort()  # the converter appends the input casts after their consumers
    # Intermediate type hints are left half-converted (float32 where the tensor is now float16): drop them,
    # shape inference re-derives them from the graph.
    del converted.model.graph.value_info[:]
    return converted.model


def _drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """Keep one of several identical nodes writing the same output.

    The converter casts a float16 initializer back to float32 once *per blocked consumer*, all under one output
    name; exporters share identical initializers (every LayerNorm weight of a freshly initialised model), which
    breaks single assignment. The duplicates compute the same value, so one suffices.
    """
    seen: set[tuple] = set()
    kept = []
    for node in graph.node:
        key = (
            node.domain,
            node.op_type,
            tuple(node.input),
            tuple(node.output),
            tuple(attribute.SerializeToString() for attribute in node.attribute),
        )
        if key not in seen:
            seen.add(key)
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
