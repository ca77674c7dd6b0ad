#!/usr/bin/env python
"""Quality benchmark: AMP vs baselines at equal MLP-parameter reduction, on the real all-MiniLM-L6-v2 and on
the project's Fashion-MNIST ViT: plainly sliced, with training-free reconstruction, and after a short
distillation.

Every method prunes the same model to the same MLP-parameter reduction (25/40/55%):
  amp            AMP: Taylor scores of the entropy criterion + adaptive search, ΔE found by budget mode
  amp-change     the same, accepting a candidate when the entropy moves by at most ΔE either way
                 (search.acceptance=change) instead of AMP's rise-only rule
  amp-refit      the same budget search with search.reconstruct=true: every candidate is evaluated after the
                 closed-form refit of its output projection (statistics from the scoring data); its
                 "reconstructed" row is the searched model itself, its "sliced" row those widths plainly sliced
                 (acceptance: the model's, see --help of the setups: rise for MiniLM, change for the ViT)
  global-taylor  the same scores, one global ranking (scores normalised per layer)
  uniform-taylor the same scores, the same width in every layer
  ce-taylor      Taylor scores of labelled cross-entropy (classifier heads only), uniform widths
  dgmr           Gram-Schmidt diversity order, uniform widths
  magnitude      ||fc1 row|| x ||fc2 column||, uniform widths
  random         seeded random neurons, uniform widths
Each plan is evaluated as
  sliced         the kept neurons' original weights (no data used after selection)
  reconstructed  `amp_hf.reconstruct` with its defaults (sequential refit of the output projections on the
                 scoring data, held-out damping choice, end-to-end fallbacks)
  reconstructed-residual  the same with reconstruct.objective=residual (every residual-stream writer from the
                 first pruned MLP on refit to the unpruned stream), with --objectives residual (or mlp,residual);
                 for amp-refit it starts from the searched widths plainly sliced
  reconstructed-blockwise  the per-MLP closed form then reconstruct.mode=blockwise (Adam steps per block to
                 the unpruned block outputs), with --objectives blockwise
  reconstructed-residual-blockwise  the residual objective then blockwise refinement, its end-to-end check on
                 the held-out embedding cosine (reconstruct.blockwise_guard=fidelity), --objectives residual-blockwise
  distilled      `amp-hf distill` (a subprocess, as a user runs it) from the sliced checkpoint, at the
                 --distill-targets only (default 40%); --no-distill skips it
Also, with --search-cost: one plain and one reconstruction-aware adaptive search at the same ΔE, side by
side (wall-time ratio); with --distill-steps S1,S2,..: distillation runs of S optimiser steps from three
starts of amp at the --distill-targets (sliced, sliced + reconstruct, amp-refit), and the fewest steps that
reach 99% of the unpruned kNN@20. --methods runs only some methods; with --update the rows of other (method, target,
variant) already in <output>.json are kept. --widths-from <json> takes each (method, target)'s widths from that
report's sliced rows instead of searching (the same Taylor scores keep the same neurons): the cut-down run that
adds reconstruction rows to measured plans.
Writes docs/benchmarks.md and docs/benchmarks.json (tables, wall times, the command to reproduce).

    nice python scripts/bench_quality.py [--models minilm,vit] [--quick] [--no-distill]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from bench_distill import distill, final_loss  # noqa: E402  (the same `amp-hf distill` subprocess)

import amp_hf  # noqa: E402
from amp_hf.data import DataConfig, load_processor, make_loader, prepare_dataset  # noqa: E402
from amp_hf.evaluation.metrics import knn_accuracy, mean_cosine  # noqa: E402
from amp_hf.evaluation.tasks import embed_dataset, evaluate_top1  # noqa: E402
from amp_hf.reconstruct import ReconstructConfig, SearchRefit, install_search_refit, reconstruct  # noqa: E402
from amp_hf.selection import (  # noqa: E402
    CriterionConfig,
    CriterionEvaluator,
    adaptive_search,
    budget_search,
    build_criterion,
    dgmr_scores,
    global_widths,
    magnitude_scores,
    random_scores,
    taylor_scores,
    tower_cost,
    uniform_widths,
)

TARGETS = (0.25, 0.40, 0.55)
METHOD_ORDER = ["amp", "amp-change", "amp-refit", "global-taylor", "uniform-taylor", "ce-taylor", "dgmr", "magnitude",
                "random"]
DISTILL_TARGETS = (0.40,)
CRITERION = CriterionConfig(name="entropy", temp_inv=15)


def batches_of(model, processor, data: DataConfig) -> list[dict]:
    dataset = prepare_dataset(data, processor, amp_hf.get_adapter(model), model)
    return list(make_loader(dataset, data.batch_size, drop_last=True))


def make_plans(model, scoring: list[dict], setup: dict, targets, log, methods=None,
               widths_from: dict | None = None) -> tuple[dict, dict, dict, list]:
    """Every method's plan at every target (scores computed once per method), the selection wall times,
    amp-refit's searched output projections, and the entropy Taylor scores."""
    entropy = build_criterion(CRITERION)
    seconds = {}
    started = time.time()
    scores = {"taylor": taylor_scores(model, scoring, entropy).abs}
    seconds["entropy Taylor scores"] = time.time() - started
    log(f"  entropy Taylor scores: {seconds['entropy Taylor scores']:.0f} s")
    if setup.get("ce"):
        ce = build_criterion(CriterionConfig(name="ce"))
        ce.prepare(amp_hf.resolve(model))
        scores["ce"] = taylor_scores(model, scoring, ce).abs
    started = time.time()
    scores["dgmr"] = dgmr_scores(model, width=max(amp_hf.get_adapter(model).widths(model)))
    seconds["DGMR order"] = time.time() - started
    scores["magnitude"] = magnitude_scores(model)
    scores["random"] = random_scores(model, seed=0)
    cost = tower_cost(model, "mlp_params")
    if widths_from is not None:  # the plans of an earlier run: no search
        plans = {(method, target): amp_hf.PrunePlan.from_scores(scores["taylor"], widths, method, {"widths_from": True})
                 for (method, target), widths in widths_from.items()
                 if target in targets and (not methods or method in methods)}
        return plans, {k: round(v, 1) for k, v in seconds.items()}, {}, scores["taylor"]
    evaluator = CriterionEvaluator(model, entropy, batches_of(model, setup["processor"], setup["search"]))
    refit = SearchRefit(model, evaluator, ReconstructConfig(enabled=True), batches=scoring)
    plans, projections = {}, {}
    searches = [("amp", "rise", None), ("amp-change", "change", None), ("amp-refit", setup["acceptance"], refit)]
    for target in targets:
        uniform = uniform_widths(cost, target)
        for method, acceptance, in_search in searches:
            if methods and method not in methods:
                continue
            started = time.time()
            result, achieved = budget_search(model, scores["taylor"], evaluator, target, cost,
                                             tolerance=setup["tolerance"], upper=setup["delta_e_upper"],
                                             acceptance=acceptance, refit=in_search)
            seconds[f"{method} budget search {target:.0%}"] = time.time() - started
            log(f"  {method} budget search {target:.0%}: ΔE={result.delta_e:.3g} -> {achieved:.1%} "
                f"in {time.time() - started:.0f} s")
            plans[method, target] = amp_hf.PrunePlan(cost.full_widths, result.kept, method,
                                                     {"delta_e": result.delta_e, "achieved": achieved,
                                                      "final_entropy": result.final_entropy})
            if in_search is not None:
                projections[method, target] = (result.projections, result.refit)
        plans["global-taylor", target] = amp_hf.PrunePlan.from_scores(scores["taylor"], global_widths(scores["taylor"], cost, target),
                                                          "global-taylor", {})
        plans["uniform-taylor", target] = amp_hf.PrunePlan.from_scores(scores["taylor"], uniform, "uniform-taylor", {})
        if "ce" in scores:
            plans["ce-taylor", target] = amp_hf.PrunePlan.from_scores(scores["ce"], uniform, "ce-taylor", {})
        for name in ("dgmr", "magnitude", "random"):
            plans[name, target] = amp_hf.PrunePlan.from_scores(scores[name], uniform, name, {})
    if methods:
        plans = {key: plan for key, plan in plans.items() if key[0] in methods}
    return plans, {k: round(v, 1) for k, v in seconds.items()}, projections, scores["taylor"]


