"""The distillation loop on 🤗 Accelerate: one code path for CPU, one GPU, DDP, FSDP and DeepSpeed.

Distribution, mixed precision and sharding come from accelerate's own config (``accelerate launch
--config_file configs/accelerate/fsdp.yaml -m amp_hf distill ...``); nothing here depends on which.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .._version import __version__
from ..checkpoint import save_pruned
from ..data import DataError, model_inputs, prepare_dataset
from ..distributed import make_accelerator
from ..files.config_utils import ConfigError
from ..files.outputs import check_free_space
from ..files.provenance import hub_reference, portable, portable_reference
from ..files.sentence_transformers_format import check_carried_files
from ..loading import load_model, resolve_model_path
from .augment import AugmentedImages, ImageAugmentation
from .config import DistillConfig
from .features import FeatureModel, split_features
from .losses import distillation_losses
from .metrics import MetricsLog
from .pairing import DistillPair, has_classifier, load_pair, select_trainable
from .run_state import TrainingProgress, check_run_folders, load_run_checkpoint, save_checkpoint, write_run_config
from .schedule import Schedule, build_optimizer, build_schedule

logger = logging.getLogger(__name__)


def build_training_dataset(config: DistillConfig, pair: DistillPair):
    """Unlabelled training samples: augmented images, or tokenised text (teacher and student share each batch)."""
    source = prepare_dataset(config.data, pair.processor, pair.adapter, model=pair.student)
    if pair.adapter.modality == "text" or config.augment.kind == "none":
        return source
    backbone_config = pair.adapter.backbone(pair.student).config
    augmentation = ImageAugmentation.for_model(pair.processor, backbone_config, config.augment)
    return AugmentedImages(source, augmentation, seed=config.seed)


def distill_accelerator(config: DistillConfig):
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, is_tensorboard_available

    run_dir = config.run_path
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # accelerate logs every file it saves at INFO
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    return make_accelerator(
        split_batches=False,  # data.batch_size is per process here (see DistillConfig.data)
        data_seed=config.seed,
        # Sync every N micro-batches, never early at an epoch end: each optimiser step sees the same number
        # of samples, so the step alone locates a resumed run in the data.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=config.optim.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        log_with="tensorboard" if config.logging.tensorboard and is_tensorboard_available() else None,
    )


def run_distillation(config: DistillConfig, resume: bool = False) -> Path | None:
    """Distil ``config.student`` from ``config.teacher``; write the result to ``config.output``.

    Returns the output folder, or None when the run stopped at ``schedule.stop_after`` (continue it with
    ``resume=True``). Bad teacher/student pairs, an existing output or a mismatched resume fail before
    any training step.
    """
    from accelerate.utils import set_seed

    output, resume_from = check_run_folders(config, resume)
    check_carried_files(resolve_model_path(config.student))  # its sentence-transformers modules are copied into the output
    pair = load_checked_pair(config)
    check_free_space(output.parent, _weights_bytes(pair.student.state_dict()), "the distilled checkpoint")
    set_seed(config.seed)
    accelerator = distill_accelerator(config)
    if accelerator.is_main_process and resume_from is None:
        write_run_config(config)
    loop = build_loop(config, pair, accelerator, resume_from)
    finished = loop.run()
    if finished:
        state_dict = accelerator.get_state_dict(loop.student)  # gathered in full on the main process (FSDP)
        if accelerator.is_main_process:
            _save_distilled(pair, state_dict, config, _recipe(config, loop))
        accelerator.wait_for_everyone()
    accelerator.end_training()
    return output if finished else None


def load_checked_pair(config: DistillConfig) -> DistillPair:
    """Teacher and student, validated against each other and the losses, with the untrainable part frozen."""
    pair = load_pair(config.teacher, config.student)
    if config.loss.logits and not has_classifier(pair.student):
        raise ConfigError(
            f"loss.logits needs a classification head, but the student is a {type(pair.student).__name__}: "
            "set loss.logits=0"
        )
    select_trainable(pair, freeze_head=config.freeze_head, train_logits=not config.freeze_head)
    return pair


def build_loop(config: DistillConfig, pair: DistillPair, accelerator, resume_from: Path | None) -> DistillationLoop:
    """Data, models and optimiser prepared by accelerate, restored from ``resume_from`` when given."""
    dataset = build_training_dataset(config, pair)
    loader = DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=dataset.collate,
        num_workers=config.data.num_workers,
    )
    with_logits = config.loss.logits > 0
    student = FeatureModel(pair.student, pair.adapter, with_logits=with_logits)
    student.train(config.student_dropout)
    teacher = FeatureModel(pair.teacher, pair.adapter, with_logits=with_logits).eval().requires_grad_(False)
    optimizer = build_optimizer(student, config.optim)
    student, optimizer, loader = accelerator.prepare(student, optimizer, loader)
    teacher.to(accelerator.device)

    accumulation = config.optim.gradient_accumulation_steps
    steps_per_epoch = len(loader) // accumulation
    global_batch = config.data.batch_size * accelerator.num_processes * accumulation
    if steps_per_epoch == 0:
        raise DataError(
            f"{len(dataset)} training samples are fewer than one global batch ({global_batch} = batch_size × "
            "processes × gradient_accumulation_steps): lower data.batch_size or use more data"
        )
    progress = TrainingProgress(accelerator.num_processes)
    accelerator.register_for_checkpointing(progress)
    if resume_from is not None:
        load_run_checkpoint(accelerator, config.run_path, resume_from)
        if accelerator.is_main_process:
            logger.info("resumed from %s (step %d)", resume_from, progress.step)
    accelerator.init_trackers("distill")
    return DistillationLoop(
        config=config,
        accelerator=accelerator,
        student=student,
        teacher=teacher,
        optimizer=optimizer,
        loader=loader,
        schedule=build_schedule(config.optim, config.schedule, steps_per_epoch, global_batch),
        progress=progress,
        metrics=MetricsLog(config.run_path, accelerator, resumed_step=progress.step if resume_from else None),
        steps_per_epoch=steps_per_epoch,
        global_batch=global_batch,
        summary=pair.adapter.summary,
    )


@dataclass
class DistillationLoop:
    """Optimiser steps from ``progress.step`` on; every position (data, lr, wd) derives from the step."""

    config: DistillConfig
    accelerator: Any
    student: Any  # the prepared FeatureModel
    teacher: FeatureModel
    optimizer: Any
    loader: Any
    schedule: Schedule
    progress: TrainingProgress
    metrics: MetricsLog
    steps_per_epoch: int
    global_batch: int
    summary: str  # the family's summary token (FamilyAdapter.summary)
    # The current logging window: loss sums, optimiser steps and samples since the last log line.
    _loss_sums: dict[str, torch.Tensor] = field(init=False, default_factory=dict)
    _steps: int = field(init=False, default=0)
    _samples: int = field(init=False, default=0)
    _window_start: float = field(init=False, default_factory=time.perf_counter)
    _bar: Any = field(init=False, default=None)

    def run(self) -> bool:
        """Train to the end (True) or to ``schedule.stop_after`` (False, after a checkpoint)."""
        total = self.schedule.total_steps
        stop_at = min(self.config.schedule.stop_after or total, total)
        self._bar = tqdm(
            total=total,
            initial=self.progress.step,
            desc="distill",
            unit="step",
            disable=not self.accelerator.is_main_process,
        )
        self._reset_window()
        try:
            while self.progress.step < stop_at:
                for batch in self._epoch_batches():
                    if not self._micro_step(model_inputs(batch)):
                        continue  # still accumulating
                    self.progress.step += 1
                    self._bar.update(1)
                    self._after_step(stop_at)
                    if self.progress.step == stop_at:
                        break
        finally:  # ends the bar's line, so an error is printed on a line of its own
            self._bar.close()
        return self.progress.step >= total

    def _epoch_batches(self):
        """The rest of the current epoch's micro-batches, skipping those already trained on."""
        accumulation = self.config.optim.gradient_accumulation_steps
        epoch, step_in_epoch = divmod(self.progress.step, self.steps_per_epoch)
        skip = step_in_epoch * accumulation
        loader = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
        loader.set_epoch(epoch)  # seeds this epoch's shuffle and augmentations
        # Micro-batches beyond the last whole optimiser step of the epoch are dropped.
        return itertools.islice(loader, (self.steps_per_epoch - step_in_epoch) * accumulation)

    def _micro_step(self, inputs: dict) -> bool:
        """Forward/backward one micro-batch; step the optimiser at the accumulation boundary (-> True)."""
        accelerator = self.accelerator
        with accelerator.accumulate(self.student):
            with torch.no_grad(), accelerator.autocast():
                teacher_features = split_features(self.teacher(**inputs), inputs, self.summary)
            student_features = split_features(self.student(**inputs), inputs, self.summary)
            losses = distillation_losses(student_features, teacher_features, self.config.loss)
            accelerator.backward(losses["total"])
            if accelerator.sync_gradients:
                if self.config.optim.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(self.student.parameters(), self.config.optim.max_grad_norm)
                self.schedule.apply(self.optimizer, self.progress.step)
            self.optimizer.step()  # accelerate skips these until the accumulation boundary
            self.optimizer.zero_grad()
        accumulation = self.config.optim.gradient_accumulation_steps
        for name, value in losses.items():
            self._loss_sums[name] = self._loss_sums.get(name, 0.0) + value.detach().float() / accumulation
        self._samples += next(iter(inputs.values())).shape[0] * accelerator.num_processes
        return accelerator.sync_gradients

    def _after_step(self, stop_at: int) -> None:
        step, every = self.progress.step, self.config.logging.every_steps
        self._steps += 1
        if step % every == 0 or step == stop_at:
            self._log(step)
        elif not self._bar.disable:
            # Between log lines the bar shows this process's running mean of the window, so it moves every step.
            running = self._loss_sums["total"] / self._steps
            self._bar.set_postfix(loss=f"{float(running):.4g}", refresh=False)
        if step == self.schedule.total_steps:
            return  # the final model is written next; a checkpoint would only repeat it
        if step % self.config.checkpointing.every_steps == 0 or step == stop_at:
            save_checkpoint(self.accelerator, self.config.run_path, step, self.config.checkpointing.keep_last)

    def _log(self, step: int) -> None:
        names = sorted(self._loss_sums)
        sums = torch.stack([torch.as_tensor(self._loss_sums[n], device=self.accelerator.device) for n in names])
        means = (self.accelerator.reduce(sums, reduction="mean") / self._steps).tolist()
        values = {f"loss/{name}": value for name, value in zip(names, means)}
        values.update(
            lr=self.schedule.lr(step - 1),
            weight_decay=self.schedule.wd(step - 1),
            epoch=step / self.steps_per_epoch,
            samples_per_second=self._samples / (time.perf_counter() - self._window_start),
        )
        self.metrics.log(step, values)
        self._bar.set_postfix(loss=f"{values['loss/total']:.4g}")
        self._reset_window()

    def _reset_window(self) -> None:
        self._loss_sums = {}
        self._steps, self._samples, self._window_start = 0, 0, time.perf_counter()


