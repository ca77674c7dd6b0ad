#!/usr/bin/env python
"""Benchmark: fast (cached-suffix) vs oracle AMP search, and Taylor scoring vs a plain forward+backward.

Measured side by side in one run on a ViT-B/16-shaped ViTModel (random weights) and on the real
all-MiniLM-L6-v2; prints the ratios and writes docs/bench_search.{json,md}. Goals (issue 7): fast/oracle
wall time <= 0.5 at identical widths; scoring step / plain step <= 1.25. On MiniLM it also times budget
mode with and without the searches sharing their evaluated states (same widths expected).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the oracle search lives with the tests

from oracle_search import oracle_search  # noqa: E402

import amp_hf  # noqa: E402
from amp_hf.selection import (  # noqa: E402
    CriterionConfig,
    CriterionEvaluator,
    adaptive_search,
    budget_search,
    build_criterion,
    taylor_scores,
    tower_cost,
)


def vit_b16(layers: int):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=768, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=3072,
                       image_size=224, patch_size=16)
    return ViTModel(config).eval()


def image_batches(count, size):
    generator = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(size, 3, 224, 224, generator=generator)} for _ in range(count)]


def minilm_batches(count, size, length):
    from transformers import AutoTokenizer

    from amp_hf.data import read_fortunes

    tokenizer = AutoTokenizer.from_pretrained(amp_hf.resolve_model_path("minilm"))
    texts, _, _ = read_fortunes()
    batches = []
    for i in range(count):
        chunk = texts[i * size:(i + 1) * size]
        batches.append(dict(tokenizer(chunk, padding="max_length", truncation=True, max_length=length,
                                      return_tensors="pt")))
    return batches


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def plain_step(stack, criterion, batch):
    """What a training step costs: forward, criterion, backward into parameter gradients."""
    stack.model.zero_grad(set_to_none=True)
    criterion(stack, batch).backward()


def bench(name, model, batches, delta_e, repeats, budget_target=None):
    criterion = build_criterion(CriterionConfig(name="entropy", temp_inv=15))
    stack = amp_hf.resolve(model)
    # scoring overhead: one Taylor batch vs one plain forward+backward, median of `repeats`
    plain, scoring = [], []
    for _ in range(repeats):
        plain.append(timed(lambda: plain_step(stack, criterion, batches[0]))[1])
        scoring.append(timed(lambda: taylor_scores(model, batches[:1], criterion))[1])
    model.zero_grad(set_to_none=True)
    scores = taylor_scores(model, batches, criterion).abs
    fast, fast_time = timed(lambda: adaptive_search(model, scores, CriterionEvaluator(model, criterion, batches),
                                                    delta_e, progress=False))
    oracle, oracle_time = timed(lambda: oracle_search(model, scores, batches, criterion, delta_e))
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    budget = {}
    if budget_target is not None:  # budget mode: the ΔE bisection with and without shared evaluations
        cost = tower_cost(model, "mlp_params")
        for label, share in (("shared", True), ("unshared", False)):
            evaluator = CriterionEvaluator(model, criterion, batches)
            (result, achieved), seconds = timed(lambda evaluator=evaluator, share=share: budget_search(
                model, scores, evaluator, budget_target, cost, share_evaluations=share))
            budget[label] = {"seconds": round(seconds, 2), "evaluations": evaluator.evaluations,
                             "widths": result.widths, "delta_e": result.delta_e, "achieved": round(achieved, 4)}
        budget["identical_widths"] = budget["shared"]["widths"] == budget["unshared"]["widths"]
        budget["shared_over_unshared"] = round(budget["shared"]["seconds"] / budget["unshared"]["seconds"], 3)
    return {
        "model": name,
        "layers": len(scores),
        "eval_batches": len(batches),
        "batch_size": next(iter(batches[0].values())).shape[0],
        "delta_e": delta_e,
        "widths_fast": fast.widths,
        "widths_oracle": oracle,
        "identical_widths": fast.widths == oracle,
        "fast_search_s": round(fast_time, 2),
        "oracle_search_s": round(oracle_time, 2),
        "fast_over_oracle": round(fast_time / oracle_time, 3),
        "plain_step_s": round(median(plain), 3),
        "scoring_step_s": round(median(scoring), 3),
        "scoring_over_plain": round(median(scoring) / median(plain), 3),
        "budget": budget,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vit-layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "docs" / "bench_search"))
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results = [
        bench("ViT-B/16 shape (random weights)", vit_b16(args.vit_layers), image_batches(args.batches, args.batch_size),
              delta_e=0.01, repeats=args.repeats),
        bench("all-MiniLM-L6-v2 (real)", amp_hf.load_model("minilm"),
              minilm_batches(args.batches * 2, args.batch_size * 2, 64), delta_e=0.002, repeats=args.repeats,
              budget_target=0.4),
    ]
    report = {"torch_threads": torch.get_num_threads(), "results": results}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["# Search and scoring benchmark", "", f"`python scripts/bench_search.py` — {torch.get_num_threads()} CPU threads.", "",
             "| model | layers | eval batches x size | identical widths | fast s | oracle s | fast/oracle | plain step s "
             "| scoring step s | scoring/plain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['layers']} | {r['eval_batches']} x {r['batch_size']} | {r['identical_widths']} | "
                     f"{r['fast_search_s']} | {r['oracle_search_s']} | **{r['fast_over_oracle']}** | {r['plain_step_s']} | "
                     f"{r['scoring_step_s']} | **{r['scoring_over_plain']}** |")
    lines += ["", "Widths chosen (fast = oracle):", ""] + [f"- {r['model']}: {r['widths_fast']}" for r in results]
    for r in results:
        if r["budget"]:
            b = r["budget"]
            lines += ["", f"Budget mode on {r['model']} (40% of the MLP parameters; ΔE bisection, each step a full "
                      "adaptive search): searches sharing their evaluated states vs each evaluating all of its own.", "",
                      "| variant | criterion passes | s | ΔE found | removed | widths |", "|---|---|---|---|---|---|"]
            lines += [f"| {label} | {b[label]['evaluations']} | {b[label]['seconds']} | {b[label]['delta_e']:.3g} | "
                      f"{b[label]['achieved']:.1%} | {b[label]['widths']} |" for label in ("shared", "unshared")]
            lines += ["", f"shared/unshared wall time **{b['shared_over_unshared']}**, identical widths: "
                      f"{b['identical_widths']}."]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