def search_cost(model, scores, batches, scoring, delta_e: float, acceptance: str, log) -> dict:
    """One plain and one reconstruction-aware adaptive search at the same ΔE on the same batches, timed side
    by side (plain, refit, plain, refit: the mean of two each, so load drift hits both alike)."""
    entropy = build_criterion(CRITERION)
    seconds = {"plain": [], "refit": []}
    evaluations, widths = {}, {}
    for kind in ("plain", "refit", "plain", "refit"):
        evaluator = CriterionEvaluator(model, entropy, batches)
        refit = SearchRefit(model, evaluator, ReconstructConfig(enabled=True), batches=scoring) if kind == "refit" else None
        started = time.time()
        result = adaptive_search(model, scores, evaluator, delta_e, acceptance=acceptance, progress=False, refit=refit)
        seconds[kind].append(time.time() - started)
        evaluations[kind], widths[kind] = result.evaluations, result.widths
        log(f"  search cost: {kind} adaptive search at ΔE={delta_e:.3g}: {seconds[kind][-1]:.0f} s, "
            f"{result.evaluations} evaluations, widths {result.widths}")
    mean = {k: sum(v) / len(v) for k, v in seconds.items()}
    return {"delta_e": delta_e, "acceptance": acceptance, "seconds": {k: [round(x, 1) for x in v] for k, v in seconds.items()},
            "evaluations": evaluations, "widths": widths, "ratio": round(mean["refit"] / mean["plain"], 3),
            "load_average": [round(x, 1) for x in os.getloadavg()]}


