"""Speed benchmark: unpruned vs MLP-pruned ViT-B/16-shaped models on ONNX Runtime CPU and PyTorch eager.

Goals (from the export issue): measured pruned/unpruned speed-up >= 0.9 x the FLOPs-ideal one, and ONNX
Runtime >= 1.1 x PyTorch eager on CPU. Models have random weights (speed does not depend on them). Two
pruned variants keep the same share of MLP neurons: per-layer widths as an adaptive method leaves them
(uneven, unaligned), and the same widths rounded to a multiple of ``align``. Runs of the models being
compared are interleaved, so load from other processes hits them alike; each number is a median.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import ViTConfig, ViTModel

from amp_hf import PrunePlan, count_flops, resolve, slice_model

from .bench_config import BenchConfig
from .exporter import export_model
from .options import ExportOptions
from .runtime import create_session

logger = logging.getLogger(__name__)


def build_models(config: BenchConfig) -> dict[str, torch.nn.Module]:
    """``unpruned``, ``pruned`` (uneven widths) and ``pruned_aligned`` ViTModels with random weights."""
    torch.manual_seed(config.seed)
    vit_config = ViTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        image_size=config.image_size,
        patch_size=config.patch_size,
    )
    base = ViTModel(vit_config).eval()  # with its pooler: amp_hf.slice_model rebuilds ViTModel with one
    widths = uneven_widths(config)
    aligned = [max(config.align, round(w / config.align) * config.align) for w in widths]
    generator = torch.Generator().manual_seed(config.seed)
    models = {"unpruned": base}
    for name, layer_widths in (("pruned", widths), ("pruned_aligned", aligned)):
        kept = [torch.randperm(config.intermediate_size, generator=generator)[:w].tolist() for w in layer_widths]
        plan = PrunePlan([config.intermediate_size] * config.num_layers, kept, method="random")
        models[name] = slice_model(base, plan).eval()
    return models


def uneven_widths(config: BenchConfig) -> list[int]:
    """Per-layer widths keeping ``1 - prune_fraction`` of all MLP neurons, spread unevenly across layers (an
    adaptive criterion keeps more in some layers than in others) and deliberately not aligned."""
    layers = config.num_layers
    keep = 1 - config.prune_fraction
    shares = np.linspace(keep + 0.15, keep - 0.15, layers) if layers > 1 else np.array([keep])
    widths = np.round(shares * config.intermediate_size).astype(int)
    widths[0] += round(keep * config.intermediate_size * layers) - widths.sum()  # the requested total
    # Odd widths (total within num_layers neurons of the request): never a multiple of a SIMD width.
    return [int(min(max(w | 1, 1), config.intermediate_size)) for w in widths]


def interleaved_samples(runners: dict[str, Callable], warmup: int, repeats: int, progress=None) -> dict[str, list]:
    """Latencies (ms) of every runner, the runners taking turns round by round after ``warmup`` runs each."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) * 1000)
        if progress is not None:
            progress.update()
    return samples


def _median_ms(runners: dict[str, Callable], warmup: int, repeats: int) -> dict[str, float]:
    """Median latency (ms) of every runner, the runners interleaved round by round."""
    samples = interleaved_samples(runners, warmup, repeats)
    return {name: statistics.median(values) for name, values in samples.items()}


def run_benchmark(config: BenchConfig) -> dict:
    """Measure, write ``{out}.json`` and ``{out}.md``, and return the report (with its Markdown)."""
    models = build_models(config)
    sample = {"pixel_values": torch.randn(1, 3, config.image_size, config.image_size)}
    flops = {name: count_flops(model, sample) for name, model in models.items()}
    widths = {name: resolve(model).widths() for name, model in models.items()}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        graphs = _export_all(models, config, Path(scratch))
        cases = [("pytorch-eager", max(config.threads), None)]
        cases += [("onnxruntime", threads, "plain") for threads in config.threads]
        if config.fusions:
            cases.append(("onnxruntime-fused", max(config.threads), "fused"))
        progress = tqdm(total=len(cases) * len(config.batch_sizes), desc="bench", unit="case")
        for runtime, threads, graph_kind in cases:
            for batch in config.batch_sizes:
                pixels = np.random.default_rng(config.seed).standard_normal(
                    (batch, 3, config.image_size, config.image_size), dtype=np.float32
                )
                runners = _runners(models, graphs.get(graph_kind), pixels, threads)
                latency = _median_ms(runners, config.warmup, config.repeats)
                rows.append(
                    {
                        "runtime": runtime,
                        "threads": threads,
                        "batch": batch,
                        "latency_ms": latency,
                        "throughput_per_s": {n: 1000 * batch / ms for n, ms in latency.items()},
                    }
                )
                progress.update()
        progress.close()
    report = _report(config, flops, widths, rows)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2))
    out.with_suffix(".md").write_text(report["markdown"])
    return report


