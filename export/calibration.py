"""Calibration data for static int8 quantization, read from the same data sources scoring and distillation use.

The first ``samples`` examples (after the source's seeded shuffle) calibrate the activation ranges; the next
``HOLDOUT_SAMPLES`` are kept apart to measure the quantization error on real inputs the ranges never saw.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from amp_hf import get_adapter
from amp_hf.data import DataConfig, load_processor, model_inputs, prepare_dataset

from .errors import ExportOptionError
from .specs import ArchitectureSpec, max_sequence_length

CALIBRATION_BATCH_SIZE = 8
HOLDOUT_SAMPLES = 32


@dataclass
class Calibration:
    """Model-input batches (dicts of tensors) to calibrate on, and held-out ones to measure the error on."""

    batches: list[dict[str, torch.Tensor]]
    holdout: list[dict[str, torch.Tensor]] = field(default_factory=list)
    source: str = "given batches"

    @property
    def samples(self) -> int:
        return sum(len(next(iter(batch.values()))) for batch in self.batches)

    def describe(self) -> dict:
        holdout = sum(len(next(iter(batch.values()))) for batch in self.holdout)
        return {"source": os.path.basename(self.source), "samples": self.samples, "holdout_samples": holdout}


def calibration_modality(spec: ArchitectureSpec) -> str:
    """The one modality a static-int8 export calibrates (two-tower models would need paired sources)."""
    modalities = {graph.modality for graph in spec.graphs}
    if len(modalities) > 1:
        raise ExportOptionError(
            "--quantize int8-static calibrates one modality, and this model exports an image and a text tower: "
            "use --quantize int8-dynamic (no calibration) for CLIP / SigLIP"
        )
    return modalities.pop()


def load_calibration(
    model: nn.Module,
    spec: ArchitectureSpec,
    source: str,
    samples: int,
    processor_source: str | os.PathLike | None = None,
) -> Calibration:
    """``samples`` calibration examples of ``source`` (plus up to ``HOLDOUT_SAMPLES`` held out), preprocessed by
    the model's own processor (read from ``processor_source``, the checkpoint folder, when given)."""
    adapter = get_adapter(model)
    modality = calibration_modality(spec)
    if modality != adapter.modality:
        raise ExportOptionError(f"--calibration-data must be {modality} data for this model")
    processor = load_processor(str(processor_source) if processor_source is not None else model, adapter)
    config = DataConfig(
        source=source,
        num_samples=samples + HOLDOUT_SAMPLES,
        batch_size=CALIBRATION_BATCH_SIZE,
        max_length=max_sequence_length(model) if modality == "text" else DataConfig.max_length,
    )
    dataset = prepare_dataset(config, processor, adapter, model)
    cut = min(samples, len(dataset))

    def batches(indices: range) -> list[dict[str, torch.Tensor]]:
        loader = DataLoader(Subset(dataset, indices), batch_size=CALIBRATION_BATCH_SIZE, collate_fn=dataset.collate)
        return [model_inputs(batch) for batch in loader]

    return Calibration(batches(range(cut)), batches(range(cut, len(dataset))), source)