class Judge:
    """Quality of a model against the unpruned one: kNN@20 (bank: train split), mean cosine, top-1."""

    def __init__(self, teacher, setup: dict):
        self.setup, self.processor = setup, setup["processor"]
        self.reference = None
        self.teacher = self(teacher)

    def __call__(self, model) -> dict[str, float]:
        queries = self.setup["eval"]
        bank_data = replace(queries, split="train", num_samples=self.setup["knn_bank"])
        bank, bank_labels = embed_dataset(model, bank_data, self.processor, description="kNN bank")
        features, labels = embed_dataset(model, queries, self.processor, description="kNN queries")
        values = {"knn@20": knn_accuracy(bank, bank_labels, features, labels, ks=(20,))[20]}
        if self.setup.get("top1"):
            values["top1"] = evaluate_top1(model, queries, self.processor)[0].value
        if self.reference is None:
            self.reference = features
        values["cosine"] = mean_cosine(features, self.reference)
        return values


def distill_steps(starts: dict, teacher_id: str, processor, setup: dict, judge, options, work: Path, log) -> list:
    """Distil each start for S optimiser steps (a fresh one-epoch run of S batches per S: warmup and cosine
    decay scale with it) and judge it; the fewest S reaching 99% of the unpruned kNN@20 is reported."""
    results = []
    batch = setup["distill_steps_batch"]
    too_many = [n for n in options.distill_steps if batch * n > setup["knn_bank"]]
    if too_many:  # one epoch of S batches must fit in the train split (the kNN bank's size is a lower bound)
        raise SystemExit(f"--distill-steps {too_many}: at most {setup['knn_bank'] // batch} steps of batch {batch}")
    chosen = [(key, value) for key, value in starts.items() if key[1] in options.distill_targets]
    for (start, target), (student_model, plan, method, start_seconds) in sorted(
            chosen, key=lambda item: (item[0][1], item[0][0])):
        student = work / f"start-{start}-{target}"
        amp_hf.save_pruned(student_model, student, plan, processor=processor, overwrite=True)
        curve = [{"steps": 0, **judge(student_model)}]
        for steps in options.distill_steps:
            output = work / f"start-{start}-{target}-{steps}"
            overrides = [*setup["distill_overrides"], f"data.num_samples={batch * steps}", f"data.batch_size={batch}"]
            seconds = distill(setup["distill_config"], teacher_id, student, output, 1, overrides)
            curve.append({"steps": steps, "seconds": seconds, **judge(amp_hf.load_model(str(output)).eval())})
            log(f"  distill {start} {target:.0%} {steps} steps: knn@20={curve[-1]['knn@20']:.4f}")
        goal = 0.99 * judge.teacher["knn@20"]
        reached = next((point["steps"] for point in curve if point["knn@20"] >= goal), None)
        results.append({"start": start, "method": method, "start_seconds": start_seconds, "target": target,
                        "curve": curve, "steps_to_99": reached})
    return results


# --objectives: the ReconstructConfig of each reconstructed-row recipe
RECIPES = {
    "mlp": {"objective": "mlp"},
    "residual": {"objective": "residual"},
    "blockwise": {"objective": "mlp", "mode": "blockwise"},  # the per-MLP closed form, then Adam steps per block
    "residual-blockwise": {"objective": "residual", "mode": "blockwise", "blockwise_guard": "fidelity"},
}


def _start_key(entry: dict) -> tuple:
    return entry["start"], entry.get("method", "amp"), entry["target"]


