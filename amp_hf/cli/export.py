"""``amp-hf export`` and ``amp-hf bench``."""

from __future__ import annotations

import argparse
import sys

from export.bench_config import BenchConfig
from export.errors import ExportError
from export.options import (
    DEFAULT_CALIBRATION_SAMPLES,
    DTYPES,
    ORT_FUSIONS,
    QUANTIZATIONS,
    TARGETS,
    ExportOptions,
)

from ..files.model_reference import check_model_reference
from ..files.outputs import prepare_output
from .options import MODEL_REFERENCE, add_config_arguments, config_from


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a checkpoint (pruned or not) to validated ONNX / a TensorRT-ready graph",
        description="Export CHECKPOINT to ONNX in OUT_DIR: dynamic batch, static image size, named inputs and "
        "outputs (CLIP/SigLIP: vision_model.onnx + text_model.onnx), validated against PyTorch; the results "
        "and settings go to OUT_DIR/amp_export.json.",
    )
    export.add_argument("checkpoint", help=f"the model, pruned or stock: {MODEL_REFERENCE}")
    export.add_argument("out_dir", help="output folder (written atomically)")
    export.add_argument("--opset", type=int, help="ONNX opset (default: 18; 17 for --target tensorrt)")
    export.add_argument(
        "--dtype",
        choices=DTYPES,
        default="fp32",
        help="fp16: float16 graph, LayerNorm/Softmax kept float32 (tensorrt: fp16 engine flag)",
    )
    export.add_argument(
        "--ort-fusions",
        choices=ORT_FUSIONS,
        help="fuse attention/LayerNorm/GELU into ONNX Runtime ops for this provider (cpu writes the residual "
        "add + LayerNorm unfused: ONNX Runtime's SkipLayerNormalization CPU kernel is slower)",
    )
    export.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="int8-dynamic: int8 weights, activations quantized at run time; int8-static: QDQ int8 with "
        "activation ranges calibrated on --calibration-data",
    )
    export.add_argument(
        "--calibration-data",
        metavar="SOURCE",
        help="int8-static calibration source, any data.source (fortunes, fashion_mnist, digits, an image folder, "
        "a save_to_disk folder); held-out examples of it measure the quantization error",
    )
    export.add_argument(
        "--calibration-samples",
        type=int,
        default=DEFAULT_CALIBRATION_SAMPLES,
        help=f"examples to calibrate on (default: {DEFAULT_CALIBRATION_SAMPLES})",
    )
    export.add_argument(
        "--target",
        choices=TARGETS,
        default="onnx",
        help="tensorrt: opset 17, batch the only dynamic axis, simplified, op allow-list checked, "
        "trtexec.sh and ORT TensorRT-EP options written beside the graph",
    )
    export.add_argument(
        "--sequence-length",
        type=int,
        help="fixed text length of --target tensorrt text graphs (default: the model's maximum)",
    )
    export.add_argument(
        "--trt-batch",
        type=_batch_profile,
        default=(1, 8, 32),
        metavar="MIN,OPT,MAX",
        help="TensorRT batch profile (default: 1,8,32)",
    )
    export.add_argument(
        "--external-data",
        action="store_true",
        help="always store weights in <graph>.onnx.data (default: only above 1 GiB)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    export.set_defaults(func=_run_export)

    bench = subparsers.add_parser(
        "bench",
        help="benchmark pruned vs unpruned ONNX (ONNX Runtime CPU) and PyTorch eager on a ViT-B/16-shaped model",
        description="Latency/throughput of an unpruned and a ~40%%-MLP-pruned ViT-B/16-shaped model (random "
        "weights) on ONNX Runtime CPU and PyTorch eager, beside the FLOPs-ideal speed-up. Writes OUT.json and "
        "OUT.md.",
    )
    add_config_arguments(bench, "YAML file with BenchConfig fields",
                         "override config fields, e.g. repeats=3 batch_sizes=[1,8] out=docs/bench_export")
    bench.set_defaults(func=_run_bench)


def _batch_profile(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX (three integers), got {text!r}")
    return values


def _run_export(args) -> int:
    options = ExportOptions(
        opset=args.opset,
        dtype=args.dtype,
        ort_fusions=args.ort_fusions,
        quantize=args.quantize,
        target=args.target,
        external_data=True if args.external_data else None,
        sequence_length=args.sequence_length,
        tensorrt_batch=args.trt_batch,
        calibration_data=args.calibration_data,
        calibration_samples=args.calibration_samples,
    )
    # refused before torch / onnx load (export_checkpoint checks again)
    check_model_reference(args.checkpoint)
    prepare_output(args.out_dir, overwrite=args.overwrite, inputs=[args.checkpoint], flag="--overwrite")
    from export.exporter import export_checkpoint

    try:
        result = export_checkpoint(args.checkpoint, args.out_dir, options, overwrite=args.overwrite)
    except ExportError as error:
        print(f"amp-hf export: error: {error}", file=sys.stderr)
        return 1
    for graph in result.metadata["graphs"].values():
        diffs = ", ".join(
            f"{output} {report['max_abs_diff']:.2g}" for output, report in graph["validation"]["outputs"].items()
        )
        print(
            f"{result.path / graph['file']}: validated on {graph['validation']['providers'][0]} (max abs diff: {diffs})"
        )
        error = graph["validation"].get("quantization_error")
        if error and "embedding_mean_cosine" in error:
            print(
                f"  quantization error on {error['samples']} held-out examples: embedding mean cosine to PyTorch "
                f"{error['embedding_mean_cosine']:.4f}"
            )
    if result.metadata["tensorrt"]:
        print(
            f"TensorRT: build with {result.path / 'trtexec.sh'}; ORT TensorRT-EP options in "
            f"{result.path / 'ort_tensorrt_options.json'}"
        )
    return 0


def _run_bench(args) -> int:
    config = config_from(BenchConfig, args)  # config errors come before any torch import
    from export.bench import run_benchmark

    report = run_benchmark(config)
    print(report["markdown"])
    return 0
