"""The ``data:`` section of every config (what to read, how much, in which batches), without the readers.

``amp_hf.data`` reads the sources; this module imports neither torch nor datasets, so a config with a bad
``data.*`` value is refused before either loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ConfigError

BUILTIN_SOURCES = ("digits", "fashion_mnist", "fortunes")
BUILTIN_SPLITS = {source: ("train", "test") for source in BUILTIN_SOURCES}


@dataclass
class DataConfig:
    source: str = "digits"
    split: str = "train"
    num_samples: int | None = None  # take the first N after a seeded shuffle (None = all)
    batch_size: int = 32  # prune/score/search: the global batch, split across processes; eval, distill: per process
    seed: int = 0
    image_column: str | None = None  # auto: "image" / "img" / "pixel_values"
    text_column: str | None = None  # auto: "text" / "sentence"
    label_column: str | None = None  # auto: "label" / "labels"
    max_length: int = 128  # tokens, for text encoders
    num_workers: int = 0

    def __post_init__(self):
        if isinstance(self.source, str) and self.source.startswith("~"):
            self.source = os.path.expanduser(self.source)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1 (or null for the whole split); got {self.num_samples}")
        if self.max_length < 1:
            raise ConfigError(f"max_length (tokens per text) must be >= 1; got {self.max_length}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0; got {self.num_workers}")
        if self.source in BUILTIN_SPLITS and self.split not in BUILTIN_SPLITS[self.source]:
            raise ConfigError(
                f"split {self.split!r} does not exist in the built-in source {self.source!r}: use one of "
                f"{', '.join(BUILTIN_SPLITS[self.source])}"
            )