def run_model(name: str, teacher_id: str, setup: dict, targets, options, work: Path, log) -> dict:
    model = amp_hf.load_model(teacher_id).eval()
    setup["processor"] = processor = load_processor(teacher_id, amp_hf.get_adapter(model))
    log(f"{name}: scoring and searching")
    judge = Judge(model, setup)
    scoring = batches_of(model, processor, setup["scoring"])
    methods = options.methods.split(",") if options.methods else None
    widths_from = None
    if options.widths_from:
        previous = next(b for b in json.loads(Path(options.widths_from).read_text())["models"] if b["key"] == setup["key"])
        widths_from = {(r["method"], r["target"]): r["widths"] for r in previous["rows"] if r["variant"] == "sliced"}
    plans, selection_seconds, projections, taylor = make_plans(model, scoring, setup, targets, log, methods, widths_from)
    criterion = build_criterion(CRITERION)
    rows = []
    progress_file = Path(f"{options.output}.partial-{setup['key']}.json")
    starts = {}  # (start, target) -> (model, plan, method, its recovery's seconds): the distillation-steps starts
    starts_method = options.distill_starts_method or setup["distill_steps_method"]
    mlp_before = amp_hf.model_stats(model)["params_mlp"]
    for (method, target), plan in plans.items():
        common = {"method": method, "target": target, "widths": plan.widths}
        sliced = amp_hf.slice_model(model, plan).eval()
        common["mlp_reduction"] = 1 - amp_hf.model_stats(sliced)["params_mlp"] / mlp_before
        rows.append({**common, "variant": "sliced", **judge(sliced)})
        if method == starts_method:
            starts["sliced", target] = (sliced, plan, method, 0.0)
        if (method, target) in projections:  # the searched model itself: no reconstruction after the search
            searched = amp_hf.slice_model(model, plan).eval()
            refit = install_search_refit(searched, *projections[method, target])
            rows.append({**common, "variant": "reconstructed", "seconds": 0.0, "kept": refit["kept"],
                         "refit_layers": refit["layers_reconstructed"], **judge(searched)})
            starts["reconstruction-searched", target] = (searched, plan, method, 0.0)
        if options.reconstruct:
            for objective in options.objectives:
                if objective == "mlp" and (method, target) in projections:
                    continue  # amp-refit: its searched model is its per-MLP reconstruction
                if objective == "mlp" and method == "amp-refit" and widths_from is not None:
                    continue  # its reconstructed row is the searched model, not a refit of the slice
                started = time.time()
                recipe = RECIPES[objective]
                rebuilt, report = reconstruct(model, plan, scoring, ReconstructConfig(enabled=True, **recipe),
                                              criterion=criterion)
                variant = "reconstructed" if objective == "mlp" else f"reconstructed-{objective}"
                provenance = report.provenance()
                rows.append({**common, "variant": variant, "seconds": round(time.time() - started, 1),
                             "refit_layers": provenance["layers_reconstructed"], "kept": report.kept,
                             "attention_refit": provenance.get("attention_outputs_reconstructed"),
                             "refinement_kept": (provenance.get("refinement") or {}).get("kept"),
                             **judge(rebuilt.eval())})
                if method == starts_method:
                    starts[variant, target] = (rebuilt.eval(), plan, method, rows[-1]["seconds"])
        if options.distill and target in options.distill_targets:
            student, output = work / f"{method}-{target}", work / f"{method}-{target}-distilled"
            amp_hf.save_pruned(sliced, student, plan, processor=processor, overwrite=True)
            seconds = distill(setup["distill_config"], teacher_id, student, output, 1, setup["distill_overrides"])
            rows.append({**common, "variant": "distilled", "seconds": seconds, "final_loss": final_loss(output),
                         **judge(amp_hf.load_model(str(output)).eval())})
        # progress on disk, so a run stopped later still leaves its measured rows (removed once the report has them)
        progress_file.write_text(json.dumps(rows, indent=1, default=str))
        for row in rows[-4:]:
            if row["method"] == method and row["target"] == target:
                log(f"  {method:15s} {target:.0%} {row['variant']:13s}: "
                    + ", ".join(f"{k}={row[k]:.4f}" for k in ("top1", "knn@20", "cosine") if k in row))
    block_extra = {}
    if options.search_cost and ("amp-refit", options.search_cost_target) in plans:
        block_extra["search_cost"] = search_cost(
            model, taylor, batches_of(model, processor, setup["search"]), scoring,
            plans["amp-refit", options.search_cost_target].details["delta_e"], setup["acceptance"], log)
        block_extra["search_cost"]["target"] = options.search_cost_target
    if options.distill_steps:
        block_extra["distill_steps"] = distill_steps(starts, teacher_id, processor, setup, judge, options, work, log)
    return {"model": name, "key": setup["key"], "teacher": judge.teacher, "selection_seconds": selection_seconds,
            **block_extra,
            "distill": {"config": setup["distill_config"], "overrides": setup["distill_overrides"]},
            "data": {k: vars(setup[k]) for k in ("scoring", "search", "eval")} | {"knn_bank": setup["knn_bank"]},
            "measured": sorted([method, target] for method, target in plans), "rows": rows}


def minilm_setup(quick: bool) -> dict:
    def data(split, samples, seed):
        return DataConfig(source="fortunes", split=split, num_samples=samples, batch_size=64, max_length=64, seed=seed)

    return {"key": "minilm", "scoring": data("train", 128 if quick else 512, 0), "search": data("test", 64 if quick else 128, 1),
            "eval": data("test", 200 if quick else 800, 2), "knn_bank": 300 if quick else 2000, "delta_e_upper": 0.1,
            "tolerance": 0.02,  # the budget mode's default (±2 points): each bisection step costs minutes here
            "acceptance": "rise", "distill_steps_method": "amp", "distill_steps_batch": 16,
            "distill_config": "distill_minilm.yaml",
            # one pass over 480 fortunes at batch 16, the same peak lr (5e-4) as the config's batch 32
            "distill_overrides": ["data.num_samples=" + ("96" if quick else "480"), "data.batch_size=16",
                                  "data.max_length=48", "schedule.epochs=1", "optim.base_lr=8.0e-3",
                                  "logging.every_steps=5"]}  # fmt: skip


