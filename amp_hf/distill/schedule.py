"""Optimiser and schedules of the AMP / DGMR distillation recipe.

The learning rate and weight decay are pure functions of the optimiser step (DINO's ``cosine_scheduler``):
a resumed run only needs the step to continue on the same curve, so there is no scheduler state to save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import OptimConfig, ScheduleConfig

REFERENCE_BATCH = 256  # lr = base_lr * global_batch / 256


def cosine(start: float, end: float, progress: float) -> float:
    """Cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


@dataclass(frozen=True)
class Schedule:
    total_steps: int
    warmup_steps: int
    peak_lr: float
    min_lr: float
    weight_decay: float
    weight_decay_end: float

    def lr(self, step: int) -> float:
        """Linear warmup from 0 to ``peak_lr`` over ``warmup_steps``, then cosine down to ``min_lr``."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        decay_steps = max(self.total_steps - self.warmup_steps - 1, 1)
        return cosine(self.peak_lr, self.min_lr, (step - self.warmup_steps) / decay_steps)

    def wd(self, step: int) -> float:
        """Cosine from ``weight_decay`` to ``weight_decay_end`` over the whole run."""
        return cosine(self.weight_decay, self.weight_decay_end, step / max(self.total_steps - 1, 1))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set every group's lr, and weight decay on the groups that decay (biases and norms stay at 0)."""
        lr, wd = self.lr(step), self.wd(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
            if group.get("decay", True):
                group["weight_decay"] = wd


def build_schedule(
    optim: OptimConfig, schedule: ScheduleConfig, steps_per_epoch: int, global_batch: int
) -> Schedule:
    total = schedule.max_steps if schedule.max_steps is not None else schedule.epochs * steps_per_epoch
    warmup = schedule.warmup_steps
    if warmup is None:
        warmup = round(schedule.warmup_epochs * steps_per_epoch)
    return Schedule(
        total_steps=total,
        warmup_steps=min(warmup, total),
        peak_lr=optim.base_lr * global_batch / REFERENCE_BATCH,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        weight_decay_end=optim.weight_decay_end,
    )


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, biases and norm weights (1-D) do not."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "decay": False},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=optim.base_lr, betas=tuple(optim.betas), eps=optim.eps
    )
