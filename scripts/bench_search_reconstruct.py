#!/usr/bin/env python
"""Benchmark: wall time of the reconstruction-aware AMP search (search.reconstruct) vs the plain adaptive
search, side by side in one run on the real all-MiniLM-L6-v2 (issue 17 goal: <= 1.5x).

Same model, scores, search batches and ΔE; the refit's statistics come from the calibration batches (the
scoring data, as `amp-hf prune` does). The searches alternate (plain, refit, plain, refit, ... --repeats
times) so load drift hits both alike. As `amp-hf prune` does when the scoring batches are the calibration
batches, the refit search's Gram statistics come from the Taylor scoring pass (`--grams own-pass`: from the
search's own pass of the original model instead); that pass's extra cost is timed as scoring with and without
the collection, alternately too. Writes docs/bench_search_reconstruct.{json,md}.

    nice python scripts/bench_search_reconstruct.py [--search-samples 128] [--calibration-samples 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import amp_hf
from amp_hf.data import DataConfig, load_processor, make_loader, prepare_dataset
from amp_hf.reconstruct import ReconstructConfig, SearchRefit
from amp_hf.reconstruct.layers import ProjectionGramCollector, split_heldout
from amp_hf.selection import CriterionConfig, CriterionEvaluator, adaptive_search, build_criterion, taylor_scores

REPO = Path(__file__).resolve().parents[1]


def batches(model, processor, split: str, samples: int, seed: int) -> list[dict]:
    data = DataConfig(source="fortunes", split=split, num_samples=samples, batch_size=64, max_length=64, seed=seed)
    return list(make_loader(prepare_dataset(data, processor, amp_hf.get_adapter(model), model), 64, drop_last=True))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search-samples", type=int, default=128)
    parser.add_argument("--calibration-samples", type=int, default=512)
    parser.add_argument("--delta-e", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--grams", choices=("scoring", "own-pass"), default="scoring",
                        help="where the refit search's Gram statistics come from")
    parser.add_argument("--output", default=str(REPO / "docs" / "bench_search_reconstruct"))
    args = parser.parse_args()
    load = [round(x, 1) for x in os.getloadavg()]
    model = amp_hf.load_model("minilm").eval()
    processor = load_processor("minilm", amp_hf.get_adapter(model))
    criterion = build_criterion(CriterionConfig(name="entropy", temp_inv=15))
    calibration = batches(model, processor, "train", args.calibration_samples, 0)
    search = batches(model, processor, "test", args.search_samples, 1)
    config = ReconstructConfig(enabled=True)
    fit, heldout = split_heldout(calibration, config.heldout_fraction)
    scoring_seconds = {"plain": [], "collecting": []}
    for kind in ["plain", "collecting"] * args.repeats:  # what collecting the statistics adds to scoring
        collector = ProjectionGramCollector(model, [True] * len(fit) + [False] * len(heldout))
        started = time.perf_counter()
        scores = taylor_scores(model, calibration, criterion, on_activations=collector if kind == "collecting" else None).abs
        scoring_seconds[kind].append(round(time.perf_counter() - started, 1))
        if kind == "collecting":
            grams = collector.grams()
    seconds, cpu_seconds, runs, loads = {"plain": [], "refit": []}, {"plain": [], "refit": []}, {}, []
    for kind in ["plain", "refit"] * args.repeats:
        evaluator = CriterionEvaluator(model, criterion, search)
        refit = SearchRefit(model, evaluator, config, batches=calibration,
                            grams=grams if args.grams == "scoring" else None) if kind == "refit" else None
        loads.append(round(os.getloadavg()[0], 1))
        started, cpu = time.perf_counter(), time.process_time()
        result = adaptive_search(model, scores, evaluator, args.delta_e, progress=False, refit=refit)
        seconds[kind].append(round(time.perf_counter() - started, 1))
        cpu_seconds[kind].append(round(time.process_time() - cpu, 1))
        runs[kind] = {"widths": result.widths, "evaluations": result.evaluations, "final_entropy": result.final_entropy,
                      "reference_entropy": result.reference_entropy,
                      "refit_layers": sorted(result.projections)}
        print(f"{kind}: {seconds[kind][-1]} s ({cpu_seconds[kind][-1]} s CPU, load {loads[-1]}), "
              f"{result.evaluations} criterion passes, widths {result.widths}", flush=True)
    ratio = (sum(seconds["refit"]) / len(seconds["refit"])) / (sum(seconds["plain"]) / len(seconds["plain"]))
    # each refit search over the plain search run just before it: load drift between pairs cancels
    pairs = [round(r / p, 3) for p, r in zip(seconds["plain"], seconds["refit"])]
    # CPU seconds of this process: less sensitive than wall time to other jobs on a shared machine
    cpu_pairs = [round(r / p, 3) for p, r in zip(cpu_seconds["plain"], cpu_seconds["refit"])]
    report = {"model": "all-MiniLM-L6-v2", "delta_e": args.delta_e, "search_samples": args.search_samples,
              "calibration_samples": args.calibration_samples, "seconds": seconds, "runs": runs,
              "grams": args.grams, "scoring_seconds": scoring_seconds,
              "ratio": round(ratio, 3), "pair_ratios": pairs, "cpu_seconds": cpu_seconds, "cpu_pair_ratios": cpu_pairs,
              "load_average": {"start": load, "runs": loads, "end": [round(x, 1) for x in os.getloadavg()]},
              "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                         f"{torch.get_num_threads()} torch threads"}
    output = Path(args.output)
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Reconstruction-aware search: wall time vs the plain adaptive search", "",
             f"all-MiniLM-L6-v2, ΔE {args.delta_e}, {args.search_samples} search samples (fortunes test), refit "
             f"statistics from {args.calibration_samples} calibration samples (fortunes train); one process, "
             f"{report['machine']}; 1-minute load average {load[0]} at the start, {report['load_average']['end'][0]} "
             f"at the end (a shared machine: what counts is the ratio of searches run in turn in one process, plain "
             f"first, {args.repeats} time(s) each).", "",
             "Refit statistics: " + ("collected by the Taylor scoring pass (as `amp-hf prune` does when the scoring "
                                     "batches are the calibration batches)" if args.grams == "scoring" else
                                     "one pass of the original model inside the refit search") + ".", "",
             "| search | wall s | CPU s | criterion passes | widths | refit layers |", "|---|---|---|---|---|---|"]
    for kind in ("plain", "refit"):
        lines.append(f"| {kind} | {' / '.join(map(str, seconds[kind]))} | {' / '.join(map(str, cpu_seconds[kind]))} | "
                     f"{runs[kind]['evaluations']} | "
                     f"{runs[kind]['widths']} | {runs[kind]['refit_layers'] or ''} |")
    lines += ["", f"refit / plain wall time: **{ratio:.2f}x** (goal <= 1.5x); pair by pair (each refit search over "
              f"the plain one run just before it) {', '.join(f'{p:.2f}' for p in pairs)}, i.e. "
              f"{min(pairs):.2f}-{max(pairs):.2f}x; in CPU seconds {', '.join(f'{p:.2f}' for p in cpu_pairs)}. "
              f"1-minute load average at the start of each search: {loads}. Final criterion (reference "
              f"{runs['plain']['reference_entropy']:.4g}): plain {runs['plain']['final_entropy']:.4g}, refit "
              f"{runs['refit']['final_entropy']:.4g}.", "",
              f"Taylor scoring of the {args.calibration_samples} calibration samples, alternately without and with "
              f"collecting the statistics: {' / '.join(map(str, scoring_seconds['plain']))} s vs "
              f"{' / '.join(map(str, scoring_seconds['collecting']))} s; scoring + search, plain vs refit: "
              f"{_mean(scoring_seconds['plain']) + _mean(seconds['plain']):.1f} s vs "
              f"{_mean(scoring_seconds['collecting' if args.grams == 'scoring' else 'plain']) + _mean(seconds['refit']):.1f} s.",
              "",
              f"Reproduce: `python scripts/bench_search_reconstruct.py --search-samples {args.search_samples} "
              f"--calibration-samples {args.calibration_samples} --delta-e {args.delta_e} --repeats {args.repeats}"
              + ("" if args.grams == "scoring" else " --grams own-pass") + "`", ""]
    output.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
