"""Accelerate set-up shared by every multi-process command."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

logger = logging.getLogger(__name__)

# `accelerate launch` without --multi_gpu (e.g. --cpu --num_processes 2) runs the script in ONE process unless
# MPI starts the others (--mpirun_hostfile). That launcher exports no variable holding the process count it was
# given, but it alone sets ACCELERATE_USE_CPU, and it sets MASTER_ADDR only when asked for more than one process
# or machine (accelerate 1.16, utils/launch.py: prepare_simple_launcher_cmd_env). A MASTER_ADDR exported by the
# user also counts; the world size decides whether the others did start (MPI, torchrun).
_SIMPLE_LAUNCHER = "ACCELERATE_USE_CPU"
_ASKED_FOR_MORE = "MASTER_ADDR"
MULTI_PROCESS_HINT = (
    "amp-hf: warning: `accelerate launch` was asked for more than one process, but only this one runs (its "
    "--cpu / single-device launcher starts one): for N CPU processes use `accelerate launch --multi_gpu "
    "--num_processes N ...` (gloo on a machine without GPUs)"
)
_warned = False


def launcher_asked_for_more(world_size: int, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether accelerate's single-process launcher was asked for several processes but ``world_size`` is 1."""
    return world_size == 1 and _SIMPLE_LAUNCHER in environ and _ASKED_FOR_MORE in environ


def warn_if_fewer_processes(accelerator) -> None:
    """One line on stderr (the main process, once per run) when the launcher started fewer processes than asked."""
    global _warned
    if not _warned and accelerator.is_main_process and launcher_asked_for_more(accelerator.num_processes):
        _warned = True
        logger.warning(MULTI_PROCESS_HINT)


def make_accelerator(split_batches: bool = True, data_seed: int | None = None, **kwargs):
    """The one ``Accelerator`` factory: runs the same on 1 GPU, N GPUs, or N gloo CPU processes.

    ``split_batches=True`` makes a config's batch size the *global* batch (each process gets a slice), so
    results do not depend on the process count. accelerate 1.15 ignores ``Accelerator(split_batches=...)``;
    the ``DataLoaderConfiguration`` form works. ``data_seed``: seedable samplers, so a resumed run finds its
    place in the data. ``cpu=True`` on machines without an accelerator device is what turns
    ``accelerate launch --multi_gpu`` into gloo CPU processes instead of N independent single-process runs.
    Other keyword arguments go to ``Accelerator``.
    """
    from accelerate import Accelerator, DataLoaderConfiguration

    kwargs.setdefault("cpu", not torch.accelerator.is_available())
    loader_config = DataLoaderConfiguration(
        split_batches=split_batches, use_seedable_sampler=data_seed is not None, data_seed=data_seed
    )
    accelerator = Accelerator(dataloader_config=loader_config, **kwargs)
    warn_if_fewer_processes(accelerator)
    return accelerator
