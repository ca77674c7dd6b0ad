#!/usr/bin/env python
"""Benchmark: training-free reconstruction on the real all-MiniLM-L6-v2 (Debian fortunes, offline).

For each selection method (magnitude, AMP Taylor scores) and MLP-neuron removal (uniform widths), compares
plain slicing with reconstruction in sequential and independent mode, with and without the end-to-end
fallback: embedding fidelity (mean cosine to the unpruned model on fortunes ``test``) and kNN category
accuracy (memory bank: fortunes ``train``; queries: ``test``). Calibration uses fortunes ``train`` only.
Writes docs/bench_reconstruct.{json,md}.

    nice python scripts/bench_reconstruct.py [--removals 0.4 0.6] [--methods magnitude amp]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

import amp_hf
from amp_hf.data import DataConfig, load_processor, make_loader, prepare_dataset
from amp_hf.evaluation.metrics import knn_accuracy, mean_cosine
from amp_hf.evaluation.tasks import embed_dataset
from amp_hf.reconstruct import ReconstructConfig, reconstruct
from amp_hf.selection import (
    CriterionConfig,
    build_criterion,
    magnitude_scores,
    taylor_scores,
)

REPO = Path(__file__).resolve().parents[1]
CRITERION = CriterionConfig(name="entropy", temp_inv=15)
# "independent" / "sequential": every layer refit (no end-to-end check); "+check": the default guard rails
# (per-layer reverts and whole-model fallback on the held-out entropy criterion).
VARIANTS = ["sliced", "independent", "sequential", "independent+check", "sequential+check"]


def batches(model, processor, data: DataConfig) -> list[dict]:
    dataset = prepare_dataset(data, processor, amp_hf.get_adapter(model), model)
    return list(make_loader(dataset, data.batch_size, shuffle=True, seed=data.seed, drop_last=True))


def embed(model, processor, eval_data: DataConfig) -> dict:
    """Embeddings (and labels) of the kNN memory bank (train) and the queries (test)."""
    return {split: embed_dataset(model, replace(eval_data, split=split), processor, description=f"embed {split}")
            for split in ("train", "test")}


def quality(embedded: dict, reference: dict) -> dict:
    (bank, bank_labels), (queries, labels) = embedded["train"], embedded["test"]
    knn = knn_accuracy(bank, bank_labels, queries, labels, ks=(10, 20))
    return {"mean_cosine": mean_cosine(queries, reference["test"][0]), "knn10": knn[10], "knn20": knn[20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--removals", type=float, nargs="+", default=[0.4, 0.6], help="MLP-neuron fraction removed")
    parser.add_argument("--methods", nargs="+", default=["magnitude", "amp"], choices=["magnitude", "amp"])
    parser.add_argument("--calibration-samples", type=int, default=512)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--output", default=str(REPO / "docs" / "bench_reconstruct"))
    args = parser.parse_args()
    torch.manual_seed(0)

    teacher = amp_hf.load_model("minilm")
    processor = load_processor(amp_hf.resolve_model_path("minilm"), amp_hf.get_adapter(teacher))
    calibration = DataConfig(source="fortunes", split="train", num_samples=args.calibration_samples,
                             batch_size=64, max_length=64)
    eval_data = DataConfig(source="fortunes", batch_size=64)
    criterion = build_criterion(CRITERION)
    calibration_batches = batches(teacher, processor, calibration)

    reference = embed(teacher, processor, eval_data)
    rows = [{"method": "unpruned", "removal": 0.0, "variant": "-", **quality(reference, reference)}]
    print(rows[-1])
    for method in args.methods:
        if method == "amp":
            scores = taylor_scores(teacher, calibration_batches, criterion).abs
        else:
            scores = magnitude_scores(teacher)
        for removal in args.removals:
            widths = [round((1 - removal) * w) for w in amp_hf.get_adapter(teacher).widths(teacher)]
            plan = amp_hf.PrunePlan.from_scores(scores, widths, method, {"allocation": "uniform"})
            for label in args.variants:
                started = time.perf_counter()
                if label == "sliced":
                    model, report = amp_hf.slice_model(teacher, plan), None
                else:
                    mode, _, check = label.partition("+")
                    config = ReconstructConfig(enabled=True, mode=mode, end_to_end_check=bool(check))
                    model, report = reconstruct(teacher, plan, calibration_batches, config, criterion=criterion)
                seconds = time.perf_counter() - started
                row = {"method": method, "removal": removal, "variant": label, "seconds": round(seconds, 1),
                       **quality(embed(model, processor, eval_data), reference)}
                if report is not None:
                    row.update(kept=report.kept,
                               layers_reconstructed=[r.layer for r in report.layers if r.status == "reconstructed"],
                               damping=[r.damping for r in report.layers],
                               heldout_error_sliced=[round(r.error_sliced, 4) for r in report.layers],
                               heldout_error_reconstructed=[None if r.error_reconstructed is None
                                                            else round(r.error_reconstructed, 4)
                                                            for r in report.layers],
                               criterion=report.criterion, heldout_fidelity=report.fidelity)
                rows.append(row)
                print({k: v for k, v in row.items() if k not in ("damping",)}, flush=True)

    meta = {"model": "all-MiniLM-L6-v2", "calibration": f"fortunes:train, {args.calibration_samples} samples, "
            "batch 64, max_length 64, last 25% of batches held out",
            "eval": "fortunes:test (fidelity, kNN queries), fortunes:train (kNN bank), max_length 128",
            "criterion": "entropy, tau=1/15", "threads": torch.get_num_threads()}
    print(write_report(rows, meta, Path(args.output)))


def recovered(row: dict, sliced: dict, unpruned: dict, metric: str) -> str:
    """Share of the sliced model's gap to the unpruned model that reconstruction closes."""
    gap = unpruned[metric] - sliced[metric]
    return f"{100 * (row[metric] - sliced[metric]) / gap:.0f}%" if gap > 0 else ""


