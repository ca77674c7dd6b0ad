"""Reference vision teachers: small ``ViTForImageClassification`` models trained offline, once, and cached.

No pretrained vision transformer can be downloaded here, so amp-hf trains its own teachers on data that
ships with the machine: Debian's Fashion-MNIST (the benchmark / demo teacher, minutes on 2 CPU cores) and
scikit-learn's digits (a seconds-long variant for tests). Each is a standard transformers folder (model +
image processor) plus ``reference.json`` holding the recipe and the measured test accuracy.

Training is seeded (weights, batch order); the accuracy can differ in the last digit across machines
because CPU kernels may sum in a different order with a different thread count.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ._version import __version__
from .checkpoint import atomic_directory
from .data import FASHION_MNIST_CLASSES, fashion_mnist_arrays, load_source
from .files.artifacts import REFERENCE_RECORD_FILE
from .files.cache import cache_root

logger = logging.getLogger(__name__)

REFERENCE_DATASETS = ("digits", "fashion_mnist")


@dataclass(frozen=True)
class ReferenceRecipe:
    """Architecture and training schedule of one reference ViT (MLP ratio 4, no dropout)."""

    dataset: str
    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_fraction: float
    seed: int = 0


RECIPES: dict[str, ReferenceRecipe] = {
    "digits": ReferenceRecipe(
        dataset="digits", image_size=8, patch_size=2, hidden_size=32, num_layers=2, num_heads=4,
        epochs=30, batch_size=64, learning_rate=2e-3, weight_decay=0.05, warmup_fraction=0.05,
    ),
    "fashion_mnist": ReferenceRecipe(
        dataset="fashion_mnist", image_size=28, patch_size=7, hidden_size=96, num_layers=4, num_heads=4,
        epochs=14, batch_size=128, learning_rate=2e-3, weight_decay=0.05, warmup_fraction=0.05,
    ),
}  # fmt: skip
# Both models train on one thread by default: their ops are too small for intra-op parallelism to pay for
# the thread synchronisation, which collapses (10-20x slower, measured) when other jobs share the cores.
DEFAULT_THREADS = 1


def reference_path(dataset: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the reference model for ``dataset`` lives (``<cache>/reference/<dataset>_vit``)."""
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "reference"
    return root / f"{dataset}_vit"


def read_record(path: str | os.PathLike) -> dict:
    """The ``reference.json`` of a trained reference model (recipe, test accuracy, training time)."""
    return json.loads((Path(path) / REFERENCE_RECORD_FILE).read_text())


def train_reference_vit(
    dataset: str = "digits",
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    num_threads: int | None = None,
) -> Path:
    """Train (or return the cached) reference ViT for ``dataset``; returns its ``from_pretrained`` folder.

    A cached model is reused when it was trained with the current recipe, unless ``force``.
    ``num_threads``: torch threads while training (default 1; more only pays off on otherwise idle cores).
    """
    if dataset not in RECIPES:
        raise ValueError(f"unknown reference dataset {dataset!r}: choose one of {', '.join(REFERENCE_DATASETS)}")
    recipe = RECIPES[dataset]
    target = reference_path(dataset, cache_dir)
    if not force and _is_current(target, recipe):
        return target
    train_images, train_labels, class_names = _arrays(dataset, "train")
    test_images, test_labels, _ = _arrays(dataset, "test")
    mean, std = _pixel_statistics(train_images)

    threads = num_threads or DEFAULT_THREADS
    with _torch_threads(threads):
        started, started_cpu = time.perf_counter(), time.process_time()
        model = _build_model(recipe, class_names)
        train_pixels, train_targets = _normalise(train_images, mean, std), torch.as_tensor(train_labels)
        _fit(model, train_pixels, train_targets, recipe, progress)
        train_seconds = time.perf_counter() - started
        # CPU time (all threads) as well: wall time alone says little on a machine shared with other jobs.
        train_cpu_seconds = time.process_time() - started_cpu
        accuracy = _accuracy(model, _normalise(test_images, mean, std), torch.as_tensor(test_labels))

    record = {
        "dataset": dataset,
        "test_accuracy": accuracy,
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "num_train": len(train_labels),
        "num_test": len(test_labels),
        "torch_threads": threads,
        "recipe": asdict(recipe),
        "pixel_mean": mean,
        "pixel_std": std,
        "versions": {"amp_hf": __version__, "torch": torch.__version__},
    }
    try:
        with atomic_directory(target, overwrite=True) as staging:
            model.save_pretrained(staging)
            _image_processor(recipe, mean, std).save_pretrained(staging)
            (staging / REFERENCE_RECORD_FILE).write_text(json.dumps(record, indent=2))
    except OSError:
        # Another process finished the same model first (the final rename found a full folder): use theirs.
        if not _is_current(target, recipe):
            raise
    logger.info("reference ViT (%s): test accuracy %.4f, %.0f s -> %s", dataset, accuracy, train_seconds, target)
    return target


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- data ---------------------------------------------------------------------------------------------


def _arrays(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 images (N, H, W), int labels (N,), class names; digits uses amp-hf's fixed 80/20 split."""
    if dataset == "fashion_mnist":
        images, labels = fashion_mnist_arrays(split)
        return images, labels.astype(np.int64), list(FASHION_MNIST_CLASSES)
    rows = load_source("digits", split)
    images = np.stack([np.asarray(image, dtype=np.uint8) for image in rows["image"]])
    return images, np.asarray(rows["label"], dtype=np.int64), rows.features["label"].names


def _pixel_statistics(images: np.ndarray) -> tuple[float, float]:
    scaled = images.astype(np.float64) / 255.0
    return round(float(scaled.mean()), 4), round(float(scaled.std()), 4)


def _normalise(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """What the saved image processor does to a grayscale image (rescale to [0, 1], then normalise)."""
    pixels = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    return (pixels - mean) / std


def _image_processor(recipe: ReferenceRecipe, mean: float, std: float):
    from transformers import ViTImageProcessor

    size = {"height": recipe.image_size, "width": recipe.image_size}
    return ViTImageProcessor(size=size, do_resize=True, do_normalize=True, image_mean=[mean], image_std=[std])


# -- model and training -------------------------------------------------------------------------------


def _build_model(recipe: ReferenceRecipe, class_names: list[str]):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        num_channels=1,
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        intermediate_size=4 * recipe.hidden_size,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: index for index, name in enumerate(class_names)},
    )
    torch.manual_seed(recipe.seed)
    return ViTForImageClassification(config)


def _fit(model, pixels: torch.Tensor, labels: torch.Tensor, recipe: ReferenceRecipe, progress: bool) -> None:
    from transformers import get_cosine_schedule_with_warmup

    steps_per_epoch = -(-len(labels) // recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, int(recipe.warmup_fraction * total_steps), total_steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    with tqdm(total=total_steps, desc=f"training reference ViT ({recipe.dataset})", disable=not progress) as bar:
        for _ in range(recipe.epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(labels), recipe.batch_size):
                index = order[start : start + recipe.batch_size]
                loss = model(pixel_values=pixels[index], labels=labels[index]).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()


@torch.no_grad()
def _accuracy(model, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(pixel_values=pixels[start : start + batch_size]).logits
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def _is_current(path: Path, recipe: ReferenceRecipe) -> bool:
    try:
        return read_record(path)["recipe"] == asdict(recipe) and (path / "config.json").is_file()
    except (OSError, ValueError, KeyError):
        return False
