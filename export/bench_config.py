"""The ``amp-hf bench`` configuration (a YAML file of BenchConfig fields plus overrides) and its checks: no
torch here, so a bad value is refused before the benchmark's models are built."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BenchConfig:
    hidden_size: int = 768  # ViT-B/16
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    prune_fraction: float = 0.4  # share of MLP parameters removed
    align: int = 64  # the aligned variant rounds every width to a multiple of this
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    warmup: int = 2
    repeats: int = 5
    threads: list[int] = field(default_factory=lambda: [1, 2])  # ONNX Runtime intra-op threads to measure
    fusions: bool = True  # also measure graphs fused for ONNX Runtime CPU (--ort-fusions cpu)
    seed: int = 0
    out: str = "docs/bench_export"  # writes OUT.json and OUT.md

    def __post_init__(self):
        if not 0 < self.prune_fraction < 1:
            raise ValueError("prune_fraction must lie in (0, 1)")
        if self.repeats < 1 or self.warmup < 0 or not self.batch_sizes or not self.threads:
            raise ValueError("repeats >= 1, warmup >= 0, and non-empty batch_sizes / threads are required")
        if min(self.batch_sizes) < 1 or min(self.threads) < 1:
            raise ValueError(f"batch_sizes and threads must be >= 1; got {self.batch_sizes} and {self.threads}")