def layers_column(row: dict) -> str:
    if "layers_reconstructed" not in row:
        return ""
    return ",".join(map(str, row["layers_reconstructed"])) if row["kept"] == "reconstructed" else "none (sliced)"


def write_report(rows: list[dict], meta: dict, output: Path) -> str:
    """Write ``output``.json and ``output``.md; return the Markdown table."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    unpruned = rows[0]
    sliced = {(r["method"], r["removal"]): r for r in rows if r["variant"] == "sliced"}
    lines = [("| method | removed | variant | refit layers | mean cosine | kNN@10 | kNN@20 | recovered (cosine / kNN@10) "
              "| held-out entropy (orig / sliced / all refit) | s |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        crit, base = row.get("criterion"), sliced.get((row["method"], row["removal"]))
        entropy = f"{crit['original']:.4f} / {crit['sliced']:.4f} / {crit['all_layers_refit']:.4f}" if crit else ""
        gains = (f"{recovered(row, base, unpruned, 'mean_cosine')} / {recovered(row, base, unpruned, 'knn10')}"
                 if crit and base else "")
        lines.append(f"| {row['method']} | {row['removal']:.0%} | {row['variant']} | {layers_column(row)} | "
                     f"{row['mean_cosine']:.4f} | {100 * row['knn10']:.1f} | {100 * row['knn20']:.1f} | {gains} | "
                     f"{entropy} | {row.get('seconds', '')} |")
    table = "\n".join(lines)
    output.with_suffix(".md").write_text(
        "# Training-free reconstruction on all-MiniLM-L6-v2\n\n"
        "Reproduce: `nice python scripts/bench_reconstruct.py`. Uniform widths; *independent* / *sequential* refit every "
        "layer, *+check* adds the default end-to-end guard rails (per-layer reverts, whole-model fallback on the "
        "held-out entropy criterion); *refit layers*: the layers the returned model holds refit.\n\n"
        f"{table}\n\n```\n{json.dumps(meta, indent=1)}\n```\n"
    )
    return table

if __name__ == "__main__":
    main()
