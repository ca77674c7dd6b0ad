"""Accelerate set-up shared by every multi-process command."""

from __future__ import annotations

import torch


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
    return Accelerator(dataloader_config=loader_config, **kwargs)
