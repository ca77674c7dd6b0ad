#!/usr/bin/env python
"""Deployment speed: does pruning still buy speed on top of int8, at what quality, on which runtime?

Two models: the real all-MiniLM-L6-v2 (text length 128, batch 1/8/32) and a ViT-B/16-shaped ViTModel with random
weights (224 px, batch 1/8). Per model: unpruned, pruned (~40% of the MLP neurons removed) and, for MiniLM, the
pruned model distilled (``amp-hf distill``, a few CPU minutes). Each runs on PyTorch eager, ONNX Runtime fp32,
ORT fp32 with ``--ort-fusions cpu``, ORT int8-dynamic and ORT int8-static (QDQ, calibrated on the scoring data),
at 1 and 2 threads. Every variant of one (model, batch, threads) case is timed round-robin, so load from other
processes hits them alike; each latency is a median with its interquartile range. Beside each row: the
FLOPs-ideal speed-up, the fidelity (mean cosine of the embedding to the unpruned float32 PyTorch model), the
int8 cost (mean cosine to the same model's ORT fp32 graph), and kNN top-1 (MiniLM, fortunes). A second table
measures ``search.round_to`` in {1, 8, 16, 64} on the ViT shape, and an ONNX Runtime / PyTorch profile of the
unpruned fp32 models says where the time goes.

Writes OUT.json, OUT.md and OUT.png (latency against fidelity). Everything expensive (pruned / distilled
checkpoints, exported graphs, finished cases) is kept in --work, so an interrupted run resumes where it stopped:

    nice python scripts/bench_deploy.py                 # full run -> docs/bench_deploy.{json,md,png}
    python scripts/bench_deploy.py --quick --out /tmp/q  # minutes: tiny ViT, short text, one repeat (tests)
    python scripts/bench_deploy.py --providers cuda      # on a GPU machine (scripts/bench_gpu.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # bench_distill's distill(): `amp-hf distill` exactly as users run it

RUNTIMES = ("pytorch-eager", "ort-fp32", "ort-fp32-fused", "ort-int8-dynamic", "ort-int8-static")
GRAPH_KINDS = {  # runtime -> ExportOptions fields
    "ort-fp32": {},
    "ort-fp32-fused": {"ort_fusions": "cpu"},
    "ort-int8-dynamic": {"quantize": "int8-dynamic"},
    "ort-int8-static": {"quantize": "int8-static"},
}
MLP_PRUNE_FRACTION = 0.4
ROUND_TO = (1, 8, 16, 64)
KINDS_BY_PROVIDER = {  # --providers -> the ORT graph kinds measured (CUDA / TensorRT: scripts/bench_gpu.sh)
    "cpu": GRAPH_KINDS,
    "cuda": {"ort-fp32": {}, "ort-fp16": {"dtype": "fp16"}},
    "tensorrt": {"ort-tensorrt-fp16": {"target": "tensorrt", "dtype": "fp16"}},  # written profile + engine cache
}
ROUND_TO_KINDS = {"cpu": ("ort-fp32", "ort-int8-dynamic"), "cuda": ("ort-fp32", "ort-fp16"),
                  "tensorrt": ("ort-tensorrt-fp16",)}  # fmt: skip


@dataclass
class Settings:
    quick: bool = False
    text_length: int = 128
    minilm_batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    vit_batches: list[int] = field(default_factory=lambda: [1, 8])
    threads: list[int] = field(default_factory=lambda: [1, 2])
    warmup: int = 1
    repeats: int = 7
    vit_repeats: int = 5
    calibration_samples: int = 128
    vit_calibration_samples: int = 32  # ViT-B images cost ~35 GFLOPs each to calibrate on
    fidelity_queries: int = 400  # fortunes test split: kNN queries and the fidelity set
    knn_bank: int = 600
    vit_eval_images: int = 64
    round_to_batch: int = 1
    vit_shape: dict = field(default_factory=dict)  # BenchConfig overrides (quick: a tiny ViT)
    providers: str = "cpu"

    @classmethod
    def make(cls, quick: bool, providers: str, repeats: int | None = None, vit_layers: int | None = None) -> Settings:
        if not quick:
            settings = cls(providers=providers)
            if repeats:
                settings.repeats = settings.vit_repeats = repeats
            if vit_layers:
                settings.vit_shape = {"num_layers": vit_layers}
            return settings
        return cls(quick=True, text_length=16, minilm_batches=[2], vit_batches=[2], threads=[1], warmup=1,
                   repeats=1, vit_repeats=1, calibration_samples=16, vit_calibration_samples=16, fidelity_queries=32, knn_bank=48,
                   vit_eval_images=8, round_to_batch=2, providers=providers,
                   vit_shape={"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 256, "image_size": 32,
                                  "patch_size": 8})  # fmt: skip


# -- timing ---------------------------------------------------------------------------------------------------


def summarize(samples: list[float]) -> dict:
    """Median, interquartile range and spread (IQR / median) of one runner's latencies."""
    ordered = sorted(samples)
    if len(ordered) >= 4:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1, q3 = ordered[0], ordered[-1]
    median = statistics.median(ordered)
    return {"median_ms": median, "p25_ms": q1, "p75_ms": q3, "spread": (q3 - q1) / median if median else 0.0,
            "runs": len(ordered)}  # fmt: skip


# -- models -----------------------------------------------------------------------------------------------------


def minilm_models(work: Path, settings: Settings) -> dict[str, str]:
    """Checkpoint folders: ``unpruned`` (the real MiniLM), ``pruned`` (AMP Taylor scores on fortunes, uniform
    widths removing 40% of the MLP neurons) and ``distilled`` (the pruned one after `amp-hf distill`)."""
    from bench_distill import MINILM_DISTILL, MINILM_SCORING, distill

    from amp_hf import count_parameters, get_adapter
    from amp_hf.files.config_utils import load_config
    from amp_hf.loading import load_model, resolve_model_path
    from amp_hf.pruning import PruneConfig, run_prune

    paths = {"unpruned": resolve_model_path("minilm"), "pruned": str(work / "minilm-pruned"),
             "distilled": str(work / "minilm-distilled")}  # fmt: skip
    if not (work / "minilm-pruned" / "config.json").is_file():
        model = load_model("minilm")
        adapter = get_adapter(model)
        mlp = sum(count_parameters(layer.intermediate) + count_parameters(layer.output.dense)
                  for layer in adapter.layers(model))  # fmt: skip
        target = MLP_PRUNE_FRACTION * mlp / count_parameters(adapter.backbone(model))  # the pruner's budget: tower
        overrides = ["model=minilm", f"output={paths['pruned']}", "overwrite=true", "method=amp",
                     "search.allocation=uniform", f"search.target_reduction={target}", *MINILM_SCORING]  # fmt: skip
        run_prune(load_config(PruneConfig, None, overrides))
    if not (work / "minilm-distilled" / "config.json").is_file():
        overrides = MINILM_DISTILL
        if settings.quick:
            overrides = [*MINILM_DISTILL, "data.num_samples=32", "data.max_length=16"]
        distill("distill_minilm.yaml", "minilm", Path(paths["pruned"]), Path(paths["distilled"]), 1, overrides)
    return paths


