"""The run folder: resolved config, accelerate checkpoints (written atomically) and what resuming needs.

Layout of ``<run_dir>``::

    run_config.yaml          the resolved config of the run (a resumed run must match it)
    metrics.jsonl            one JSON object per logged step
    tensorboard/             when TensorBoard is installed
    checkpoints/step_00000500/   accelerator.save_state: model, optimiser, RNG states, progress
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import yaml

from ..errors import CheckpointError, ConfigError
from ..files.model_reference import check_model_reference
from ..files.outputs import disk_full_error, prepare_output
from .config import DistillConfig, config_fingerprint

RUN_CONFIG = "run_config.yaml"
CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step_"
_STEP_NAME = re.compile(rf"{STEP_PREFIX}\d+")


class TrainingProgress:
    """Optimiser steps done, saved with every checkpoint (``accelerator.register_for_checkpointing``).

    The data position, learning rate and weight decay all derive from the step, so it is the only
    progress state; the process count is kept to refuse resuming with a different global batch.
    """

    def __init__(self, num_processes: int):
        self.step = 0
        self.num_processes = num_processes

    def state_dict(self) -> dict:
        return {"step": self.step, "num_processes": self.num_processes}

    def load_state_dict(self, state: dict) -> None:
        if state["num_processes"] != self.num_processes:
            raise ConfigError(
                f"the checkpoint was written by {state['num_processes']} processes but this run has "
                f"{self.num_processes}: resume with `accelerate launch --num_processes {state['num_processes']}` "
                "(the global batch, and so the data order, depends on it)"
            )
        self.step = int(state["step"])


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in ``run_dir`` (partial ones are hidden dot-folders), ascending."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    # anything else there (a hand-made step_latest link, a copy) is not one of our checkpoints
    steps = [int(p.name[len(STEP_PREFIX):]) for p in folder.iterdir() if _STEP_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(steps)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"{STEP_PREFIX}{step:08d}"


def check_run_folders(config: DistillConfig, resume: bool) -> tuple[Path, Path | None]:
    """The output folder (checked: new, or amp-hf's with ``overwrite``) and the checkpoint to resume from
    (None: a fresh run). Needs no model, so the command line calls it before torch loads; the trainer again."""
    check_model_reference(config.teacher, "teacher")
    check_model_reference(config.student, "student")
    output = prepare_output(config.output, overwrite=config.overwrite, flag="overwrite=true",
                            inputs=[config.teacher, config.student, config.data.source, config.run_path])
    return output, resume_checkpoint(config, resume)


def resume_checkpoint(config: DistillConfig, resume: bool) -> Path | None:
    """Check the run folder against ``--resume``; return the checkpoint to continue from (None = fresh run)."""
    run_dir = config.run_path
    steps = checkpoint_steps(run_dir)
    if not resume:
        if steps:
            raise FileExistsError(
                f"{run_dir} holds checkpoints of an earlier run (last step {steps[-1]}): pass --resume to continue "
                "it, or delete that folder / set run_dir=... to start over"
            )
        return None
    if not steps:
        raise FileNotFoundError(f"nothing to resume: no checkpoint under {run_dir / CHECKPOINTS}; start without --resume")
    if not (run_dir / RUN_CONFIG).is_file():
        raise ConfigError(f"{run_dir / RUN_CONFIG} is missing, so the run cannot be checked before resuming: restore it")
    try:
        saved = yaml.safe_load((run_dir / RUN_CONFIG).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        saved = error
    if not isinstance(saved, dict):
        raise ConfigError(
            f"{run_dir / RUN_CONFIG} is damaged (not the YAML amp-hf wrote), so the run cannot be checked before "
            f"resuming: restore it, or start over without --resume after moving {run_dir} away"
        )
    current = config_fingerprint(config)
    changed = sorted(_differences(saved, current))
    if changed:
        raise ConfigError(
            f"the config differs from the run being resumed in {', '.join(changed)}: resume with the original "
            f"values (see {run_dir / RUN_CONFIG}) or start a new run with another run_dir"
        )
    return checkpoint_path(run_dir, steps[-1])


def load_run_checkpoint(accelerator, run_dir: Path, checkpoint: Path) -> None:
    """``accelerator.load_state``; a damaged checkpoint is a ``CheckpointError`` naming it and the way out."""
    try:
        accelerator.load_state(str(checkpoint))
    except ConfigError:
        raise
    except Exception as error:  # torch/safetensors/pickle errors of every kind: the files do not load
        earlier = [step for step in checkpoint_steps(run_dir) if checkpoint_path(run_dir, step) != checkpoint]
        way_out = (f"delete it to resume from step {earlier[-1]}" if earlier
                   else f"start over without --resume after moving {run_dir} away")  # fmt: skip
        raise CheckpointError(
            f"cannot resume from {checkpoint}: the checkpoint is damaged ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else 'unreadable'}); {way_out}"
        ) from error


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = set(saved) | set(current)
    found = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def write_run_config(config: DistillConfig) -> None:
    config.run_path.mkdir(parents=True, exist_ok=True)
    (config.run_path / RUN_CONFIG).write_text(yaml.safe_dump(config_fingerprint(config), sort_keys=False))


def save_checkpoint(accelerator, run_dir: Path, step: int, keep_last: int) -> Path:
    """``accelerator.save_state`` into a hidden staging folder, renamed into place once every process has
    written its part: an interrupted save never looks like a checkpoint. Keeps the newest ``keep_last``."""
    final = checkpoint_path(run_dir, step)
    staging = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(staging))
    except BaseException as error:  # an unfinished checkpoint is never left behind, whatever stopped it
        full = disk_full_error(error, staging)  # judged before the cleanup frees the space again
        shutil.rmtree(staging, ignore_errors=True)
        if full is not None:  # named by the checkpoint being written, not the staging folder just removed
            raise OSError(full.errno, full.strerror, str(final)) from error
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in checkpoint_steps(run_dir)[:-keep_last]:
            shutil.rmtree(checkpoint_path(run_dir, old), ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
