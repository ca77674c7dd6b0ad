#!/usr/bin/env python
"""Quality benchmark: AMP vs baselines at equal MLP-parameter reduction, on the real all-MiniLM-L6-v2 and on
the project's Fashion-MNIST ViT, without fine-tuning (and, with --distill, after a short distillation).

Every method prunes the same model to the same MLP-parameter reduction (25/40/55%):
  amp           AMP: Taylor scores of the entropy criterion + adaptive search, ΔE found by budget mode
  global-taylor the same scores, one global ranking (scores normalised per layer)
  uniform-taylor the same scores, the same width in every layer
  ce-taylor     Taylor scores of labelled cross-entropy (classifier heads only), uniform widths
  dgmr          Gram-Schmidt diversity order, uniform widths
  magnitude     ||fc1 row|| x ||fc2 column||, uniform widths
  random        seeded random neurons, uniform widths
Writes docs/benchmarks.md and docs/benchmarks.json (tables + the commands to reproduce).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

import amp_hf  # noqa: E402
from amp_hf.data import DataConfig, load_processor, make_loader, prepare_dataset  # noqa: E402
from amp_hf.evaluate import evaluate_fidelity, evaluate_knn, evaluate_top1  # noqa: E402
from amp_hf.selection import (  # noqa: E402
    CriterionConfig,
    CriterionEvaluator,
    budget_search,
    build_criterion,
    dgmr_scores,
    global_widths,
    magnitude_scores,
    plan_from_widths,
    random_scores,
    taylor_scores,
    tower_cost,
    uniform_widths,
)

TARGETS = (0.25, 0.40, 0.55)


def batches_of(model, processor, data: DataConfig) -> list[dict]:
    dataset = prepare_dataset(data, processor, amp_hf.get_adapter(model), model)
    return list(make_loader(dataset, data.batch_size, drop_last=True))


def make_plans(model, processor, setup: dict, targets, log) -> dict[tuple[str, float], amp_hf.PrunePlan]:
    """Every method's plan at every target; scores are computed once per method."""
    entropy = build_criterion(CriterionConfig(name="entropy", temp_inv=15))
    scoring = batches_of(model, processor, setup["scoring"])
    search = batches_of(model, processor, setup["search"])
    started = time.time()
    scores = {"taylor": taylor_scores(model, scoring, entropy).abs}
    log(f"  entropy Taylor scores: {time.time() - started:.0f} s")
    if setup.get("ce"):
        ce = build_criterion(CriterionConfig(name="ce"))
        ce.prepare(model, amp_hf.get_adapter(model))
        scores["ce"] = taylor_scores(model, scoring, ce).abs
    scores["dgmr"] = dgmr_scores(model, width=max(amp_hf.get_adapter(model).widths(model)))
    scores["magnitude"] = magnitude_scores(model)
    scores["random"] = random_scores(model, seed=0)
    cost = tower_cost(model, "mlp_params")
    evaluator = CriterionEvaluator(model, entropy, search)
    plans = {}
    for target in targets:
        uniform = uniform_widths(cost, target)
        started = time.time()
        result, achieved = budget_search(model, scores["taylor"], evaluator, target, cost, tolerance=0.01,
                                         upper=setup["delta_e_upper"])
        log(f"  AMP budget search {target:.0%}: ΔE={result.delta_e:.3g} -> {achieved:.1%} in {time.time() - started:.0f} s")
        plans["amp", target] = amp_hf.PrunePlan(cost.full_widths, result.kept, "amp",
                                                {"delta_e": result.delta_e, "achieved": achieved})
        plans["global-taylor", target] = plan_from_widths(scores["taylor"], global_widths(scores["taylor"], cost, target),
                                                          "global-taylor", {})
        plans["uniform-taylor", target] = plan_from_widths(scores["taylor"], uniform, "uniform-taylor", {})
        if "ce" in scores:
            plans["ce-taylor", target] = plan_from_widths(scores["ce"], uniform, "ce-taylor", {})
        for name in ("dgmr", "magnitude", "random"):
            plans[name, target] = plan_from_widths(scores[name], uniform, name, {})
    return plans


def quality(model, teacher, processor, setup: dict) -> dict[str, float]:
    queries = setup["eval"]
    results = evaluate_knn(model, queries, processor, train_split="train", num_train_samples=setup["knn_bank"], ks=(20,))
    values = {"knn@20": results[0].value}
    if setup.get("top1"):
        values["top1"] = evaluate_top1(model, queries, processor)[0].value
    if teacher is not None:
        values["cosine"] = evaluate_fidelity(model, teacher, queries, processor)[0].value
    return values