def vit_models(settings: Settings) -> tuple[dict, dict]:
    """The ViT-B/16 shape (random weights): ``unpruned`` and ``pruned`` (uneven, unaligned per-layer widths as an
    adaptive search leaves them, 40% of the MLP neurons removed); plus the same neurons rounded up to each
    ``round_to`` for the width table."""
    import torch

    from amp_hf import PrunePlan, slice_model
    from amp_hf.selection.cost import round_width
    from export.bench import BenchConfig, build_models, uneven_widths

    config = BenchConfig(prune_fraction=MLP_PRUNE_FRACTION, **settings.vit_shape)
    models = build_models(config)  # unpruned, pruned (uneven), pruned_aligned
    base, full = models["unpruned"], config.intermediate_size
    widths = uneven_widths(config)
    generator = torch.Generator().manual_seed(config.seed + 1)
    orders = [torch.randperm(full, generator=generator).tolist() for _ in widths]
    rounded = {}
    for round_to in ROUND_TO:
        layer_widths = [round_width(width, full, round_to) for width in widths]
        plan = PrunePlan([full] * len(widths), [order[:w] for order, w in zip(orders, layer_widths)], method="random")
        rounded[f"round_to={round_to}"] = slice_model(base, plan).eval()
    return {"unpruned": base, "pruned": rounded["round_to=1"]}, {"unpruned": base, **rounded}


# -- data -------------------------------------------------------------------------------------------------------