def vit_setup(quick: bool) -> dict:
    def data(split, samples, seed):
        return DataConfig(source="fashion_mnist", split=split, num_samples=samples, batch_size=128, seed=seed)

    return {"key": "vit", "scoring": data("train", 256 if quick else 2048, 0), "search": data("test", 256 if quick else 1024, 1),
            "eval": data("test", 500 if quick else 5000, 2), "knn_bank": 1000 if quick else 10000, "top1": True,
            "ce": True, "delta_e_upper": 1.0, "tolerance": 0.01, "distill_config": "distill_vit_fashion_mnist.yaml",
            # its entropy falls under pruning: AMP's rise rule cuts whole layers (see the amp rows)
            "acceptance": "change", "distill_steps_method": "amp-change", "distill_steps_batch": 64,
            # half of the config's 12,800 images: a few CPU minutes per method
            "distill_overrides": ["data.num_samples=" + ("512" if quick else "6400")]}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _row(rows, method, target, variant):
    return next((r for r in rows if (r["method"], r["target"], r["variant"]) == (method, target, variant)), None)


def _recovered(teacher: float, sliced: float, better: float) -> str:
    gap = teacher - sliced
    return f"{(better - sliced) / gap:.0%}" if gap > 1e-9 else "no gap"


def model_section(block: dict) -> list[str]:
    rows, teacher = block["rows"], block["teacher"]
    metrics = [k for k in ("top1", "knn@20", "cosine") if k in teacher]
    main = metrics[0]
    targets = sorted({r["target"] for r in rows})
    methods = sorted(dict.fromkeys(r["method"] for r in rows), key=lambda m: METHOD_ORDER.index(m)
                     if m in METHOD_ORDER else len(METHOD_ORDER))
    variants = [v for v in ("sliced", "reconstructed", "reconstructed-residual", "reconstructed-blockwise",
                            "reconstructed-residual-blockwise")
                if any(r["variant"] == v for r in rows)]
    lines = [f"## {block['model']}", "",
             "Unpruned: " + ", ".join(f"{k} {_pct(v)}%" for k, v in teacher.items() if k != "cosine") + ".", ""]
    for variant in variants:
        title = {"sliced": "No fine-tuning, plain slicing", "reconstructed": "No fine-tuning, with reconstruction",
                 "reconstructed-residual": "No fine-tuning, with residual-stream reconstruction "
                                           "(reconstruct.objective=residual)",
                 "reconstructed-blockwise": "No fine-tuning, per-MLP closed form + blockwise Adam refinement "
                                            "(reconstruct.mode=blockwise)",
                 "reconstructed-residual-blockwise": "No fine-tuning, residual objective + blockwise refinement, "
                                                     "fidelity guard (reconstruct.objective=residual, mode=blockwise, "
                                                     "blockwise_guard=fidelity)"}
        lines += [f"### {title[variant]}", "",
                  "| method | " + " | ".join(f"{m} @ {t:.0%}" for t in targets for m in metrics) + " |",
                  "|---|" + "---|" * (len(targets) * len(metrics))]
        for method in methods:
            if not any(_row(rows, method, target, variant) for target in targets):
                continue  # not measured with this variant
            cells = []
            for target in targets:
                row = _row(rows, method, target, variant)
                cells += [_pct(row[m]) if row else "" for m in metrics]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        for amp_method in ("amp", "amp-change", "amp-refit"):
            best = []
            for target in targets:
                amp = _row(rows, amp_method, target, variant)
                rivals = [r for r in rows if r["target"] == target and r["variant"] == variant
                          and not r["method"].startswith("amp")]
                if amp and rivals:
                    top = max(rivals, key=lambda r: r[main])
                    gap = amp[main] - top[main]
                    verdict = ("a tie: within 0.05 points" if abs(gap) < 5e-4 else "beats every baseline" if gap > 0
                               else f"below {top['method']}")
                    if abs(amp["mlp_reduction"] - target) > 0.02:  # budget mode could not meet the target
                        verdict += f"; but it removes {amp['mlp_reduction']:.1%}, not {target:.0%}"
                    best.append(f"{target:.0%}: {_pct(amp[main])} vs best baseline {top['method']} "
                                f"{_pct(top[main])} ({verdict})")
            if best:
                lines.append(f"- {amp_method} on {main}: " + "; ".join(best) + ".")
        lines.append("")
    if "reconstructed" in variants:
        lines += ["### How much of the pruning gap reconstruction recovers", "",
                  f"(reconstructed − sliced) / (unpruned − sliced) on {main}, and on the cosine to the unpruned "
                  "embedding; *refit*: the layers the returned model holds refit (the rest fell back to slicing); "
                  "s: reconstruction wall time.", "",
                  "| method | " + " | ".join(f"{main} @ {t:.0%} | cosine @ {t:.0%} | refit | s" for t in targets) + " |",
                  "|---|" + "---|---|---|---|" * len(targets)]
        for method in methods:
            cells = []
            for target in targets:
                sliced, rebuilt = _row(rows, method, target, "sliced"), _row(rows, method, target, "reconstructed")
                if not (sliced and rebuilt):
                    cells += [""] * 4
                    continue
                refit = ",".join(map(str, rebuilt["refit_layers"])) or "none"
                cells += [_recovered(teacher[main], sliced[main], rebuilt[main]),
                          _recovered(1.0, sliced["cosine"], rebuilt["cosine"]), refit, f"{rebuilt['seconds']:.0f}"]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if "reconstructed-residual" in variants:
        lines += ["### Residual-stream vs per-MLP reconstruction", "",
                  f"{main} and cosine to the unpruned embedding; per-MLP: the *reconstructed* rows (amp-refit: its "
                  "searched model); residual: every residual-stream writer from the first pruned MLP on refit; "
                  "*attention*: the layers whose attention output projection the returned model holds refit.", "",
                  "| method | target | " + f"{main} per-MLP → residual | cosine per-MLP → residual | attention | s |",
                  "|---|---|---|---|---|---|"]
        for method in methods:
            for target in targets:
                mlp, residual = (_row(rows, method, target, v) for v in ("reconstructed", "reconstructed-residual"))
                if not residual:
                    continue
                before = {k: _pct(mlp[k]) if mlp else "—" for k in (main, "cosine")}
                attention = ",".join(map(str, residual.get("attention_refit") or [])) or "none"
                lines.append(f"| {method} | {target:.0%} | {before[main]} → {_pct(residual[main])} | "
                             f"{before['cosine']} → {_pct(residual['cosine'])} | {attention} | {residual['seconds']:.0f} |")
        lines.append("")
    distilled = [r for r in rows if r["variant"] == "distilled"]
    if distilled:
        overrides = " ".join(block["distill"]["overrides"]) or "no overrides"
        lines += ["### After a short distillation", "",
                  f"`amp-hf distill --config configs/{block['distill']['config']}` with `{overrides}`, one process, "
                  "from the sliced checkpoint; the head stays at the teacher's values.", "",
                  "| method | target | " + " | ".join(f"{m} sliced → distilled" for m in metrics)
                  + f" | {main} retention | drop (pts) | s |",
                  "|---|---|" + "---|" * len(metrics) + "---|---|---|"]
        for row in distilled:
            sliced = _row(rows, row["method"], row["target"], "sliced")
            cells = [f"{_pct(sliced[m])} → {_pct(row[m])}" for m in metrics]
            lines.append(f"| {row['method']} | {row['target']:.0%} | " + " | ".join(cells)
                         + f" | {row[main] / teacher[main]:.1%} | {100 * (teacher[main] - row[main]):.1f}"
                         + f" | {row['seconds']:.0f} |")
        lines.append("")
    cost = block.get("search_cost")
    if cost:
        lines += ["### Search cost of search.reconstruct", "",
                  f"One plain and one reconstruction-aware adaptive search at the same ΔE ({cost['delta_e']:.3g}, "
                  f"acceptance {cost['acceptance']}, amp-refit's ΔE at {cost.get('target', 0.4):.0%}) on the same "
                  "batches, run alternately twice in one process (wall seconds; 1-minute load averages "
                  f"{'/'.join(map(str, cost['load_average']))} at the end):", "",
                  "| search | wall s (two runs) | criterion passes | widths |", "|---|---|---|---|"]
        for kind in ("plain", "refit"):
            lines.append(f"| {kind} | {' / '.join(f'{x:.0f}' for x in cost['seconds'][kind])} | "
                         f"{cost['evaluations'][kind]} | {cost['widths'][kind]} |")
        lines += ["", f"Refit / plain wall time: **{cost['ratio']:.2f}×**.", ""]
    steps = block.get("distill_steps")
    if steps:
        lines += ["### Distillation steps to 99% of the unpruned kNN@20", "",
                  f"`amp-hf distill --config configs/{block['distill']['config']}` for S optimiser steps (one epoch "
                  "of S batches, so warmup and decay scale with S) from several starts at one method's widths: its "
                  "plain slice, that slice reconstructed (per-MLP closed form; `-residual`: the residual objective; "
                  "`-blockwise`: the closed form + blockwise refinement), and the amp-refit search's model. kNN@20 "
                  "after S steps:", ""]
        counts = sorted({point["steps"] for entry in steps for point in entry["curve"]})

        def curve_cells(entry, metric):
            by_steps = {point["steps"]: point[metric] for point in entry["curve"]}
            return " | ".join(_pct(by_steps[n]) if n in by_steps else "" for n in counts)

        header = "| start | widths of | target | " + " | ".join(f"S={n}" for n in counts)
        lines += [header + " | steps to 99% |", "|---|---|---|" + "---|" * len(counts) + "---|"]
        for entry in steps:
            reached = entry["steps_to_99"]
            last = max(point["steps"] for point in entry["curve"])
            lines.append(f"| {entry['start']} | {entry.get('method', 'amp')} | {entry['target']:.0%} | "
                         + curve_cells(entry, "knn@20") + f" | {reached if reached is not None else f'> {last}'} |")
        # kNN@20 moves by less than its sampling error here, so the embedding's fidelity tells the starts apart
        lines += ["", "Mean cosine to the unpruned embedding after S steps (the same runs):", "",
                  header + " |", "|---|---|---|" + "---|" * len(counts)]
        for entry in steps:
            lines.append(f"| {entry['start']} | {entry.get('method', 'amp')} | {entry['target']:.0%} | "
                         + curve_cells(entry, "cosine") + " |")
        lines.append("")
        lines += _training_free_vs_distillation(steps)
    lines += ["Achieved MLP-parameter reductions and AMP widths:", ""]
    for row in rows:
        if row["method"].startswith("amp") and row["variant"] == "sliced":
            lines.append(f"- {row['method']}, {row['target']:.0%} target: {row['mlp_reduction']:.1%} removed, "
                         f"widths {row['widths']}")
    lines += ["", "Selection wall times: " + ", ".join(f"{k} {v:.0f} s" for k, v in block["selection_seconds"].items()),
              ""]
    return lines


