"""Data for scoring, searching, distilling and evaluating, through 🤗 datasets.

A ``source`` is one of:
  * a built-in offline source: ``digits`` (scikit-learn, always available), ``fashion_mnist`` (Debian
    package ``dataset-fashion-mnist``), ``fortunes`` (Debian ``fortunes``: categorised text for sentence
    encoders);
  * an image folder (``path/to/folder``; class sub-folders become labels);
  * a saved dataset (``save_to_disk`` folder) or a dataset name / data files ``datasets.load_dataset`` reads
    from its local cache (nothing here downloads unless the user's own datasets setup does).
Rows are normalised to an ``image`` or ``text`` column plus an optional integer ``label``.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .data_config import BUILTIN_SOURCES, BUILTIN_SPLITS, DataConfig  # noqa: F401 (amp_hf.data.DataConfig)
from .errors import DataError
from .families import ADAPTERS

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# Fortune categories with enough entries of a distinct style for a kNN probe of a sentence encoder.
FORTUNES_CATEGORIES = ["computers", "food", "love", "medicine", "science", "sports", "politics", "literature"]


# -- sources ------------------------------------------------------------------------------------------


def _digits(split: str):
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.RandomState(0).permutation(len(images))
    cut = int(0.8 * len(order))  # fixed 80/20 split: "train" / "test"
    index = order[:cut] if split == "train" else order[cut:]
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(images[i]) for i in index], "label": digits.target[index].tolist()},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
        ),
    )


def fashion_mnist_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.is_file():
        raise DataError(
            f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: install it with "
            "`apt-get install dataset-fashion-mnist` (scripts/setup.sh does this when run as root)"
        )
    with gzip.open(images_path) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def _fashion_mnist(split: str):
    import datasets
    from PIL import Image

    images, labels = fashion_mnist_arrays(split)
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(x) for x in images], "label": labels.tolist()},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)}
        ),
    )


def read_fortunes(categories=FORTUNES_CATEGORIES, max_chars: int = 400) -> tuple[list[str], list[int], list[str]]:
    texts, labels, names = [], [], []
    for category in categories:
        path = FORTUNES_DIR / category
        if not path.is_file():
            continue
        entries = [e.strip() for e in path.read_text(errors="replace").split("\n%\n")]
        entries = [" ".join(e.split()) for e in entries if 20 <= len(e) <= max_chars]
        if not entries:
            continue
        names.append(category)
        texts.extend(entries)
        labels.extend([len(names) - 1] * len(entries))
    if len(names) < 2:
        raise DataError(
            f"Debian fortunes not found under {FORTUNES_DIR}: install them with `apt-get install fortunes` "
            "(scripts/setup.sh does this when run as root)"
        )
    return texts, labels, names


def _fortunes(split: str):
    import datasets

    texts, labels, names = read_fortunes()
    order = np.random.RandomState(0).permutation(len(texts))
    cut = int(0.7 * len(order))  # fixed 70/30 split
    index = order[:cut] if split == "train" else order[cut:]
    return datasets.Dataset.from_dict(
        {"text": [texts[i] for i in index], "label": [labels[i] for i in index]},
        features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}),
    )


_BUILTINS = {"digits": _digits, "fashion_mnist": _fashion_mnist, "fortunes": _fortunes}


def load_source(source: str, split: str = "train"):
    """A ``datasets.Dataset`` for ``source`` (see the module docstring)."""
    import datasets

    if source in _BUILTINS:
        return _BUILTINS[source](split)
    path = Path(source)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict) and split not in loaded:
                raise DataError(f"split {split!r} does not exist in {source}: use one of {', '.join(loaded)}")
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
        except (ValueError, FileNotFoundError) as error:  # no images, or none under a folder named for the split
            raise DataError(
                f"cannot read {source} as an image folder with a {split!r} split ({' '.join(str(error).split())}): "
                "pass a folder of <label>/<image> files (or <split>/<label>/<image>), or a dataset saved with "
                "save_to_disk"
            ) from error
    if path.suffix in (".csv", ".json", ".jsonl", ".parquet", ".txt") and path.is_file():
        kind = {".jsonl": "json", ".txt": "text"}.get(path.suffix, path.suffix[1:])
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as error:  # datasets raises many types; all mean "this source cannot be read here"
        raise DataError(
            f"cannot load data source {source!r} ({type(error).__name__}: {error}). Use a built-in source "
            f"({', '.join(BUILTIN_SOURCES)}), an image folder, a save_to_disk folder, or a dataset already in "
            "your local datasets cache"
        ) from error


def _pick(columns, explicit, candidates, what):
    if explicit:
        if explicit not in columns:
            raise DataError(f"{what} column {explicit!r} not in the dataset (columns: {', '.join(columns)})")
        return explicit
    return next((c for c in candidates if c in columns), None)


# -- preprocessing ------------------------------------------------------------------------------------


def load_processor(model_or_path, adapter=None):
    """The model's own image processor / tokenizer; for checkpoints without one, a default from config."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from .files.model_reference import resolve_model_path

    if hasattr(model_or_path, "get_processor"):  # models that carry their own preprocessing
        return model_or_path.get_processor()
    path = model_or_path if isinstance(model_or_path, (str, Path)) else getattr(model_or_path, "name_or_path", "")
    path = resolve_model_path(str(path)) if path else path
    modality = adapter.modality if adapter is not None else None
    family = next((family for family in ADAPTERS.values() if path and family.stores_processor(path)), None)
    if family is not None:  # a family's own preprocessing files
        return family.folder_processor(path)
    if path and Path(path).is_dir():
        loader = AutoTokenizer if modality == "text" else AutoImageProcessor
        try:
            with _quiet_backend_fallback():
                return loader.from_pretrained(str(path))
        except (OSError, ValueError):
            pass
    if modality == "text":
        raise DataError(f"no tokenizer found in {path!r}: save the tokenizer with the checkpoint")
    if isinstance(model_or_path, (str, Path)):
        raise DataError(f"no image processor found in {path!r}")
    return default_image_processor(adapter.backbone(model_or_path).config)