def text_batches(tokenizer, source_split: str, samples: int, batch: int, length: int, padding="max_length"):
    from amp_hf.data import load_source

    dataset = load_source("fortunes", source_split).shuffle(seed=0).select(range(samples))
    texts, labels = dataset["text"], dataset["label"]
    batches = []
    for start in range(0, len(texts), batch):
        tokens = tokenizer(texts[start:start + batch], padding=padding, truncation=True, max_length=length,
                           return_tensors="pt")  # fmt: skip
        batches.append({"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]})
    return batches, labels


def image_batches(image_size: int, split: str, samples: int, batch: int, offset: int = 0):
    """Real images (Fashion-MNIST when installed, else scikit-learn digits) through a ViT image processor."""
    from transformers import ViTImageProcessor

    from amp_hf.data import FASHION_MNIST_DIR, load_source

    source = "fashion_mnist" if FASHION_MNIST_DIR.is_dir() else "digits"
    dataset = load_source(source, split).shuffle(seed=0).select(range(offset, offset + samples))
    processor = ViTImageProcessor(size={"height": image_size, "width": image_size})
    images = [image.convert("RGB") for image in dataset["image"]]
    return source, [
        {"pixel_values": processor(images=images[start:start + batch], return_tensors="pt")["pixel_values"]}
        for start in range(0, len(images), batch)
    ]


# -- graphs -------------------------------------------------------------------------------------------------------


def export_graphs(family: str, models: dict, work: Path, calibration, kinds=GRAPH_KINDS) -> dict[str, dict[str, Path]]:
    """One graph per (model, runtime), cached in ``work``: ``{model: {runtime: model.onnx}}``.

    Each model is traced once, by ``amp-hf export`` (validated against PyTorch): the float32 graph, or the
    TensorRT profile. The fused and int8 graphs apply the export's own later steps to that graph (transformers'
    ONNX Runtime fusions, then ``export.graph.quantizer_for``: the quantizers ``--ort-fusions`` / ``--quantize``
    use), which skips re-tracing: tracing is most of an export's time on 2 shared cores.
    """
    from export import ExportOptions, export_model
    from export.loading import load_checkpoint

    graphs: dict[str, dict[str, Path]] = {}
    for name, model in models.items():
        for runtime, fields in kinds.items():
            folder = work / "graphs" / f"{family}-{name}-{runtime}"
            traced = not fields or "target" in fields or "dtype" in fields
            if not (folder / "model.onnx").is_file():
                if traced:
                    loaded = load_checkpoint(model) if isinstance(model, str) else model
                    export_model(loaded, folder, ExportOptions(**fields), overwrite=True)
                else:
                    derive_graph(graphs[name]["ort-fp32"], ExportOptions(**fields), calibration, folder)
            graphs.setdefault(name, {})[runtime] = folder / "model.onnx"
    return graphs


def derive_graph(fp32_graph: Path, options, calibration, folder: Path) -> None:
    import onnx_ir as ir
    from transformers.exporters.configs import ExportFormat
    from transformers.exporters.onnxruntime_fusions import fuse_for_onnxruntime

    from export.graph import drop_initializer_value_info, quantizer_for, save_graph, unfuse_skip_layer_norms

    model = ir.load(str(fp32_graph))
    if options.ort_fusions:
        fuse_for_onnxruntime(model, options.ort_fusions)
    quantizer = quantizer_for(options, calibration.batches if calibration is not None else None)
    if quantizer is not None:
        model = quantizer.quantize(model, {}, ExportFormat.ONNX)
    proto = ir.to_proto(model)
    drop_initializer_value_info(proto)
    if options.ort_fusions == "cpu":  # as export_graph does
        unfuse_skip_layer_norms(proto)
    staging = folder.with_name(f".{folder.name}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    save_graph(proto, staging / "model.onnx")
    staging.replace(folder)


def ort_session(path: Path, threads: int, providers: list) -> Callable[[dict], dict]:
    """``arrays -> outputs`` of one exported graph. On CPU a plain session whose idle threads sleep (fair while
    variants take turns); on GPU the export's own runner (IOBinding, the written TensorRT profile and cache)."""
    from export.runtime import ExportRunner, create_session

    if providers == ["CPUExecutionProvider"]:
        session = create_session(path, providers, threads=threads, spinning=False)
        names = [output.name for output in session.get_outputs()]
        return lambda arrays: dict(zip(names, session.run(names, arrays)))
    runner = ExportRunner(path.parent, providers=providers, threads=threads)
    return lambda arrays: runner.run(**arrays)


# -- the benchmark --------------------------------------------------------------------------------------------------


@dataclass
class Family:
    name: str
    description: str
    models: dict  # name -> nn.Module (eval, float32)
    graphs: dict  # name -> runtime -> path
    feeds: Callable[[int], dict]  # batch -> torch input dict
    eval_batches: list  # fidelity set (list of torch input dicts)
    embed: Callable  # (outputs dict of numpy, inputs numpy) -> embeddings
    batches: list[int]
    repeats: int
    runtimes: tuple[str, ...] = RUNTIMES
    flops: dict = field(default_factory=dict)
    knn: dict | None = None  # {"bank": batches, "bank_labels": [...], "query_labels": [...]}
    extra: dict = field(default_factory=dict)


def runners_for(family: Family, batch: int, threads: int, providers: list) -> dict[str, Callable]:
    import torch

    torch.set_num_threads(threads)
    device = "cpu" if providers == ["CPUExecutionProvider"] else "cuda"
    inputs = {name: tensor.to(device) for name, tensor in family.feeds(batch).items()}
    arrays = {name: tensor.numpy() for name, tensor in family.feeds(batch).items()}
    runners = {}
    for model_name, model in family.models.items():
        model.to(device)
        for runtime in family.runtimes:
            if runtime == "pytorch-eager":
                def eager(model=model):
                    with torch.inference_mode():
                        model(**inputs)
                    if device == "cuda":
                        torch.cuda.synchronize()

                runners[f"{model_name}|{runtime}"] = eager
            else:
                run = ort_session(family.graphs[model_name][runtime], threads, providers)
                runners[f"{model_name}|{runtime}"] = lambda run=run: run(arrays)
    return runners


def embeddings(family: Family, model_name: str, runtime: str, providers: list):
    """The family's embedding of every fidelity example (and kNN bank example) on one runtime."""
    import numpy as np
    import torch

    def run(batches):
        if runtime == "pytorch-eager":
            model = family.models[model_name].cpu()
            outputs = []
            for batch in batches:
                with torch.inference_mode():
                    result = model(**batch)
                outputs.append(family.embed({k: v.numpy() for k, v in result.items() if torch.is_tensor(v)},
                                            {k: v.numpy() for k, v in batch.items()}))  # fmt: skip
            return np.concatenate(outputs)
        run_graph = ort_session(family.graphs[model_name][runtime], 2, providers)
        outputs = []
        for batch in batches:
            arrays = {k: v.numpy() for k, v in batch.items()}
            outputs.append(family.embed(run_graph(arrays), arrays))
        return np.concatenate(outputs)

    queries = run(family.eval_batches)
    bank = run(family.knn["bank"]) if family.knn else None
    return queries, bank


def quality(family: Family, providers: list) -> dict:
    """Per (model, runtime): fidelity to the unpruned fp32 PyTorch embedding, int8 cost, kNN top-1."""
    import torch

    from amp_hf.evaluation.metrics import knn_accuracy
    from export.validation import mean_cosine

    results, cache = {}, {}
    for model_name in family.models:
        for runtime in family.runtimes:
            cache[(model_name, runtime)] = embeddings(family, model_name, runtime, providers)
    reference = cache[("unpruned", "pytorch-eager")][0]
    for (model_name, runtime), (queries, bank) in cache.items():
        entry = {"fidelity": mean_cosine(queries, reference)}
        if runtime.startswith("ort-int8") and (model_name, "ort-fp32") in cache:
            entry["int8_cost"] = 1 - mean_cosine(queries, cache[(model_name, "ort-fp32")][0])
        if family.knn:
            entry["knn20"] = knn_accuracy(torch.from_numpy(bank), torch.tensor(family.knn["bank_labels"]),
                                          torch.from_numpy(queries), torch.tensor(family.knn["query_labels"]),
                                          ks=(20,))[20]  # fmt: skip
        results[f"{model_name}|{runtime}"] = entry
    return results


def measure_family(family: Family, settings: Settings, state: dict, save: Callable, providers: list, progress):
    from export.bench import interleaved_samples

    for batch in family.batches:
        for threads in settings.threads:
            key = f"{family.name}|batch={batch}|threads={threads}"
            if key in state["cases"]:
                progress.update(family.repeats)
                continue
            load_before = os.getloadavg()
            runners = runners_for(family, batch, threads, providers)
            samples = interleaved_samples(runners, settings.warmup, family.repeats, progress)
            state["cases"][key] = {"batch": batch, "threads": threads, "load_before": load_before,
                                   "load_after": os.getloadavg(),
                                   "latency": {name: summarize(values) for name, values in samples.items()},
                                   "samples_ms": samples}  # fmt: skip
            save()


def measure_round_to(models: dict, graphs: dict, settings: Settings, state: dict, save, providers, feeds, progress):
    from export.bench import interleaved_samples

    key = f"vit-b16|round_to|batch={settings.round_to_batch}|threads={max(settings.threads)}"
    if key in state["cases"]:
        return
    threads = max(settings.threads)
    arrays = {k: v.numpy() for k, v in feeds(settings.round_to_batch).items()}
    runners = {}
    for name in models:
        for runtime in ROUND_TO_KINDS[settings.providers]:
            run = ort_session(graphs[name][runtime], threads, providers)
            runners[f"{name}|{runtime}"] = lambda run=run: run(arrays)
    samples = interleaved_samples(runners, settings.warmup, settings.vit_repeats, progress)
    state["cases"][key] = {"batch": settings.round_to_batch, "threads": threads,
                           "latency": {name: summarize(values) for name, values in samples.items()}}  # fmt: skip
    save()


def measure_skip_norm_fusion(families: dict, settings: Settings, state: dict, save, progress) -> None:
    """amp-hf's CPU sessions (``SkipLayerNormFusion`` disabled) against ONNX Runtime's default session on the same
    graphs, round-robin, per model and thread count: MiniLM batch 8, ViT batch 1 (``export.runtime``)."""
    import onnxruntime as ort

    from export.bench import interleaved_samples
    from export.runtime import create_session, session_options

    for name, family in families.items():
        batch = 8 if 8 in family.batches else min(family.batches)
        arrays = {k: v.numpy() for k, v in family.feeds(batch).items()}
        for threads in settings.threads:
            key = f"{name}|skip-norm-fusion|batch={batch}|threads={threads}"
            if key in state["cases"]:
                continue
            runners = {}
            for runtime in ("ort-fp32", "ort-int8-dynamic", "ort-int8-static"):
                path = family.graphs["unpruned"][runtime]
                ours = create_session(path, ["CPUExecutionProvider"], threads=threads, spinning=False)
                default = ort.InferenceSession(str(path), session_options(threads, spinning=False),
                                               providers=["CPUExecutionProvider"])  # fmt: skip
                runners[f"{runtime}|default"] = lambda session=default, arrays=arrays: session.run(None, arrays)
                runners[f"{runtime}|amp-hf"] = lambda session=ours, arrays=arrays: session.run(None, arrays)
            samples = interleaved_samples(runners, settings.warmup, family.repeats, progress)
            state["cases"][key] = {"batch": batch, "threads": threads, "samples_ms": samples,
                                   "latency": {k: summarize(v) for k, v in samples.items()}}  # fmt: skip
            save()


def skip_norm_table(state: dict) -> list[dict]:
    rows = []
    for key, case in state["cases"].items():
        if "|skip-norm-fusion|" not in key:
            continue
        samples = case["samples_ms"]
        for runtime in ("ort-fp32", "ort-int8-dynamic", "ort-int8-static"):
            default, ours = samples[f"{runtime}|default"], samples[f"{runtime}|amp-hf"]
            ratios = sorted(d / o for d, o in zip(default, ours))
            rows.append({"family": key.split("|")[0], "runtime": runtime, "batch": case["batch"],
                         "threads": case["threads"], "default_ms": statistics.median(default),
                         "amp_hf_ms": statistics.median(ours), "paired_speedup": statistics.median(ratios),
                         "speedup_range": [ratios[0], ratios[-1]]})  # fmt: skip
    return rows


# -- profile ------------------------------------------------------------------------------------------------------


def profiled_kernels(path: Path, arrays: dict, threads: int, runs: int, spinning: bool = True) -> list[dict]:
    """ONNX Runtime's profiler events of every kernel, over one warm-up run then ``runs`` runs, in amp-hf's CPU
    session (``export.runtime``: all graph optimisations except those it disables)."""
    import onnxruntime as ort

    from export.runtime import session_options

    options = session_options(threads, spinning, ["CPUExecutionProvider"])
    options.enable_profiling = True
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(None, arrays)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def ort_profile(path: Path, arrays: dict, threads: int, runs: int = 3) -> dict[str, float]:
    """Share of ONNX Runtime's kernel time per op type (its own profiler, ``runs`` runs after one warm-up)."""
    totals: dict[str, float] = {}
    for event in profiled_kernels(path, arrays, threads, runs):
        op = event.get("args", {}).get("op_name", "?")
        totals[op] = totals.get(op, 0.0) + event["dur"]
    whole = sum(totals.values()) or 1.0
    return {op: round(us / whole, 4) for op, us in sorted(totals.items(), key=lambda item: -item[1])}


MATMUL_OPS = {"MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
              "QLinearMatMul", "QGemm"}
QUANTIZE_OPS = {"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"}


def time_by_part(path: Path, arrays: dict, threads: int, mlp_widths: set[int], runs: int = 3) -> dict[str, float]:
    """Milliseconds per run in each part of the graph, from ONNX Runtime's profiler: the MLPs (every kernel with
    an input or output whose last axis is an MLP hidden width: both matmuls, the activation, its quantization),
    split into matmuls and the rest, and everything else split into matmuls, (de)quantization and other kernels.
    The parts the MLP widths do not touch bound the speed-up pruning can give on that runtime (Amdahl)."""
    kernels = profiled_kernels(path, arrays, threads, runs, spinning=False)
    kernels = kernels[len(kernels) // (runs + 1):]  # drop the warm-up run
    parts = dict.fromkeys(("mlp matmuls", "mlp other", "other matmuls", "other (de)quantize", "other kernels"), 0.0)
    for event in kernels:
        args = event.get("args", {})
        op = args.get("op_name", "?")
        shapes = [next(iter(entry.values())) for entry in args.get("input_type_shape", []) + args.get("output_type_shape", [])]
        in_mlp = any(shape and shape[-1] in mlp_widths for shape in shapes)
        if in_mlp:
            part = "mlp matmuls" if op in MATMUL_OPS else "mlp other"
        else:
            part = "other matmuls" if op in MATMUL_OPS else "other (de)quantize" if op in QUANTIZE_OPS else "other kernels"
        parts[part] += event["dur"] / 1000 / runs
    return {part: round(ms, 3) for part, ms in parts.items()}


def part_profiles(families: dict, settings: Settings) -> dict:
    """``time_by_part`` of the unpruned and pruned graphs of every CPU runtime, at MiniLM batch 8 and ViT batch
    1, on the most threads: where pruning's time goes, and the Amdahl bound it implies per runtime."""
    profiles = {}
    for name, family in families.items():
        batch = 8 if 8 in family.batches else min(family.batches)
        arrays = {k: v.numpy() for k, v in family.feeds(batch).items()}
        adapter_widths = family.extra["all_widths"]
        hidden = family.extra["hidden_size"]
        widths = {w for w in adapter_widths if w != hidden}
        entry = {"batch": batch, "threads": max(settings.threads), "runtimes": {}}
        for runtime in [r for r in family.runtimes if r != "pytorch-eager"]:
            measured = {model: time_by_part(family.graphs[model][runtime], arrays, max(settings.threads), widths)
                        for model in ("unpruned", "pruned")}  # fmt: skip
            unpruned, pruned = measured["unpruned"], measured["pruned"]
            mlp_before = unpruned["mlp matmuls"] + unpruned["mlp other"]
            total_before = sum(unpruned.values())
            removed = family.extra["mlp_removed"]  # share of the MLP FLOPs pruning removed
            entry["runtimes"][runtime] = {
                **measured,
                "mlp_share": mlp_before / total_before,
                # the speed-up if the MLP kernels shrank exactly with the FLOPs and nothing else changed
                "amdahl_bound": total_before / (total_before - removed * mlp_before),
                "measured_ratio": total_before / sum(pruned.values()),
            }
        profiles[name] = entry
    return profiles


def torch_profile(model, inputs: dict, threads: int) -> dict[str, float]:
    """Share of PyTorch eager's CPU time per aten op (self time)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    with torch.inference_mode():
        model(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            model(**inputs)
    events = profiler.key_averages()
    whole = sum(event.self_cpu_time_total for event in events) or 1.0
    top = sorted(events, key=lambda event: -event.self_cpu_time_total)[:10]
    return {event.key: round(event.self_cpu_time_total / whole, 4) for event in top}


# -- report -------------------------------------------------------------------------------------------------------


def build_rows(state: dict, families: dict) -> list[dict]:
    rows = []
    for key, case in state["cases"].items():
        family_name = key.split("|")[0]
        if "|round_to|" in key or "|skip-norm-fusion|" in key:
            continue
        info = families[family_name]
        latency = case["latency"]
        for variant, stats in latency.items():
            model_name, runtime = variant.split("|")
            unpruned = latency[f"unpruned|{runtime}"]["median_ms"]
            eager = latency.get(f"{model_name}|pytorch-eager", {}).get("median_ms")
            ideal = info["flops"]["unpruned"] / info["flops"][model_name]
            speedup = unpruned / stats["median_ms"]
            rows.append({"family": family_name, "model": model_name, "runtime": runtime, "batch": case["batch"],
                         "threads": case["threads"], **stats, "speedup": speedup, "ideal_speedup": ideal,
                         "of_ideal": speedup / ideal if model_name != "unpruned" else None,
                         "vs_eager": eager / stats["median_ms"] if eager else None,
                         **state["quality"].get(family_name, {}).get(variant, {})})  # fmt: skip
    return rows


def goals(rows: list[dict], families: dict) -> list[dict]:
    """The issue's four goals, each checked on every row it concerns."""
    def pick(**match):
        return [r for r in rows if all(r[k] == v for k, v in match.items())]

    checks = []
    for runtime in ("ort-int8-dynamic", "ort-int8-static"):
        for row in pick(family="minilm", model="pruned", runtime=runtime, batch=8):
            checks.append({"goal": "pruned int8 >= 1.3x unpruned int8 (MiniLM batch 8)",
                           "case": f"{runtime}, {row['threads']} thread(s)", "value": row["speedup"],
                           "ideal": row["ideal_speedup"], "met": row["speedup"] >= 1.3})  # fmt: skip
    for row in rows:
        if row["runtime"] == "ort-fp32" and row["vs_eager"] is not None:
            checks.append({"goal": "ORT fp32 >= 1.1x PyTorch eager (equal threads)",
                           "case": f"{row['family']} {row['model']} batch {row['batch']}, {row['threads']} thr",
                           "value": row["vs_eager"], "met": row["vs_eager"] >= 1.1})  # fmt: skip
        if "int8_cost" in row and row["batch"] == max(r["batch"] for r in pick(family=row["family"])) and \
                row["threads"] == max(r["threads"] for r in rows):
            checks.append({"goal": "int8 costs <= 0.01 mean cosine vs its own fp32 graph",
                           "case": f"{row['family']} {row['model']} {row['runtime']}", "value": row["int8_cost"],
                           "met": row["int8_cost"] <= 0.01})  # fmt: skip
        if row["of_ideal"] is not None and row["runtime"] in ("pytorch-eager", "ort-fp32", "ort-fp32-fused"):
            checks.append({"goal": "pruned speed-up >= 0.9 of its FLOPs-ideal (fp32 rows)",
                           "case": f"{row['family']} {row['model']} {row['runtime']} batch {row['batch']}, "
                                   f"{row['threads']} thr", "value": row["of_ideal"],
                           "met": row["of_ideal"] >= 0.9})  # fmt: skip
    return checks


def markdown(report: dict) -> str:
    rows, info = report["rows"], report["families"]
    lines = [
        "# Deployment speed: pruning × runtime × int8",
        "",
        (f"Generated by `{report['command']}` on {report['machine']['cpu']} ({report['machine']['cores']} cores, "
        f"onnxruntime {report['machine']['onnxruntime']}, torch {report['machine']['torch']}); "
        + (f"measured in {len(report['invocations'])} invocation(s) (a rerun resumes from the work cache): "
           + "; ".join(f"{i['wall_seconds']} s wall, 1-minute load average {i['load_before'][0]:.1f} before and "
                       f"{i['load_after'][0]:.1f} after" for i in report["invocations"])
           if report.get("invocations") else
           f"wall time {report['wall_seconds']:.0f} s, 1-minute load average {report['load_before'][0]:.1f} before, "
           f"{report['load_after'][0]:.1f} after")
        + " (a shared machine: read ratios, measured side by side, rather than absolute times)."),
        "",
    ]
    for name, family in info.items():
        lines.append(f"- **{name}**: {family['description']}; FLOPs-ideal speed-up of the pruned model "
                     f"{family['flops']['unpruned'] / family['flops']['pruned']:.3f}× (MLP share of the FLOPs "
                     f"{family['mlp_flops_share']:.0%}); MLP widths {family['widths']}.")  # fmt: skip
    lines += [
        "",
        ("Median latency (ms) of interleaved runs, spread = interquartile range / median; speed-up = unpruned / "
        "this model on the same runtime (ideal: FLOPs ratio); vs eager = PyTorch eager / this runtime, same model, "
        "batch and threads; fidelity = mean cosine of the embedding to the unpruned float32 PyTorch model; int8 "
        "cost = 1 − mean cosine to the same model's ORT fp32 graph; kNN = top-1 (k = 20) on fortunes."),
        "",
        ("| model | variant | runtime | batch | threads | ms | spread | speed-up (of ideal) | vs eager | fidelity "
        "| int8 cost | kNN |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        of_ideal = f" ({row['of_ideal']:.2f})" if row["of_ideal"] is not None else ""
        lines.append(
            f"| {row['family']} | {row['model']} | {row['runtime']} | {row['batch']} | {row['threads']} | "
            f"{row['median_ms']:.1f} | {row['spread']:.0%} | {row['speedup']:.2f}×{of_ideal} | "
            f"{_fmt(row['vs_eager'], '{:.2f}×')} | {_fmt(row.get('fidelity'), '{:.4f}')} | "
            f"{_fmt(row.get('int8_cost'), '{:.4f}')} | {_fmt(row.get('knn20'), '{:.3f}')} |"
        )
    lines += ["", f"![latency against fidelity]({report['plot']})", ""]
    if report.get("round_to"):
        table = report["round_to"]
        kinds = table["runtimes"]
        lines += [(f"## MLP widths that run fast: `search.round_to` (ViT-B/16 shape, batch {table['batch']}, "
                   f"{table['threads']} threads)"), "",
                  "| round_to | widths | FLOPs-ideal | " + " | ".join(f"{k} ms | speed-up (of ideal)" for k in kinds)
                  + " |", "|---|---|---|" + "---|---|" * len(kinds)]  # fmt: skip
        for entry in table["rows"]:
            cells = " | ".join(f"{entry[k]['median_ms']:.1f} | {entry[k]['speedup']:.3f}× ({entry[k]['of_ideal']:.2f})"
                               for k in kinds)  # fmt: skip
            lines.append(f"| {entry['round_to']} | {entry['widths_summary']} | {entry['ideal']:.3f}× | {cells} |")
        lines.append("")
    if report.get("skip_norm_fusion"):
        lines += ["## ONNX Runtime's SkipLayerNormalization fusion on CPU (unpruned graphs)", "",
                  ("ONNX Runtime's default session (it fuses every residual add + LayerNorm into "
                   "`SkipLayerNormalization`) against amp-hf's CPU session on the same graph, which skips that fusion "
                   "(`export.runtime.CPU_DISABLED_OPTIMIZERS`); round-robin, speed-up = median over rounds of "
                   "default / amp-hf (range: slowest–fastest round)."), "",
                  "| model | runtime | batch | threads | default ms | amp-hf ms | paired speed-up | range |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in report["skip_norm_fusion"]:
            lines.append(f"| {row['family']} | {row['runtime']} | {row['batch']} | {row['threads']} | "
                         f"{row['default_ms']:.1f} | {row['amp_hf_ms']:.1f} | {row['paired_speedup']:.2f}× | "
                         f"{row['speedup_range'][0]:.2f}–{row['speedup_range'][1]:.2f} |")
        lines.append("")
    lines += ["## Goals", "", "| goal | case | value | met |", "|---|---|---|---|"]
    for check in report["goals"]:
        ideal = f" (ideal {check['ideal']:.2f})" if "ideal" in check else ""
        lines.append(f"| {check['goal']} | {check['case']} | {check['value']:.3f}{ideal} | "
                     f"{'yes' if check['met'] else '**no**'} |")  # fmt: skip
    if report.get("profile"):
        threads = max(report["settings"]["threads"])
        lines += ["", f"## Where the time goes (unpruned fp32, largest batch, {threads} thread(s))", ""]
        for name, profile in report["profile"].items():
            for engine, shares in profile.items():
                top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:8])
                lines.append(f"- {name}, {engine}: {top}")
    if report.get("parts"):
        lines += ["", "## Where pruning's time goes: kernel time by graph part", "",
                  ("ONNX Runtime's profiler, unpruned → pruned, ms of kernel time per run. MLP: every kernel touching an "
                   "MLP hidden width (both matmuls, the activation, its quantization); rest: attention, projections, "
                   "norms, (de)quantization of the rest. Amdahl bound: the speed-up if the MLP kernels shrank exactly "
                   "with the FLOPs removed and nothing else changed; FLOPs-ideal assumes every FLOP costs the same."),
                  "", "| model | runtime | batch, threads | MLP share | MLP matmuls | MLP other | rest matmuls | "
                  "rest (de)quantize | rest other | kernel ratio | Amdahl bound | FLOPs-ideal |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, entry in report["parts"].items():
            ideal = info[name]["flops"]["unpruned"] / info[name]["flops"]["pruned"]
            for runtime, part in entry["runtimes"].items():
                cells = " | ".join(f"{part['unpruned'][k]:.1f} → {part['pruned'][k]:.1f}" for k in
                                   ("mlp matmuls", "mlp other", "other matmuls", "other (de)quantize", "other kernels"))
                lines.append(f"| {name} | {runtime} | {entry['batch']}, {entry['threads']} | {part['mlp_share']:.0%} | "
                             f"{cells} | {part['measured_ratio']:.2f}× | {part['amdahl_bound']:.2f}× | {ideal:.2f}× |")
    lines.append("")
    return "\n".join(lines)


def _fmt(value, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def plot(report: dict, path: Path) -> None:
    """Latency against fidelity, one point per table row: a panel per (model, batch, threads), colour = variant,
    marker = runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("fidelity") is not None]
    panels = sorted({(r["family"], r["batch"], r["threads"]) for r in rows},
                    key=lambda p: (list(report["families"]).index(p[0]), p[1], p[2]))
    columns = max(1, min(4, len(panels)))
    lines = -(-len(panels) // columns) if panels else 1
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.6 * lines), squeeze=False)
    markers = dict(zip(RUNTIMES + tuple(sorted({r["runtime"] for r in rows} - set(RUNTIMES))), "osD^vP*X"))
    colours = {"unpruned": "tab:blue", "pruned": "tab:orange", "distilled": "tab:green"}
    for axis, (family, batch, threads) in zip(axes.flat, panels):
        for row in rows:
            if (row["family"], row["batch"], row["threads"]) != (family, batch, threads):
                continue
            axis.scatter(row["median_ms"], row["fidelity"], marker=markers.get(row["runtime"], "o"),
                         color=colours.get(row["model"], "grey"), s=50, label=f"{row['model']} · {row['runtime']}")
        axis.set_title(f"{family}, batch {batch}, {threads} thread(s)", fontsize=9)
        axis.set_xlabel("median latency (ms)", fontsize=8)
        axis.set_ylabel("fidelity (cosine to unpruned fp32)", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    if rows:
        everything = {}
        for axis in list(axes.flat)[: len(panels)]:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                everything.setdefault(label, handle)
        figure.legend(everything.values(), everything.keys(), loc="lower center", ncol=5, fontsize=7,
                      bbox_to_anchor=(0.5, 0.0))
        figure.tight_layout(rect=(0, 0.09 if len(everything) > 5 else 0.05, 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


# -- main -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny ViT, short text, one repeat: checks the plumbing")
    parser.add_argument("--out", default=str(REPO / "docs" / "bench_deploy"), help="writes OUT.json/.md/.png")
    parser.add_argument("--work", default=None, help="cache of checkpoints, graphs and finished cases "
                        "(default: ~/.cache/amp-hf/bench_deploy[-quick]); a rerun resumes from it")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="discard finished cases in --work (keep models/graphs)")
    parser.add_argument("--providers", choices=("cpu", "cuda", "tensorrt"), default="cpu")
    parser.add_argument("--repeats", type=int, help="timed rounds per case (default: 7 MiniLM, 5 ViT)")
    parser.add_argument("--vit-layers", type=int, help="fewer ViT-B/16 blocks (same per-layer shapes; default 12)")
    args = parser.parse_args(argv)
    settings = Settings.make(args.quick, args.providers, args.repeats, args.vit_layers)
    providers = _providers(args.providers)
    if providers is None:
        return 2
    from amp_hf.files.cache import cache_root

    work = Path(args.work) if args.work else cache_root() / ("bench_deploy-quick" if args.quick else "bench_deploy")
    out = Path(args.out)
    if not out.parent.is_dir():
        print(f"bench_deploy: error: output folder {out.parent} does not exist", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / f"cases-{args.providers}.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() and not args.fresh else {}
    if state.get("settings") != asdict(settings):
        state = {"settings": asdict(settings), "cases": {}, "quality": {}}

    measured = []  # saves of this invocation: a resumed run that finds everything measured adds none

    def save():
        measured.append(True)
        temporary = state_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        temporary.replace(state_path)

    started, load_before = time.perf_counter(), os.getloadavg()
    families = build_families(work, settings)
    from tqdm.auto import tqdm

    total = sum(f.repeats * len(f.batches) * len(settings.threads) for f in families.values())
    progress = tqdm(total=total, desc="bench_deploy rounds", unit="round")
    for family in families.values():
        measure_family(family, settings, state, save, providers, progress)
    vit = families["vit-b16"]
    measure_round_to(vit.extra["round_models"], vit.extra["round_graphs"], settings, state, save, providers,
                     vit.feeds, progress)  # fmt: skip
    if settings.providers == "cpu":
        measure_skip_norm_fusion(families, settings, state, save, progress)
    progress.close()
    for family in families.values():
        if family.name not in state["quality"]:
            print(f"bench_deploy: fidelity and kNN of {family.name}", file=sys.stderr)
            state["quality"][family.name] = quality(family, providers)
            save()
    if "profile" not in state:
        state["profile"] = {
            name: {
                "onnxruntime": ort_profile(f.graphs["unpruned"]["ort-fp32"],
                                           {k: v.numpy() for k, v in f.feeds(max(f.batches)).items()},
                                           max(settings.threads)),
                "pytorch": torch_profile(f.models["unpruned"], f.feeds(max(f.batches)), max(settings.threads)),
            }
            for name, f in families.items()
        }
        save()
    if "parts" not in state:
        print("bench_deploy: kernel time by graph part (MLP / rest)", file=sys.stderr)
        state["parts"] = part_profiles(families, settings)
        save()
    # a resumed run measures only what is missing: the report names every invocation that measured something
    if measured:
        state.setdefault("invocations", []).append(
            {"wall_seconds": round(time.perf_counter() - started), "load_before": list(load_before),
             "load_after": list(os.getloadavg())})  # fmt: skip
        save()
    report = assemble(state, families, settings, args, started, load_before)
    out.with_suffix(".json").write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2))
    plot(report, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(report["markdown"])
    print(report["markdown"])
    return 0


def _command(args) -> str:
    parts = ["python scripts/bench_deploy.py"]
    if args.quick:
        parts.append("--quick")
    for flag, value in (("--providers", None if args.providers == "cpu" else args.providers),
                        ("--repeats", args.repeats), ("--vit-layers", args.vit_layers)):  # fmt: skip
        if value:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _providers(choice: str) -> list[str] | None:
    """The providers of ``--providers``, None (after one line on stderr) when this build lacks one or it does not
    load: the sessions then check that they run on it (``export.runtime.create_session``)."""
    from export.runtime import ProviderError, check_loadable

    try:
        return check_loadable(choice)
    except ProviderError as error:
        print(f"bench_deploy: error: {error}", file=sys.stderr)
        return None


def build_families(work: Path, settings: Settings) -> dict[str, Family]:
    import torch

    from amp_hf import count_flops, get_adapter
    from amp_hf.data import load_processor
    from export.calibration import Calibration
    from export.loading import load_checkpoint

    families = {}
    # -- ViT-B/16 shape --
    vit, rounded = vit_models(settings)
    image_size = vit["unpruned"].config.image_size
    source, images = image_batches(image_size, "train", settings.vit_calibration_samples, 8)
    vit_calibration = Calibration(images, [], source)
    _, eval_images = image_batches(image_size, "test", settings.vit_eval_images, 8)
    kinds = KINDS_BY_PROVIDER[settings.providers]
    kinds_runtimes = ("pytorch-eager", *kinds)
    shape_tag = f"vit-b16-{vit['unpruned'].config.num_hidden_layers}blocks"  # graphs of another --vit-layers differ
    vit_graphs = export_graphs(shape_tag, vit, work, vit_calibration, kinds)
    round_graphs = export_graphs(shape_tag, {k: v for k, v in rounded.items() if k != "round_to=1"}, work, None,
                                 {k: kinds[k] for k in ROUND_TO_KINDS[settings.providers]})  # fmt: skip
    round_graphs["round_to=1"] = vit_graphs["pruned"]
    round_graphs["unpruned"] = vit_graphs["unpruned"]
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(max(settings.vit_batches), 3, image_size, image_size, generator=generator)

    def image_feeds(batch):
        return {"pixel_values": pixels[:batch]}

    def cls(outputs, inputs):
        return outputs["last_hidden_state"][:, 0]

    sample = image_feeds(1)
    families["vit-b16"] = Family(
        "vit-b16", f"ViTModel, ViT-B/16 shape ({image_size} px, {vit['unpruned'].config.num_hidden_layers} blocks), "
        f"random weights; int8-static calibrated on {len(vit_calibration.batches) * 8} {source} images",
        vit, vit_graphs, image_feeds, eval_images, cls, settings.vit_batches, settings.vit_repeats, kinds_runtimes,
        flops={name: count_flops(model, sample) for name, model in rounded.items()})  # fmt: skip
    families["vit-b16"].flops["pruned"] = families["vit-b16"].flops["round_to=1"]
    families["vit-b16"].extra = {**_mlp_info(vit, sample), "round_models": rounded, "round_graphs": round_graphs}
    # -- MiniLM --
    paths = minilm_models(work, settings)
    models = {name: load_checkpoint(path) for name, path in paths.items()}
    tokenizer = load_processor(paths["unpruned"], get_adapter(models["unpruned"]))
    length = settings.text_length
    calib, _ = text_batches(tokenizer, "train", settings.calibration_samples + 32, 8, length, padding="longest")
    calibration = Calibration(calib[: settings.calibration_samples // 8], calib[settings.calibration_samples // 8:],
                              "fortunes")  # fmt: skip
    padding = "max_length" if settings.providers == "tensorrt" else "longest"  # TensorRT graphs: fixed length
    queries, query_labels = text_batches(tokenizer, "test", settings.fidelity_queries, 32, length, padding=padding)
    bank, bank_labels = text_batches(tokenizer, "train", settings.knn_bank, 32, length, padding=padding)
    timing_texts, _ = text_batches(tokenizer, "test", max(settings.minilm_batches), max(settings.minilm_batches),
                                   length)  # fmt: skip
    kinds = KINDS_BY_PROVIDER[settings.providers]
    runtimes = ("pytorch-eager", *kinds)
    graphs = export_graphs("minilm", paths, work, calibration, kinds)

    def text_feeds(batch):
        return {name: tensor[:batch] for name, tensor in timing_texts[0].items()}

    def pooled(outputs, inputs):
        mask = inputs["attention_mask"][..., None].astype("float32")
        return (outputs["last_hidden_state"] * mask).sum(1) / mask.sum(1).clip(1e-9)

    sample = text_feeds(1)
    families["minilm"] = Family(
        "minilm", f"all-MiniLM-L6-v2 (real weights), text padded to {length} tokens", models, graphs, text_feeds,
        queries, pooled, settings.minilm_batches, settings.repeats, runtimes,
        flops={name: count_flops(model, sample) for name, model in models.items()},
        knn={"bank": bank, "bank_labels": list(bank_labels), "query_labels": list(query_labels)})  # fmt: skip
    families["minilm"].extra = _mlp_info(models, sample)
    return families


def _mlp_info(models: dict, sample: dict) -> dict:
    """MLP widths of the pruned model and the MLP's share of the unpruned model's FLOPs."""
    from amp_hf import count_flops, get_adapter

    unpruned = models["unpruned"]
    adapter = get_adapter(unpruned)
    widths = adapter.widths(models["pruned"])
    total = count_flops(unpruned, sample)
    full = adapter.widths(unpruned)
    # An MLP of width H costs 2 * tokens * d * H * 2 multiply-adds; removing it all is the MLP share.
    hidden = adapter.backbone(unpruned).config.hidden_size
    tokens = next(iter(sample.values())).shape[-1] if "input_ids" in sample else None
    if tokens is None:
        config = adapter.backbone(unpruned).config
        tokens = (config.image_size // config.patch_size) ** 2 + 1
    mlp = sum(2 * 2 * tokens * hidden * width for width in full)
    return {"widths": widths, "mlp_flops_share": mlp / total, "hidden_size": hidden,
            "all_widths": sorted({*full, *widths}), "mlp_removed": 1 - sum(widths) / sum(full)}


def assemble(state, families, settings, args, started, load_before) -> dict:
    import onnxruntime as ort
    import torch

    info = {name: {"description": f.description, "flops": f.flops, "widths": f.extra["widths"],
                   "mlp_flops_share": f.extra["mlp_flops_share"]} for name, f in families.items()}  # fmt: skip
    rows = build_rows(state, info)
    report = {
        "command": _command(args),
        "settings": asdict(settings),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "onnxruntime": ort.__version__, "torch": torch.__version__},
        "wall_seconds": time.perf_counter() - started,
        "invocations": state.get("invocations", []),
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "case_loads": {key: {"before": case.get("load_before"), "after": case.get("load_after")}
                       for key, case in state["cases"].items()},
        "families": info,
        "rows": rows,
        "round_to": _round_to_table(state, families, settings),
        "profile": state.get("profile"),
        "parts": state.get("parts"),
        "skip_norm_fusion": skip_norm_table(state),
        "plot": Path(args.out).with_suffix(".png").name,
    }
    report["goals"] = goals(rows, info)
    report["markdown"] = markdown(report)
    return report


def _round_to_table(state, families, settings) -> dict | None:
    vit = families["vit-b16"]
    case = next((c for k, c in state["cases"].items() if "|round_to|" in k), None)
    if case is None:
        return None
    latency, flops = case["latency"], vit.flops
    rows = []
    for round_to in ROUND_TO:
        name = f"round_to={round_to}"
        widths = vit.extra["round_models"][name]
        from amp_hf import get_adapter

        layer_widths = get_adapter(widths).widths(widths)
        entry = {"round_to": round_to, "widths": layer_widths, "ideal": flops["unpruned"] / flops[name],
                 "widths_summary": f"{min(layer_widths)}–{max(layer_widths)}, sum {sum(layer_widths)}"}  # fmt: skip
        for runtime in ROUND_TO_KINDS[settings.providers]:
            stats = dict(latency[f"{name}|{runtime}"])
            stats["speedup"] = latency[f"unpruned|{runtime}"]["median_ms"] / stats["median_ms"]
            stats["of_ideal"] = stats["speedup"] / entry["ideal"]
            entry[runtime] = stats
        rows.append(entry)
    return {"batch": case["batch"], "threads": case["threads"], "runtimes": list(ROUND_TO_KINDS[settings.providers]),
            "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
