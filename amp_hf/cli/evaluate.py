"""``amp-hf eval``: run the evaluation tasks on a checkpoint and write (or update) its report."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError
from ..files.artifacts import EVAL_REPORT_FILE
from ..files.eval_report import CAPTION_COLUMNS, TASKS, EvalResult, read_report, write_report
from ..files.model_reference import check_model_reference
from ..files.outputs import expand, prepare_output
from .options import MODEL_REFERENCE, positive_int


def format_results(results: Sequence[EvalResult]) -> str:
    lines = [f"{'task':<10} {'dataset':<16} {'split':<6} {'metric':<24} {'k':>4} {'value':>8}"]
    for r in results:
        dataset = r.dataset if len(r.dataset) <= 16 else "…" + r.dataset[-15:]
        lines.append(f"{r.task:<10} {dataset:<16} {r.split:<6} {r.metric:<24} {r.k or '':>4} {r.value:>8.4f}")
    return "\n".join(lines)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: kNN, zero-shot, retrieval, top-1, fidelity to the teacher",
        description="Evaluate a (pruned) checkpoint and write a JSON report (default: eval_report.json in the "
        "checkpoint folder, which `amp-hf card` reads). Runs under `accelerate launch` as well.",
    )
    parser.add_argument("checkpoint", help=f"the model, pruned or stock: {MODEL_REFERENCE}")
    parser.add_argument("--task", nargs="+", choices=TASKS, default=["knn"], help="one or more tasks (default: knn)")
    parser.add_argument("--data", help="data source: digits, fashion_mnist, fortunes, an image folder, a "
                        "save_to_disk folder, a data file or a cached dataset name (default: digits for image "
                        "models, fortunes for text models; retrieval needs one with captions)")  # fmt: skip
    parser.add_argument("--split", default="test", help="split to evaluate (kNN queries), default: test")
    parser.add_argument("--train-split", default="train", help="kNN memory-bank split (default: train)")
    parser.add_argument("--num-samples", type=positive_int, help="evaluate a seeded random subset of this size")
    parser.add_argument("--num-train-samples", type=positive_int, help="kNN memory-bank subset size (default: whole split)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset selection")
    parser.add_argument("--teacher", help="fidelity: the unpruned model (default: base_model in the provenance)")
    parser.add_argument("--text-model", help="zeroshot/retrieval: model whose text tower to use (default: the "
                        "checkpoint itself; needed for vision-only CLIP checkpoints)")  # fmt: skip
    parser.add_argument("--classnames", help="zeroshot: file with one class name per line, in label order")
    parser.add_argument("--templates", help="zeroshot: file with one prompt template per line, e.g. 'a photo of a {}.'")
    parser.add_argument("--classifier", help="zeroshot: a saved text classifier (.safetensors) to use as is")
    parser.add_argument("--classifier-cache", help="zeroshot: text-classifier cache folder (default: amp-hf cache)")
    parser.add_argument("--image-column", help="image column (default: image/img/pixel_values)")
    parser.add_argument("--text-column", help="text column for text encoders (default: text/sentence/content)")
    parser.add_argument("--label-column", help="label column (default: label/labels)")
    parser.add_argument("--caption-column", help=f"retrieval caption column (default: {'/'.join(CAPTION_COLUMNS)})")
    parser.add_argument("--output", help=f"report path (default: <checkpoint>/{EVAL_REPORT_FILE})")
    parser.set_defaults(func=run_eval)


def _report_path(args) -> Path:
    """Where the report goes, checked before anything is evaluated: a new file, or an existing amp-hf
    evaluation report (merged), in a writable folder; never any other existing file."""
    if args.output:
        path = expand(args.output)
    else:
        folder = expand(args.checkpoint)
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise UsageError(f"cannot write {EVAL_REPORT_FILE} into {args.checkpoint} (not a writable folder): pass --output PATH")
        path = folder / EVAL_REPORT_FILE
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder: pass a file path, e.g. {path / EVAL_REPORT_FILE}")
    if path.exists():
        try:
            read_report(path)
        except (OSError, ValueError) as error:
            raise UsageError(
                f"{path} exists and is not an amp-hf evaluation report (only a report is ever updated): pass "
                "another --output"
            ) from error
    else:
        prepare_output(path, overwrite=False, inputs=[args.checkpoint])  # parent: a writable folder, or creatable
    return path


def _lines(path: str | None) -> list[str] | None:
    if path is None:
        return None
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line]


def run_eval(args) -> int:
    check_model_reference(args.checkpoint)  # fail before any model is loaded, and before torch is imported
    report_path = _report_path(args)
    if "retrieval" in args.task and not args.data:
        raise UsageError("retrieval needs a dataset with images and captions: pass --data SOURCE")
    check_model_reference(args.teacher, "teacher")
    check_model_reference(args.text_model, "text model")
    # torch and transformers load here, after the arguments were checked
    from ..data import DataConfig, load_processor
    from ..evaluation.tasks import (
        check_tasks,
        default_teacher,
        eval_accelerator,
        evaluate_fidelity,
        evaluate_knn,
        evaluate_retrieval,
        evaluate_top1,
        evaluate_zero_shot,
    )
    from ..evaluation.zero_shot import DEFAULT_TEMPLATES, load_text_classifier
    from ..families import get_adapter
    from ..loading import load_model, resolve_model_path

    try:
        templates = _lines(args.templates) or list(DEFAULT_TEMPLATES)
        if args.classifier:
            load_text_classifier(args.classifier)  # validate now rather than after the other tasks ran
    except ValueError as error:
        raise UsageError(str(error)) from error

    accelerator = eval_accelerator()
    model = load_model(args.checkpoint)
    adapter = get_adapter(model)
    data = DataConfig(
        source=args.data or ("fortunes" if adapter.modality == "text" else "digits"),
        split=args.split,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        image_column=args.image_column,
        text_column=args.text_column,
        label_column=args.label_column,
    )
    processor = load_processor(resolve_model_path(args.checkpoint), adapter)
    text_model = load_model(args.text_model) if args.text_model else None
    check_tasks(args.task, model, text_model, has_classifier=bool(args.classifier))
    results: list[EvalResult] = []
    for task in args.task:
        if task == "knn":
            results += evaluate_knn(model, data, processor, args.train_split, args.num_train_samples,
                                    accelerator=accelerator)  # fmt: skip
        elif task == "top1":
            results += evaluate_top1(model, data, processor, accelerator=accelerator)
        elif task == "zeroshot":
            results += evaluate_zero_shot(
                model, data, processor, classnames=_lines(args.classnames), templates=templates,
                text_model=text_model, classifier_path=args.classifier, cache_dir=args.classifier_cache,
                accelerator=accelerator,
            )  # fmt: skip
        elif task == "retrieval":
            results += evaluate_retrieval(model, data, processor, caption_column=args.caption_column,
                                          text_model=text_model, accelerator=accelerator)  # fmt: skip
        elif task == "fidelity":
            teacher_path = args.teacher or default_teacher(model)
            if teacher_path is None:
                raise UsageError("fidelity needs the unpruned model: pass --teacher PATH")
            results += evaluate_fidelity(model, load_model(teacher_path), data, processor,
                                         teacher_name=teacher_path, accelerator=accelerator)  # fmt: skip
    if accelerator.is_main_process:
        write_report(results, report_path, model=str(args.checkpoint))
        print(format_results(results))
        print(f"report: {report_path}")
    accelerator.wait_for_everyone()
    return 0