def _recipe(config: DistillConfig, loop: DistillationLoop) -> dict:
    """What goes into ``config.amp_pruning["distillation"]`` of the output."""
    schedule = loop.schedule
    teacher_id, _ = hub_reference(config.teacher)
    return {  # may be pushed with the checkpoint: no local paths (provenance.portable, applied by the caller)
        "teacher": teacher_id or portable_reference(config.teacher, config.output),
        "student": portable_reference(config.student, config.output),
        "loss": dataclasses.asdict(config.loss),
        "freeze_head": config.freeze_head,
        "data": {
            "source": config.data.source,
            "split": config.data.split,
            "num_samples": config.data.num_samples,
            "augment": dataclasses.asdict(config.augment),
        },
        "optimizer": {
            "name": "AdamW",
            "betas": list(config.optim.betas),
            "peak_lr": schedule.peak_lr,
            "min_lr": schedule.min_lr,
            "weight_decay": [schedule.weight_decay, schedule.weight_decay_end],
            "max_grad_norm": config.optim.max_grad_norm,
        },
        "steps": schedule.total_steps,
        "warmup_steps": schedule.warmup_steps,
        "epochs": schedule.total_steps / loop.steps_per_epoch,
        "global_batch_size": loop.global_batch,
        "processes": loop.accelerator.num_processes,
        # how accelerate ran it (NO / MULTI_GPU / FSDP / ...) and what it wrapped the student in: FSDP engaged
        # only if the wrapper is FSDP's (FullyShardedDataParallel, or FSDP2's FSDP<Module> class)
        "distributed_type": str(loop.accelerator.distributed_type.value),
        "student_wrapper": type(loop.student).__name__,
        "mixed_precision": loop.accelerator.mixed_precision,
        "seed": config.seed,
        "amp_hf_version": __version__,
    }


def _weights_bytes(state_dict: dict) -> int:
    """About what model.safetensors of these weights takes on disk (the rest of a checkpoint is small)."""
    return sum(t.numel() * t.element_size() for t in state_dict.values() if isinstance(t, torch.Tensor))


def _save_distilled(pair: DistillPair, state_dict: dict, config: DistillConfig, recipe: dict) -> Path:
    """Write the trained weights as a pruned checkpoint (atomic), with the recipe in ``amp_pruning``."""
    check_free_space(Path(config.output).expanduser().parent, _weights_bytes(state_dict), "the distilled checkpoint",
                     keep=f" (the checkpoints in {config.run_path} are kept: after freeing space, --resume continues "
                     "from the last one)")
    model = load_model(config.student)  # a clean copy in the checkpoint's dtype, outside any wrapper
    model.load_state_dict({name.removeprefix("model."): value for name, value in state_dict.items()})
    model.config.amp_pruning = {**(model.config.amp_pruning or {}), "distillation": portable(recipe, config.output)}
    return save_pruned(model, config.output, plan=pair.plan, processor=pair.processor, overwrite=config.overwrite)
