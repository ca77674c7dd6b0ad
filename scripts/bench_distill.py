"""Benchmark: how much a short CPU distillation recovers after pruning ~40 % of the transformer blocks.

Each model is pruned with AMP's label-free entropy Taylor scores at uniform widths (the adaptive ΔE search
is left out to keep the run to minutes; it is benchmarked elsewhere), evaluated, distilled with
``amp-hf distill`` in a subprocess (exactly what a user runs), and evaluated again:

  (a) all-MiniLM-L6-v2 (real pretrained, offline package) on Debian fortunes: kNN accuracy of the sentence
      embedding (k=20, DINO protocol, train split = memory bank) and cosine fidelity to the teacher;
  (b) the digits reference ViT (amp_hf.reference, trained in seconds): top-1 on the 360 test images;
  (c) the Fashion-MNIST reference ViT: top-1 on the 10k test images. Skipped with a message unless the
      reference is already trained, or --train-reference is given (~15-40 CPU minutes).

Writes <output>.json and <output>.md (default docs/bench_distill). Run with `nice`:
    nice python scripts/bench_distill.py [--processes 2] [--train-reference]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BLOCK_REDUCTION = 0.40  # fraction of the transformer-block (encoder layer) parameters removed


def prune(model_name: str, output: Path, scoring: list[str]) -> dict:
    """AMP entropy Taylor scores, uniform widths removing BLOCK_REDUCTION of the block parameters."""
    from amp_hf import count_parameters, get_adapter
    from amp_hf.files.config_utils import load_config
    from amp_hf.loading import load_model
    from amp_hf.pruning import PruneConfig, run_prune

    model = load_model(model_name)
    adapter = get_adapter(model)
    blocks, tower = count_parameters(adapter.layers(model)), count_parameters(adapter.backbone(model))
    target = BLOCK_REDUCTION * blocks / tower  # the pruner's budget is a fraction of the whole tower
    overrides = [f"model={model_name}", f"output={output}", "overwrite=true", "method=amp",
                 "search.allocation=uniform", f"search.target_reduction={target}", *scoring]  # fmt: skip
    started = time.perf_counter()
    report = run_prune(load_config(PruneConfig, None, overrides))
    pruned = load_model(str(output))
    return {
        "prune_seconds": round(time.perf_counter() - started, 1),
        "widths_before": report["original_widths"],
        "widths_after": report["widths"],
        "params_blocks_before": blocks,
        "params_blocks_after": count_parameters(get_adapter(pruned).layers(pruned)),
        "params_tower_before": tower,
        "params_tower_after": count_parameters(get_adapter(pruned).backbone(pruned)),
    }


def distill(config: str, teacher: str, student: Path, output: Path, processes: int, overrides: list[str]) -> float:
    """Run `amp-hf distill` as a user would (accelerate launch for several processes); returns wall seconds."""
    shutil.rmtree(f"{output}.run", ignore_errors=True)
    args = ["-m", "amp_hf", "distill", "--config", str(REPO / "configs" / config), f"teacher={teacher}",
            f"student={student}", f"output={output}", "overwrite=true", *overrides]  # fmt: skip
    if processes > 1:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), *args]  # fmt: skip
    else:
        command = [sys.executable, *args]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    return round(time.perf_counter() - started, 1)


def final_loss(output: Path) -> float | None:
    from amp_hf.distill.metrics import read_metrics

    metrics = read_metrics(f"{output}.run")
    return metrics[-1]["loss/total"] if metrics else None


# Kept small so the whole benchmark takes minutes on 2 CPU cores: every MiniLM step / embedding costs
# ~20 MFLOPs per token.
MINILM_SCORING = ["scoring.data.source=fortunes", "scoring.data.num_samples=128", "scoring.data.batch_size=64",
                  "scoring.data.max_length=48"]  # fmt: skip
MINILM_DISTILL = ["data.num_samples=480", "data.batch_size=16", "data.max_length=48", "schedule.epochs=1",
                  "optim.base_lr=8.0e-3", "logging.every_steps=5"]  # same peak lr (5e-4) at half the batch; fmt: skip
MINILM_BANK = dict(source="fortunes", split="train", num_samples=600, batch_size=64, max_length=48)
MINILM_QUERIES = dict(source="fortunes", split="test", num_samples=400, batch_size=64, max_length=48)


def bench_minilm(work: Path, processes: int) -> dict:
    from amp_hf.data import DataConfig
    from amp_hf.evaluation.metrics import knn_accuracy, mean_cosine
    from amp_hf.evaluation.tasks import embed_dataset
    from amp_hf.loading import load_model, resolve_model_path

    teacher_path = resolve_model_path("minilm")
    pruned_path, distilled_path = work / "minilm-pruned", work / "minilm-distilled"
    result = {"model": "all-MiniLM-L6-v2", **prune("minilm", pruned_path, MINILM_SCORING)}
    result["distill_overrides"] = MINILM_DISTILL
    result["distill_seconds"] = distill(
        "distill_minilm.yaml", "minilm", pruned_path, distilled_path, processes, MINILM_DISTILL
    )
    result["distill_final_loss"] = final_loss(distilled_path)

    bank_data, query_data = DataConfig(**MINILM_BANK), DataConfig(**MINILM_QUERIES)
    teacher_queries = None
    for stage, path in (("teacher", teacher_path), ("pruned", pruned_path), ("distilled", distilled_path)):
        model = load_model(str(path))
        bank, bank_labels = embed_dataset(model, bank_data, description=f"{stage}: kNN bank")
        queries, query_labels = embed_dataset(model, query_data, description=f"{stage}: kNN queries")
        result[f"knn20_{stage}"] = knn_accuracy(bank, bank_labels, queries, query_labels, ks=(20,))[20]
        if teacher_queries is None:
            teacher_queries = queries
        else:
            result[f"cosine_{stage}"] = mean_cosine(queries, teacher_queries)
    result["knn_bank_size"], result["knn_queries"] = len(bank), len(queries)
    return result


# Per reference dataset: scoring data for the pruner, and overrides of configs/distill_vit_fashion_mnist.yaml.
VIT_SETTINGS = {
    "digits": {
        "scoring": ["scoring.data.source=digits", "scoring.data.num_samples=512", "scoring.data.batch_size=128"],
        "distill": ["data.source=digits", "data.num_samples=null", "data.batch_size=32", "schedule.epochs=4",
                    "augment.min_scale=0.6", "optim.base_lr=4.0e-3"],
    },  # fmt: skip
    "fashion_mnist": {
        "scoring": ["scoring.data.source=fashion_mnist", "scoring.data.num_samples=1024", "scoring.data.batch_size=128"],
        "distill": [],
    },
}


def bench_vit(dataset: str, work: Path, processes: int, train_reference: bool) -> dict:
    from amp_hf.data import DataConfig
    from amp_hf.evaluation.tasks import evaluate_top1
    from amp_hf.loading import load_model
    from amp_hf.reference import reference_path, train_reference_vit

    cached = reference_path(dataset)
    if dataset == "fashion_mnist" and not (cached / "config.json").is_file() and not train_reference:
        return {"skipped": f"the Fashion-MNIST reference ViT is not trained yet ({cached}); rerun with "
                           "--train-reference (trains it once, ~15-40 CPU minutes) to include this part"}  # fmt: skip
    teacher_path = train_reference_vit(dataset)
    pruned_path, distilled_path = work / f"{dataset}-vit-pruned", work / f"{dataset}-vit-distilled"
    settings = VIT_SETTINGS[dataset]
    result = {"model": f"{dataset} reference ViT", **prune(str(teacher_path), pruned_path, settings["scoring"])}
    result["distill_overrides"] = settings["distill"]
    result["distill_seconds"] = distill(
        "distill_vit_fashion_mnist.yaml", str(teacher_path), pruned_path, distilled_path, processes, settings["distill"]
    )
    result["distill_final_loss"] = final_loss(distilled_path)
    test = DataConfig(source=dataset, split="test", batch_size=500)
    for stage, path in (("teacher", teacher_path), ("pruned", pruned_path), ("distilled", distilled_path)):
        row = evaluate_top1(load_model(str(path)), test)[0]
        result[f"top1_{stage}"], result["num_test"] = row.value, row.num_samples
    return result


def retention(result: dict, metric: str) -> tuple[float, float]:
    teacher = result[f"{metric}_teacher"]
    return result[f"{metric}_pruned"] / teacher, result[f"{metric}_distilled"] / teacher


def markdown(report: dict) -> str:
    lines = [
        "# Distillation benchmark",
        "",
        f"Generated by `scripts/bench_distill.py` on {report['machine']} ({report['torch_threads']} torch threads, "
        f"{report['processes']} distillation process(es)); total wall time {report['wall_seconds']:.0f} s "
        f"(1-minute load average {report['load_average_at_start']} at the start: wall times are for a shared machine).",
        "",
        f"Each model is pruned with AMP's entropy Taylor scores at uniform widths, removing "
        f"{BLOCK_REDUCTION:.0%} of its transformer-block parameters, then distilled for a few CPU minutes "
        "with `amp-hf distill` (configs named below).",
        "",
    ]
    minilm = report["minilm"]
    knn_pruned, knn_distilled = retention(minilm, "knn20")
    lines += [
        "## (a) all-MiniLM-L6-v2 on Debian fortunes (kNN, k = 20)",
        "",
        f"Sentence embeddings (attention-masked token mean); kNN memory bank: {minilm['knn_bank_size']} training "
        f"fortunes, queries: {minilm['knn_queries']} test fortunes, 8 categories. Distillation: "
        f"`configs/distill_minilm.yaml` with `{' '.join(minilm['distill_overrides'])}`.",
        "",
        "| stage | kNN top-1 | retention | cosine to teacher |",
        "|---|---|---|---|",
        f"| teacher | {minilm['knn20_teacher']:.4f} | 100.0% | 1 |",
        f"| pruned | {minilm['knn20_pruned']:.4f} | {knn_pruned:.1%} | {minilm['cosine_pruned']:.4f} |",
        f"| distilled | {minilm['knn20_distilled']:.4f} | {knn_distilled:.1%} | "
        f"{minilm['cosine_distilled']:.4f} |",
        "",
        _sizes(minilm),
        "",
    ]
    for dataset, title in (("digits", "(b) digits reference ViT"), ("fashion_mnist", "(c) Fashion-MNIST reference ViT")):
        vit = report[f"vit_{dataset}"]
        lines += [f"## {title} (top-1 of its classifier head on the test split)", ""]
        if "skipped" in vit:
            lines += [f"Skipped: {vit['skipped']}", ""]
            continue
        top1_pruned, top1_distilled = retention(vit, "top1")
        overrides = " ".join(vit["distill_overrides"]) or "no overrides"
        lines += [
            f"{vit['num_test']} test images. Distillation: `configs/distill_vit_fashion_mnist.yaml` with "
            f"`{overrides}`; the classifier head stays at the teacher's values (only features are distilled).",
            "",
            "| stage | top-1 | retention |",
            "|---|---|---|",
            f"| teacher | {vit['top1_teacher']:.4f} | 100.0% |",
            f"| pruned | {vit['top1_pruned']:.4f} | {top1_pruned:.1%} |",
            f"| distilled | {vit['top1_distilled']:.4f} | {top1_distilled:.1%} |",
            "",
            _sizes(vit),
            "",
        ]
    return "\n".join(lines)


def _sizes(result: dict) -> str:
    return (
        f"Block parameters {result['params_blocks_before']:,} → {result['params_blocks_after']:,} "
        f"({1 - result['params_blocks_after'] / result['params_blocks_before']:.1%} removed; whole tower "
        f"{1 - result['params_tower_after'] / result['params_tower_before']:.1%}); MLP widths "
        f"{result['widths_before']} → {result['widths_after']}. Pruning took {result['prune_seconds']} s, "
        f"distillation {result['distill_seconds']} s (final loss {result['distill_final_loss']:.4g})."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "docs" / "bench_distill"), help="report path without suffix")
    parser.add_argument("--work", default=None, help="folder for the pruned / distilled models (default: a temp dir)")
    parser.add_argument("--processes", type=int, default=1, help="distillation processes (accelerate launch)")
    parser.add_argument("--train-reference", action="store_true", help="train the Fashion-MNIST ViT if missing")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_distill_") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}",
            "torch_threads": torch.get_num_threads(),
            "load_average_at_start": round(os.getloadavg()[0], 1),  # the machine may be shared
            "processes": args.processes,
            "minilm": bench_minilm(work, args.processes),
            "vit_digits": bench_vit("digits", work, args.processes, args.train_reference),
            "vit_fashion_mnist": bench_vit("fashion_mnist", work, args.processes, args.train_reference),
        }
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
