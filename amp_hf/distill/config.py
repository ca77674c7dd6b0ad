"""The ``amp-hf distill`` configuration: YAML (``configs/distill_*.yaml``) plus dotted overrides. No torch here:
the command line checks a config before the training code loads.

Defaults follow AMP's released distillation recipe (arXiv 2603.08100, its distill configs): MSE on the CLS and patch tokens of the last
block's pre-final-norm output, AdamW with betas (0.9, 0.95), lr scaled by global batch / 256, linear warmup
then cosine to ``min_lr``, weight decay on a cosine from 0.04 to 0.2, head frozen at the teacher's values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..data_config import DataConfig


@dataclass
class LossConfig:
    """Weights of the loss terms (a weight of 0 switches a term off)."""

    cls: float = 1.0  # MSE on the summary token: CLS (token 0), or the token mean for SigLIP (no CLS)
    tokens: float = 1.0  # MSE on the other tokens: patches, or the attention-masked text tokens
    entropy: float = 0.0  # symmetric KL between in-batch similarity softmaxes (AMP's `loss: entropy`)
    temp_inv: float = 15.0  # inverse temperature of those softmaxes
    logits: float = 0.0  # KL between classifier-head logits (models with a classification head only)
    logit_temperature: float = 1.0

    def __post_init__(self):
        weights = {"cls": self.cls, "tokens": self.tokens, "entropy": self.entropy, "logits": self.logits}
        if any(w < 0 for w in weights.values()):
            raise ValueError("loss weights must be >= 0")
        if not any(weights.values()):
            raise ValueError("every loss weight is 0: set at least one of cls, tokens, entropy, logits")
        if self.temp_inv <= 0 or self.logit_temperature <= 0:
            raise ValueError("temp_inv and logit_temperature must be > 0")


@dataclass
class OptimConfig:
    base_lr: float = 2e-5  # peak lr for a global batch of 256; scaled linearly with the real global batch
    min_lr: float = 1e-7
    weight_decay: float = 0.04  # start of the cosine weight-decay schedule (biases and norms get none)
    weight_decay_end: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    max_grad_norm: float | None = None  # clip the global gradient norm (off by default, as in AMP)
    gradient_accumulation_steps: int = 1

    def __post_init__(self):
        if len(self.betas) != 2:
            raise ValueError("betas must be a list of two numbers, e.g. [0.9, 0.95]")
        if self.base_lr <= 0 or self.min_lr < 0:
            raise ValueError("base_lr must be > 0 and min_lr >= 0")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")


@dataclass
class ScheduleConfig:
    """Length of the run in optimiser steps (one step = global batch of samples)."""

    epochs: int = 1
    max_steps: int | None = None  # overrides epochs when set
    warmup_epochs: float = 0.1
    warmup_steps: int | None = None  # overrides warmup_epochs when set
    stop_after: int | None = None  # checkpoint and exit after this step (time-limited jobs; resume later)

    def __post_init__(self):
        if self.epochs < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("epochs and max_steps must be >= 1")
        if self.warmup_epochs < 0 or (self.warmup_steps is not None and self.warmup_steps < 0):
            raise ValueError("warmup_epochs and warmup_steps must be >= 0")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError("stop_after must be >= 1")


@dataclass
class AugmentConfig:
    """Training augmentations for image models (text models always use plain tokenisation)."""

    kind: Literal["crop_flip", "dino", "none"] = "crop_flip"  # none = the processor's eval preprocessing
    min_scale: float | None = None  # RandomResizedCrop's smallest area fraction: default 0.2, DINO-style 0.05
    flip: bool = True

    def __post_init__(self):
        if self.min_scale is not None and not 0 < self.min_scale <= 1:
            raise ValueError("min_scale must be in (0, 1]")

    @property
    def crop_scale(self) -> tuple[float, float]:
        default = 0.05 if self.kind == "dino" else 0.2
        return (self.min_scale if self.min_scale is not None else default, 1.0)


@dataclass
class CheckpointConfig:
    every_steps: int = 500  # accelerate state (model, optimiser, RNG, progress) every N optimiser steps
    keep_last: int = 2

    def __post_init__(self):
        if self.every_steps < 1 or self.keep_last < 1:
            raise ValueError("every_steps and keep_last must be >= 1")


@dataclass
class LoggingConfig:
    every_steps: int = 10  # metrics to <run_dir>/metrics.jsonl (and TensorBoard when installed)
    tensorboard: bool = True

    def __post_init__(self):
        if self.every_steps < 1:
            raise ValueError("every_steps must be >= 1")


@dataclass
class DistillConfig:
    teacher: str = ""  # the unpruned model: a folder, a Hub id (downloaded once) or an alias
    student: str = ""  # the pruned checkpoint (amp-hf format) to recover
    output: str = ""  # where the distilled pruned checkpoint is written (atomically)
    run_dir: str | None = None  # checkpoints and metrics; default: <output>.run
    overwrite: bool = False  # replace an existing output folder
    freeze_head: bool = True  # copy everything after the last block (final norm, pooler, projection,
    # classifier, CLIP/SigLIP text tower) from the teacher and keep it frozen, as AMP does
    student_dropout: bool = False  # False: the student runs without dropout / drop-path, like its teacher
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)  # data.batch_size is per process
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self):
        for key in ("teacher", "student", "output"):
            if not getattr(self, key):
                raise ValueError(f"{key} is required: set it in the YAML file or add {key}=PATH to the command")
            setattr(self, key, os.path.expanduser(getattr(self, key)))
        if self.run_dir:
            self.run_dir = os.path.expanduser(self.run_dir)
        if not self.freeze_head and self.loss.logits == 0:
            raise ValueError(
                "freeze_head: false only trains the head through the logit loss: set loss.logits > 0, "
                "or keep freeze_head: true"
            )

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(f"{self.output}.run")


# Keys that may change when a run is resumed (they do not affect the weights of the final model).
RESUMABLE_CHANGES = ("schedule.stop_after", "logging", "checkpointing", "overwrite", "data.num_workers")


def config_fingerprint(config: DistillConfig) -> dict:
    """The config as a dict without the keys a resumed run may change."""
    values = dataclasses.asdict(config)
    for dotted in RESUMABLE_CHANGES:
        *parents, leaf = dotted.split(".")
        node = values
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    return values
