"""Train (or find in the cache) amp-hf's reference ViT teacher and print where it is and how good it is.

    python scripts/train_reference_vit.py                      # Fashion-MNIST, ~10 min on one CPU core
    python scripts/train_reference_vit.py --dataset digits     # scikit-learn digits, seconds
    AMP_HF_CACHE=/data/amp-hf python scripts/train_reference_vit.py --force

The model is a transformers ViTForImageClassification folder (plus its image processor and
reference.json) under <cache>/reference/<dataset>_vit; recipes live in amp_hf/reference.py.
"""

from __future__ import annotations

import argparse
import logging
import sys

from amp_hf.reference import REFERENCE_DATASETS, read_record, train_reference_vit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=REFERENCE_DATASETS, default="fashion_mnist")
    parser.add_argument("--cache-dir", help="folder holding reference models (default: <amp-hf cache>/reference)")
    parser.add_argument("--force", action="store_true", help="retrain even if a current cached model exists")
    parser.add_argument("--threads", type=int, help="torch threads (default 1: fastest on shared cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    path = train_reference_vit(args.dataset, cache_dir=args.cache_dir, force=args.force, num_threads=args.threads)
    record = read_record(path)
    print(f"{path}")
    print(
        f"test accuracy {record['test_accuracy']:.4f} on {record['num_test']} images; trained in "
        f"{record['train_seconds']:.0f} s wall / {record['train_cpu_seconds']:.0f} s CPU "
        f"({record['torch_threads']} threads)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
