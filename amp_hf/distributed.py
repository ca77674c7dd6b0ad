"""Accelerate set-up shared by every multi-process command."""

from __future__ import annotations

import torch


def make_accelerator(split_batches: bool = True, **kwargs):
    """An ``Accelerator`` that runs the same on 1 GPU, N GPUs, or N gloo CPU processes.

    ``split_batches=True`` makes a config's batch size the *global* batch (each process gets a slice), so
    results do not depend on the process count. accelerate 1.15 ignores ``Accelerator(split_batches=...)``;
    the ``DataLoaderConfiguration`` form works. ``cpu=True`` on machines without CUDA is what turns
    ``accelerate launch --multi_gpu`` into gloo CPU processes instead of N independent single-process runs.
    """
    from accelerate import Accelerator, DataLoaderConfiguration

    kwargs.setdefault("cpu", not torch.cuda.is_available())
    return Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=split_batches), **kwargs)