def _training_free_vs_distillation(steps: list) -> list[str]:
    """For every training-free start with a recovery time (e.g. blockwise refinement): the distillation steps
    (and seconds) from the same widths' plain slice that first reach its fidelity without any fine-tuning."""
    lines = []
    for entry in steps:
        if not entry.get("start_seconds") or entry["start"] == "sliced":
            continue
        sliced = next((e for e in steps if e["start"] == "sliced" and e.get("method") == entry.get("method")
                       and e["target"] == entry["target"]), None)
        if sliced is None:
            continue
        goal = entry["curve"][0]["cosine"]
        match = next((point for point in sliced["curve"] if point["cosine"] >= goal), None)
        last = sliced["curve"][-1]
        reached = (f"reaches it at S={match['steps']} ({match.get('seconds', 0):.0f} s)" if match else
                   f"does not reach it within S={last['steps']} ({last.get('seconds', 0):.0f} s: "
                   f"{_pct(last['cosine'])})")
        lines.append(f"- {entry['start']} at {entry['target']:.0%} ({entry.get('method', 'amp')} widths): cosine "
                     f"{_pct(goal)} in {entry['start_seconds']:.0f} s without fine-tuning; distillation from the plain "
                     f"slice {reached}.")
    if lines:
        lines = ["Training-free recovery against distillation from the plain slice (wall time on the same "
                 "machine):", "", *lines, ""]
    return lines


