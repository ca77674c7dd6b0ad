"""The evaluation tasks of ``amp-hf eval``: how much of its quality a (pruned) model keeps, measured with the papers' protocols.

Tasks (metrics in ``metrics``):
  * ``knn``       DINOv2 kNN classification of the criterion embedding (train split = memory bank);
  * ``zeroshot``  CLIP/SigLIP zero-shot classification with a cached, reusable text classifier;
  * ``retrieval`` CLIP/SigLIP zero-shot image<->text recall@{1,5,10} (any number of captions per image);
  * ``top1``      accuracy of a classifier head (ViTForImageClassification, ...);
  * ``fidelity``  mean cosine to the teacher's embeddings and shared 10-nearest-neighbour fraction.

Every task runs under ``accelerate launch``: each process embeds its shard of the data and features are
gathered (in dataset order, padding dropped) before the metric is computed on the full set.

Rows are ``amp_hf.files.artifacts.EvalResult``; the report they go to is written and read there too.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoint import CheckpointError
from ..data import DataConfig, DataError, load_processor, make_loader, model_inputs, prepare_dataset
from ..families import UnsupportedModelError, get_adapter
from ..files.aliases import EMBEDDED_HUB_IDS, embedded_model_path
from ..files.eval_report import CAPTION_COLUMNS, EvalResult
from ..files.model_reference import is_cached, parse_hub_reference
from ..files.sentence_transformers_format import sentence_embedder
from ..loading import resolve_model_path
from .metrics import (
    KNN_KS,
    KNN_TEMPERATURE,
    NEIGHBOURS,
    RETRIEVAL_KS,
    knn_accuracy,
    mean_cosine,
    neighbour_overlap,
    retrieval_recall,
    topk_accuracy,
    zero_shot_logits,
)
from .zero_shot import (
    DEFAULT_TEMPLATES,
    cached_text_classifier,
    has_text_tower,
    image_features,
    load_text_classifier,
    tokenize,
)

logger = logging.getLogger(__name__)



# -- teacher ------------------------------------------------------------------------------------------


def default_teacher(model: nn.Module) -> str | None:
    """The base model recorded in a pruned checkpoint's provenance (a Hub id), when it is available locally:
    amp-hf's embedded copy, or the Hub cache."""
    provenance = getattr(model.config, "amp_pruning", None) or {}
    base = provenance.get("base_model")
    if not base:
        return None
    if parse_hub_reference(base) is None:  # an alias or a local folder: never a download
        try:
            return base if Path(resolve_model_path(base)).is_dir() else None
        except CheckpointError:  # an embedded alias whose package is not installed
            return None
    aliases = [alias for alias, repo_id in EMBEDDED_HUB_IDS.items() if repo_id == base]
    if aliases and embedded_model_path(aliases[0], required=False):
        return base  # amp-hf's embedded copy of that Hub repo
    revision = provenance.get("base_model_revision")
    reference = f"{base}@{revision}" if revision else base  # the very commit the checkpoint was pruned from
    return reference if is_cached(reference) else None


# -- feature extraction -------------------------------------------------------------------------------


def eval_accelerator(accelerator=None):
    if accelerator is not None:
        return accelerator
    from ..distributed import make_accelerator

    return make_accelerator(split_batches=False)  # data.batch_size is per process here


@torch.no_grad()
def _collect(
    loader: DataLoader, accelerator, forward: Callable[[dict], dict[str, torch.Tensor]], description: str
) -> dict[str, torch.Tensor]:
    """Run ``forward`` over this process's shard and gather its outputs from all processes, in order."""
    loader = accelerator.prepare(loader)
    collected: dict[str, list[torch.Tensor]] = defaultdict(list)
    for batch in tqdm(loader, desc=description, disable=not accelerator.is_local_main_process):
        outputs = {name: value.contiguous() for name, value in forward(batch).items()}
        for name, value in accelerator.gather_for_metrics(outputs).items():
            collected[name].append(value.float().cpu() if value.is_floating_point() else value.cpu())
    return {name: torch.cat(values) for name, values in collected.items()}