def run_model(name: str, model, processor, setup: dict, targets, log) -> dict:
    log(f"{name}: scoring and searching")
    teacher_quality = quality(model, None, processor, setup)
    plans = make_plans(model, processor, setup, targets, log)
    rows = []
    mlp_before = amp_hf.model_stats(model)["params_mlp"]
    for (method, target), plan in plans.items():
        pruned = amp_hf.slice_model(model, plan).eval()
        values = quality(pruned, model, processor, setup)
        reduction = 1 - amp_hf.model_stats(pruned)["params_mlp"] / mlp_before
        rows.append({"method": method, "target": target, "mlp_reduction": reduction, "widths": plan.widths, **values})
        log(f"  {method:15s} {target:.0%}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))
    return {"model": name, "teacher": teacher_quality, "rows": rows}


def minilm_setup(quick: bool) -> dict:
    def data(split, samples, seed):
        return DataConfig(source="fortunes", split=split, num_samples=samples, batch_size=64, max_length=64, seed=seed)

    return {"scoring": data("train", 128 if quick else 512, 0), "search": data("test", 64 if quick else 256, 1),
            "eval": data("test", 200 if quick else 800, 2), "knn_bank": 300 if quick else 2000, "delta_e_upper": 0.1}


def vit_setup(quick: bool) -> dict:
    def data(split, samples, seed):
        return DataConfig(source="fashion_mnist", split=split, num_samples=samples, batch_size=128, seed=seed)

    return {"scoring": data("train", 256 if quick else 2048, 0), "search": data("test", 256 if quick else 1024, 1),
            "eval": data("test", 500 if quick else 5000, 2), "knn_bank": 1000 if quick else 10000, "top1": True,
            "ce": True, "delta_e_upper": 1.0}


def markdown(report: dict) -> str:
    lines = ["# Quality benchmarks", "",
             "Every method prunes the same model to the same MLP-parameter reduction; no fine-tuning. "
             "kNN@20: DINOv2-protocol kNN (T = 0.07) on held-out data; cosine: mean cosine to the unpruned "
             "model's embedding; top-1: the classifier head.", "",
             f"Reproduce: `{report['command']}` ({report['wall_time_s']:.0f} s on {report['threads']} CPU threads).", ""]
    for block in report["models"]:
        metrics = [k for k in ("top1", "knn@20", "cosine") if k in block["rows"][0]]
        lines += [f"## {block['model']}", "",
                  "unpruned: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in block["teacher"].items()), ""]
        targets = sorted({r["target"] for r in block["rows"]})
        header = "| method | " + " | ".join(f"{m} @ {t:.0%}" for t in targets for m in metrics) + " |"
        lines += [header, "|" + "---|" * (1 + len(targets) * len(metrics))]
        methods = list(dict.fromkeys(r["method"] for r in block["rows"]))
        for method in methods:
            cells = []
            for target in targets:
                row = next(r for r in block["rows"] if r["method"] == method and r["target"] == target)
                cells += [f"{100 * row[m]:.1f}" for m in metrics]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", "Achieved MLP-parameter reductions and AMP widths:", ""]
        for row in block["rows"]:
            if row["method"] == "amp":
                lines.append(f"- {row['target']:.0%} target: {row['mlp_reduction']:.1%} removed, widths {row['widths']}")
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,vit", help="comma list: minilm, vit")
    parser.add_argument("--targets", default=",".join(str(t) for t in TARGETS))
    parser.add_argument("--quick", action="store_true", help="few samples (smoke run)")
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks"))
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    started = time.time()

    def log(message):
        print(message, flush=True)

    blocks = []
    for name in args.models.split(","):
        if name == "minilm":
            model = amp_hf.load_model("minilm")
            processor = load_processor("minilm", amp_hf.get_adapter(model))
            blocks.append(run_model("all-MiniLM-L6-v2 (real pretrained)", model, processor, minilm_setup(args.quick),
                                    targets, log))
        elif name == "vit":
            from amp_hf.reference import train_reference_vit

            path = train_reference_vit("fashion_mnist")
            model = amp_hf.load_model(str(path))
            processor = load_processor(str(path), amp_hf.get_adapter(model))
            blocks.append(run_model("Fashion-MNIST ViT (trained by scripts/train_reference_vit.py)", model, processor,
                                    vit_setup(args.quick), targets, log))
        else:
            sys.exit(f"unknown model {name!r}: use minilm and/or vit")
    report = {"command": "python scripts/bench_quality.py " + " ".join(sys.argv[1:]),
              "threads": torch.get_num_threads(), "wall_time_s": time.time() - started, "models": blocks}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2))
    output.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