class _BackendFallbackFilter(logging.Filter):
    # transformers 5 warns when an image processor falls back from its torchvision backend to its PIL one
    # (torchvision missing, or a processor registered for PIL only, as timm's is): a fact of the environment the
    # user did not ask about, printed on every load. Other warnings pass.
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("backend is not available. Falling back to" in message
                    or "requires torchvision (not installed); falling back to" in message)


_BACKEND_LOGGERS = ("transformers.models.auto.image_processing_auto", "transformers.utils.import_utils")


@contextlib.contextmanager
def _quiet_backend_fallback():
    quiet = _BackendFallbackFilter()
    loggers = [logging.getLogger(name) for name in _BACKEND_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def default_image_processor(config):
    from transformers import ViTImageProcessor

    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    return ViTImageProcessor(size={"height": size, "width": size}, do_resize=True, do_normalize=True)


class ProcessedDataset(Dataset):
    """Applies the model's deterministic eval preprocessing row by row (images or text)."""

    def __init__(self, dataset, processor, modality: str, config: DataConfig, num_channels: int = 3):
        columns = dataset.column_names
        self.dataset = dataset
        self.processor = processor
        self.modality = modality
        self.num_channels = num_channels
        self.max_length = config.max_length
        if modality == "image":
            self.input_column = _pick(columns, config.image_column, ("image", "img", "pixel_values"), "image")
        else:
            self.input_column = _pick(columns, config.text_column, ("text", "sentence", "content"), "text")
        if self.input_column is None:
            raise DataError(
                f"no {modality} column in the dataset (columns: {', '.join(columns)}): set "
                f"data.{modality}_column"
            )
        self.label_column = _pick(columns, config.label_column, ("label", "labels"), "label")

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            row = self.dataset[int(index)]
            if self.modality == "image":
                row[self.input_column].load()  # decode now, so a damaged file is named here
        except (OSError, ValueError, SyntaxError) as error:  # what PIL raises for files it cannot decode
            if self.modality != "image":
                raise
            raise DataError(
                f"cannot read image {self._origin(int(index))} ({type(error).__name__}: {error}): remove or "
                "replace the file"
            ) from error
        item = {"input": row[self.input_column]}
        if self.label_column is not None:
            item["label"] = int(row[self.label_column])
        return item

    def _origin(self, index: int) -> str:
        """The file (or row) an image came from, read without decoding it."""
        import datasets

        try:
            raw = self.dataset.cast_column(self.input_column, datasets.Image(decode=False))[index][self.input_column]
            return str(raw.get("path") or f"row {index}")
        except Exception:  # the row cannot even be described: fall back to its position
            return f"row {index}"

    def collate(self, rows: list[dict]) -> dict:
        inputs = [r["input"] for r in rows]
        if self.modality == "image":
            mode = "RGB" if self.num_channels == 3 else "L"
            images = [im.convert(mode) for im in inputs]
            batch = dict(self.processor(images=images, return_tensors="pt"))
            batch = {"pixel_values": batch["pixel_values"]}
        else:
            encoded = self.processor(
                inputs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            batch = {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([r["label"] for r in rows])
        return batch


def prepare_dataset(config: DataConfig, processor, adapter, model=None):
    dataset = load_source(config.source, config.split)
    if len(dataset) == 0:
        raise DataError(f"data source {config.source!r} split {config.split!r} is empty")
    if config.num_samples is not None:
        dataset = dataset.shuffle(seed=config.seed).select(range(min(config.num_samples, len(dataset))))
    channels = adapter.backbone(model).config.num_channels if (model is not None and adapter.modality == "image") else 3
    return ProcessedDataset(dataset, processor, adapter.modality, config, num_channels=channels)


def make_loader(dataset: ProcessedDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
        collate_fn=dataset.collate, num_workers=num_workers,
    )


def model_inputs(batch: dict) -> dict:
    """The batch without labels, i.e. what the model's forward takes."""
    return {k: v for k, v in batch.items() if k != "labels"}