def _labelled(dataset, data: DataConfig) -> None:
    if dataset.label_column is None:
        raise DataError(
            f"{data.source!r} split {data.split!r} has no label column: this task needs labels "
            "(name the column with --label-column)"
        )


def _prepare(model: nn.Module, data: DataConfig, processor):
    adapter = get_adapter(model)
    processor = processor if processor is not None else load_processor(model, adapter)
    return adapter, prepare_dataset(data, processor, adapter, model)


def embed_dataset(
    model: nn.Module, data: DataConfig, processor=None, accelerator=None, description: str = "embedding"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Embeddings of every sample of ``data``, with labels when present: a sentence-transformers model's own
    embedding (pooling, Dense, Normalize of its folder), else the criterion embedding (``adapter.embed``)."""
    accelerator = eval_accelerator(accelerator)
    adapter, dataset = _prepare(model, data, processor)
    model.to(accelerator.device)
    embed = sentence_embedder(model, adapter)

    def forward(batch):
        outputs = {"features": embed(model_inputs(batch))}
        if "labels" in batch:
            outputs["labels"] = batch["labels"]
        return outputs

    gathered = _collect(make_loader(dataset, data.batch_size), accelerator, forward, description)
    return gathered["features"], gathered.get("labels")


# -- tasks --------------------------------------------------------------------------------------------


def evaluate_knn(
    model: nn.Module,
    data: DataConfig,
    processor=None,
    train_split: str = "train",
    num_train_samples: int | None = None,
    ks: Sequence[int] = KNN_KS,
    temperature: float = KNN_TEMPERATURE,
    accelerator=None,
) -> list[EvalResult]:
    """kNN top-1 accuracy per k: ``train_split`` embeddings are the memory bank, ``data.split`` the queries."""
    bank_data = replace(data, split=train_split, num_samples=num_train_samples)
    bank, bank_labels = embed_dataset(model, bank_data, processor, accelerator, f"kNN memory bank ({train_split})")
    queries, query_labels = embed_dataset(model, data, processor, accelerator, f"kNN queries ({data.split})")
    if bank_labels is None or query_labels is None:
        raise DataError(f"kNN needs labels in both splits of {data.source!r}: name the column with --label-column")
    accuracy = knn_accuracy(bank, bank_labels, queries, query_labels, ks, temperature)
    details = {"temperature": temperature, "train_split": train_split, "num_train_samples": len(bank)}
    return [
        EvalResult("knn", data.source, data.split, "accuracy", value, k=k, num_samples=len(queries), details=details)
        for k, value in accuracy.items()
    ]


def evaluate_top1(model: nn.Module, data: DataConfig, processor=None, accelerator=None) -> list[EvalResult]:
    """Accuracy of the model's own classifier head (labels must use the model's ``id2label`` ids)."""
    check_tasks(["top1"], model)
    accelerator = eval_accelerator(accelerator)
    _, dataset = _prepare(model, data, processor)
    _labelled(dataset, data)
    model.to(accelerator.device)

    def forward(batch):
        return {"logits": model(**model_inputs(batch)).logits, "labels": batch["labels"]}

    gathered = _collect(make_loader(dataset, data.batch_size), accelerator, forward, f"top-1 ({data.split})")
    if int(gathered["labels"].max()) >= gathered["logits"].shape[1]:
        raise DataError(
            f"labels of {data.source!r} exceed the model's {gathered['logits'].shape[1]} classes: evaluate on the "
            "dataset the head was trained for, or use --task knn"
        )
    accuracy = topk_accuracy(gathered["logits"], gathered["labels"], ks=(1,))[1]
    return [EvalResult("top1", data.source, data.split, "accuracy", accuracy, num_samples=len(gathered["labels"]))]


def evaluate_zero_shot(
    model: nn.Module,
    data: DataConfig,
    processor=None,
    tokenizer=None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    text_model: nn.Module | None = None,
    classifier_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    accelerator=None,
) -> list[EvalResult]:
    """CLIP/SigLIP zero-shot top-1/top-5 accuracy.

    The text classifier comes from ``classifier_path`` when given, else from the text tower of
    ``text_model`` (default: ``model`` itself), cached under ``cache_dir`` and reused on later runs.
    """
    accelerator = eval_accelerator(accelerator)
    _, dataset = _prepare(model, data, processor)
    _labelled(dataset, data)
    if classifier_path is not None:
        classifier, classnames, templates = load_text_classifier(classifier_path)
        source = Path(classifier_path).name
    else:
        classnames = list(classnames) if classnames is not None else _class_names(dataset, data)
        text_model = _text_model(model, text_model)
        tokenizer = tokenizer if tokenizer is not None else _tokenizer(text_model)
        with accelerator.main_process_first():  # the main process builds and caches; the others read the cache
            classifier, cache_file = cached_text_classifier(text_model, tokenizer, classnames, templates, cache_dir)
        source = cache_file.name
    model.to(accelerator.device)

    def forward(batch):
        return {"features": image_features(model, batch["pixel_values"]), "labels": batch["labels"]}

    gathered = _collect(make_loader(dataset, data.batch_size), accelerator, forward, f"zero-shot ({data.split})")
    if int(gathered["labels"].max()) >= len(classnames):
        raise DataError(f"labels of {data.source!r} exceed the {len(classnames)} class names: pass all class names")
    accuracy = topk_accuracy(zero_shot_logits(gathered["features"], classifier), gathered["labels"], ks=(1, 5))
    details = {"num_classes": len(classnames), "num_templates": len(templates), "classifier": source}
    count = len(gathered["labels"])
    return [
        EvalResult("zeroshot", data.source, data.split, f"top{k}", value, num_samples=count, details=details)
        for k, value in accuracy.items()
    ]


def evaluate_retrieval(
    model: nn.Module,
    data: DataConfig,
    processor=None,
    tokenizer=None,
    caption_column: str | None = None,
    text_model: nn.Module | None = None,
    ks: Sequence[int] = RETRIEVAL_KS,
    accelerator=None,
) -> list[EvalResult]:
    """Zero-shot image<->text recall@k; each row holds an image and one caption or a list of captions."""
    accelerator = eval_accelerator(accelerator)
    _, dataset = _prepare(model, data, processor)
    captions, owners = _captions(dataset.dataset, caption_column)
    text_model = _text_model(model, text_model)
    tokenizer = tokenizer if tokenizer is not None else _tokenizer(text_model)
    model.to(accelerator.device)
    text_model.to(accelerator.device)

    images = _collect(
        make_loader(dataset, data.batch_size), accelerator,
        lambda batch: {"features": image_features(model, batch["pixel_values"])}, f"retrieval images ({data.split})",
    )["features"]  # fmt: skip
    text_loader = DataLoader(
        _Captions(captions), batch_size=data.batch_size, collate_fn=lambda rows: tokenize(tokenizer, rows, text_model)
    )
    texts = _collect(
        text_loader, accelerator,
        lambda batch: {"features": text_model.get_text_features(**batch).pooler_output}, "retrieval captions",
    )["features"]  # fmt: skip
    recall = retrieval_recall(images, texts, owners, ks)
    results = []
    for direction, per_k in recall.items():
        count = len(images) if direction == "image_to_text" else len(texts)
        details = {"num_images": len(images), "num_captions": len(texts)}
        results += [
            EvalResult("retrieval", data.source, data.split, f"{direction}_recall", value, k=k, num_samples=count,
                       details=details)
            for k, value in per_k.items()
        ]  # fmt: skip
    return results


def evaluate_fidelity(
    model: nn.Module,
    teacher: nn.Module,
    data: DataConfig,
    processor=None,
    k: int = NEIGHBOURS,
    teacher_name: str | None = None,
    accelerator=None,
) -> list[EvalResult]:
    """How closely the student's embeddings follow the teacher's on the same samples (labels not needed)."""
    accelerator = eval_accelerator(accelerator)
    adapter, dataset = _prepare(model, data, processor)
    teacher_adapter = get_adapter(teacher)
    if teacher_adapter.name != adapter.name:
        raise UnsupportedModelError(
            f"the teacher is a {teacher_adapter.name} model but the student a {adapter.name} one: "
            "pass the model the student was pruned from as --teacher"
        )
    model.to(accelerator.device)
    teacher.to(accelerator.device).eval()
    embed_student, embed_teacher = sentence_embedder(model, adapter), sentence_embedder(teacher, teacher_adapter)

    def forward(batch):
        inputs = model_inputs(batch)
        return {"student": embed_student(inputs), "teacher": embed_teacher(inputs)}

    gathered = _collect(make_loader(dataset, data.batch_size), accelerator, forward, f"fidelity ({data.split})")
    student, reference = gathered["student"], gathered["teacher"]
    overlap, k_used = neighbour_overlap(student, reference, k)
    details = {"teacher": teacher_name or getattr(teacher, "name_or_path", "") or type(teacher).__name__}
    count = len(student)
    return [
        EvalResult("fidelity", data.source, data.split, "mean_cosine", mean_cosine(student, reference),
                   num_samples=count, details=details),
        EvalResult("fidelity", data.source, data.split, "neighbour_overlap", overlap, k=k_used, num_samples=count,
                   details=details),
    ]  # fmt: skip


def check_tasks(tasks: Sequence[str], model: nn.Module, text_model: nn.Module | None = None,
                 has_classifier: bool = False) -> None:  # fmt: skip
    """Fail before any data is embedded when a task cannot run on this model."""
    name = type(model).__name__
    adapter = get_adapter(model)
    if "top1" in tasks and not adapter.has_classifier_head(model):
        raise UnsupportedModelError(f"{name} has no classifier head: use --task knn (or zeroshot for CLIP/SigLIP)")
    image_text = [task for task in tasks if task in ("zeroshot", "retrieval")]
    if image_text and not adapter.image_text:
        raise UnsupportedModelError(
            f"{'/'.join(image_text)} needs a CLIP, SigLIP or open_clip model, not {name}: use --task knn"
        )
    if "retrieval" in tasks or ("zeroshot" in tasks and not has_classifier):
        _text_model(model, text_model)  # raises without a text tower, naming --text-model / --classifier


def _class_names(dataset, data: DataConfig) -> list[str]:
    feature = dataset.dataset.features.get(dataset.label_column)
    names = getattr(feature, "names", None)
    if not names:
        raise DataError(
            f"the label column of {data.source!r} carries no class names: pass them (--classnames FILE, one per line)"
        )
    return list(names)


def _text_model(model: nn.Module, text_model: nn.Module | None) -> nn.Module:
    text_model = text_model if text_model is not None else model
    if not has_text_tower(text_model):
        raise UnsupportedModelError(
            f"{type(text_model).__name__} has no text tower: pass the original CLIP/SigLIP model with --text-model "
            "(pruning leaves its text tower unchanged), or a saved classifier with --classifier"
        )
    return text_model.eval()


def _tokenizer(text_model: nn.Module):
    from transformers import AutoTokenizer

    if hasattr(text_model, "get_processor"):  # open_clip: its own tokenizer, from the stored config
        return text_model.get_processor().tokenizer
    path = getattr(text_model, "name_or_path", "")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        name = path or type(text_model).__name__
        raise DataError(f"no tokenizer found for {name}: save the tokenizer with the model") from error


def _captions(rows, caption_column: str | None) -> tuple[list[str], torch.Tensor]:
    """Flattened captions and, for each, the index of its image."""
    column = caption_column or next((c for c in CAPTION_COLUMNS if c in rows.column_names), None)
    if column is None or column not in rows.column_names:
        raise DataError(
            f"no caption column in the dataset (columns: {', '.join(rows.column_names)}): name it with --caption-column"
        )
    captions, owners = [], []
    for index, value in enumerate(rows[column]):
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise DataError(f"row {index} has no caption in column {column!r}")
        captions += texts
        owners += [index] * len(texts)
    return captions, torch.tensor(owners)


class _Captions(Dataset):
    def __init__(self, captions: list[str]):
        self.captions = captions

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, index):
        return self.captions[index]