def markdown(report: dict) -> str:
    lines = ["# Quality benchmarks", "",
             "Every method prunes the same model to the same MLP-parameter reduction. kNN@20: DINOv2-protocol kNN "
             "(T = 0.07, memory bank from the train split) on held-out data; cosine: mean cosine to the unpruned "
             "model's embedding of the same samples; top-1: the model's classifier head. All data is offline "
             "(Debian fortunes, Debian Fashion-MNIST).", "",
             "Numbers are from one seeded run per model; reproduce each with the command under its heading. "
             "Sampling error of an accuracy p on n queries is about √(p(1−p)/n): ±0.4 points for the ViT's "
             "top-1 (n = 5000), ±1.4 points for MiniLM's kNN (n = 800), so differences of a few tenths are "
             "ties.", ""]
    for block in report["models"]:
        lines += model_section(block)
        for run in block.get("runs", [block["run"]]):
            lines += [f"Reproduce: `{run['command']}` — {run['wall_time_s']:.0f} s on {run['machine']} "
                      f"({run['threads']} torch threads; 1-minute load average {run['load_average_at_start']} at "
                      "the start).", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,vit", help="comma list: minilm, vit")
    parser.add_argument("--targets", default=",".join(str(t) for t in TARGETS))
    parser.add_argument("--distill-targets", default=",".join(str(t) for t in DISTILL_TARGETS))
    parser.add_argument("--no-distill", dest="distill", action="store_false", help="skip the distilled rows")
    parser.add_argument("--no-reconstruct", dest="reconstruct", action="store_false",
                        help="skip the reconstructed rows")
    parser.add_argument("--objectives", default="mlp",  # also "blockwise": mode=blockwise after the mlp closed form
                        help="comma list of recipes for the reconstructed rows: mlp, residual (reconstruct.objective), "
                             "blockwise (mlp + reconstruct.mode=blockwise), residual-blockwise (residual + "
                             "blockwise, blockwise_guard=fidelity)")
    parser.add_argument("--widths-from", help="a benchmarks.json whose sliced rows give the widths (no search)")
    parser.add_argument("--quick", action="store_true", help="few samples (smoke run)")
    parser.add_argument("--methods", help="comma list: run only these methods (e.g. amp,amp-refit)")
    parser.add_argument("--search-cost", action="store_true",
                        help="time a plain and a reconstruction-aware adaptive search side by side")
    parser.add_argument("--search-cost-target", type=float, default=0.40,
                        help="the target whose amp-refit ΔE the timed searches use")
    parser.add_argument("--distill-steps", default="",
                        help="comma list of distillation step counts for the steps-to-99%%-kNN rows (e.g. 5,10,20,40)")
    parser.add_argument("--distill-starts-method",
                        help="the method whose sliced / reconstructed models start the distillation-steps runs "
                        "(default: amp for MiniLM, amp-change for the ViT)")
    parser.add_argument("--output", default=str(REPO / "docs" / "benchmarks"))
    parser.add_argument("--update", action="store_true",
                        help="keep the other models' results already in <output>.json (run models separately)")
    parser.add_argument("--render", action="store_true", help="only rewrite <output>.md from <output>.json")
    args = parser.parse_args()
    if args.render:
        output = Path(args.output)
        output.with_suffix(".md").write_text(markdown(json.loads(output.with_suffix(".json").read_text())))
        return
    args.objectives = args.objectives.split(",")
    unknown = [o for o in args.objectives if o not in RECIPES]
    if unknown:
        parser.error(f"--objectives {','.join(unknown)}: choose from {', '.join(RECIPES)}")
    args.distill_targets = [float(t) for t in args.distill_targets.split(",")]
    args.distill_steps = [int(n) for n in args.distill_steps.split(",") if n]
    targets = [float(t) for t in args.targets.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(0)

    def log(message):
        print(message, flush=True)

    names = args.models.split(",")
    unknown = sorted(set(names) - {"minilm", "vit"})
    if unknown:
        sys.exit(f"unknown model(s) {unknown}: use minilm and/or vit")
    blocks = []
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as work:
        for name in names:
            started, load = time.time(), round(os.getloadavg()[0], 1)
            if name == "minilm":
                block = run_model("all-MiniLM-L6-v2 (real pretrained)", "minilm", minilm_setup(args.quick),
                                  targets, args, Path(work), log)
            else:
                from amp_hf.reference import train_reference_vit

                path = str(train_reference_vit("fashion_mnist"))
                block = run_model("Fashion-MNIST ViT (trained by scripts/train_reference_vit.py)", path,
                                  vit_setup(args.quick), targets, args, Path(work), log)
            block["data"] = json.loads(json.dumps(block["data"], default=str))
            block["run"] = {"command": "python scripts/bench_quality.py " + " ".join(sys.argv[1:]),
                            "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}",
                            "threads": torch.get_num_threads(), "load_average_at_start": load,
                            "wall_time_s": round(time.time() - started)}
            blocks.append(block)
    output = Path(args.output)
    if args.update and output.with_suffix(".json").is_file():
        previous = {b["key"]: b for b in json.loads(output.with_suffix(".json").read_text())["models"]}
        if args.methods:  # keep the other methods' rows (and anything this run did not measure) of each model
            for block in blocks:
                old = previous.pop(block["key"], None)
                if old is not None:
                    # the (method, target, variant) rows this run replaces
                    measured = {(r["method"], r["target"], r["variant"]) for r in block["rows"]}
                    block["rows"] = [r for r in old["rows"]
                                     if (r["method"], r["target"], r["variant"]) not in measured] + block["rows"]
                    block["selection_seconds"] = {**old["selection_seconds"], **block["selection_seconds"]}
                    block["runs"] = old.get("runs", [old["run"]]) + [block["run"]]
                    if "search_cost" not in block and "search_cost" in old:
                        block["search_cost"] = old["search_cost"]
                    # the (start, method, target) curves this run replaces; the rest stay
                    new_steps = block.get("distill_steps", [])
                    measured_steps = {_start_key(entry) for entry in new_steps}
                    kept_steps = [e for e in old.get("distill_steps", []) if _start_key(e) not in measured_steps]
                    if kept_steps or new_steps:
                        block["distill_steps"] = kept_steps + new_steps
        kept = [b for key, b in previous.items() if key not in names]
        blocks = sorted(kept + blocks, key=lambda b: ["minilm", "vit"].index(b["key"]))
    report = {"models": blocks}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(report))
    for key in names:  # the report holds every row this run measured now
        Path(f"{args.output}.partial-{key}.json").unlink(missing_ok=True)
    print(markdown(report))


if __name__ == "__main__":
    main()
