#!/usr/bin/env python
"""Benchmark pruned vs unpruned ONNX (ONNX Runtime CPU) and PyTorch eager; same as `amp-hf bench`.

nice python scripts/bench_export.py                      # ViT-B/16 shape, batch 1 and 8 -> docs/bench_export.{json,md}
python scripts/bench_export.py repeats=3 batch_sizes=[1]  # KEY=VALUE overrides of export.bench.BenchConfig
"""

import sys

from amp_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