def _export_all(models: dict, config: BenchConfig, directory: Path) -> dict[str, dict[str, Path]]:
    kinds = {"plain": ExportOptions()}
    if config.fusions:
        kinds["fused"] = ExportOptions(ort_fusions="cpu")
    graphs: dict[str, dict[str, Path]] = {}
    for kind, options in kinds.items():
        for name, model in models.items():
            result = export_model(model, directory / f"{name}-{kind}", options)
            graphs.setdefault(kind, {})[name] = result.graph_files[0]
    return graphs


def _runners(models: dict, graphs: dict[str, Path] | None, pixels: np.ndarray, threads: int) -> dict[str, Callable]:
    if graphs is None:  # PyTorch eager
        torch.set_num_threads(threads)
        tensor = torch.from_numpy(pixels)

        def eager(model):
            def run():
                with torch.inference_mode():
                    model(pixel_values=tensor)

            return run

        return {name: eager(model) for name, model in models.items()}
    runners = {}
    for name, path in graphs.items():
        session = create_session(path, ["CPUExecutionProvider"], threads=threads)
        runners[name] = lambda session=session: session.run(None, {"pixel_values": pixels})
    return runners


def _report(config: BenchConfig, flops: dict, widths: dict, rows: list[dict]) -> dict:
    ideal = {name: flops["unpruned"] / flops[name] for name in flops if name != "unpruned"}
    eager = {row["batch"]: row["latency_ms"] for row in rows if row["runtime"] == "pytorch-eager"}
    for row in rows:
        unpruned = row["latency_ms"]["unpruned"]
        row["speedup"] = {name: unpruned / row["latency_ms"][name] for name in ideal}
        row["speedup_vs_ideal"] = {name: row["speedup"][name] / ideal[name] for name in ideal}
        row["vs_pytorch_eager"] = {name: eager[row["batch"]][name] / ms for name, ms in row["latency_ms"].items()}
    report = {
        "config": asdict(config),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "flops_per_image": flops,
        "mlp_widths": widths,
        "ideal_speedup": ideal,
        "rows": rows,
    }
    report["markdown"] = _markdown(report)
    return report


def _markdown(report: dict) -> str:
    config, ideal = report["config"], report["ideal_speedup"]
    flops = report["flops_per_image"]
    lines = [
        "# ONNX export speed: pruned vs unpruned",
        "",
        (
            f"`ViTModel` (hidden {config['hidden_size']}, {config['num_layers']} layers, MLP "
            f"{config['intermediate_size']}, {config['image_size']}px, patch {config['patch_size']}), random weights; "
            f"pruned = {config['prune_fraction']:.0%} of MLP neurons removed. Median of {config['repeats']} "
            f"interleaved runs after {config['warmup']} warm-up run(s), in ms."
        ),
        "",
        "- GFLOPs per image: " + ", ".join(f"{name} {value / 1e9:.2f}" for name, value in flops.items()),
        "- FLOPs-ideal speed-up: " + ", ".join(f"{name} {value:.3f}x" for name, value in ideal.items()),
        f"- pruned widths (uneven): {report['mlp_widths']['pruned']}",
        f"- pruned widths (aligned to {config['align']}): {report['mlp_widths']['pruned_aligned']}",
        "",
        (
            "| runtime | threads | batch | unpruned ms | pruned ms | speed-up (x ideal) | aligned ms "
            "| speed-up (x ideal) | unpruned vs eager |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        ms, up, frac = row["latency_ms"], row["speedup"], row["speedup_vs_ideal"]
        lines.append(
            f"| {row['runtime']} | {row['threads']} | {row['batch']} | {ms['unpruned']:.1f} | {ms['pruned']:.1f} | "
            f"{up['pruned']:.3f}x ({frac['pruned']:.2f}) | {ms['pruned_aligned']:.1f} | "
            f"{up['pruned_aligned']:.3f}x ({frac['pruned_aligned']:.2f}) | {row['vs_pytorch_eager']['unpruned']:.2f}x |"
        )
    lines += [
        "",
        (
            "speed-up = unpruned / pruned latency on the same runtime; (x ideal) = speed-up / FLOPs-ideal speed-up "
            "(goal >= 0.9); vs eager = PyTorch eager latency / this runtime's latency (goal >= 1.1 for ONNX Runtime)."
        ),
        "",
    ]
    return "\n".join(lines)
