"""``amp-hf distill``: run under ``accelerate launch -m amp_hf distill --config ... [KEY=VALUE ...]``."""

from __future__ import annotations

import argparse

from ..distill.config import DistillConfig
from ..distill.run_state import check_run_folders
from .options import add_config_arguments, config_from

EXAMPLES = """examples:
  amp-hf distill --config configs/distill_minilm.yaml
  accelerate launch --multi_gpu --num_processes 8 -m amp_hf distill --config configs/distill_clip.yaml \\
      student=out/clip-pruned output=out/clip-distilled data.source=/data/imagenet/train
  accelerate launch --config_file configs/accelerate/fsdp.yaml -m amp_hf distill --config ... --resume
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="recover a pruned model by feature distillation from its unpruned teacher",
        description="Feature distillation of a pruned checkpoint (student) from the unpruned model (teacher), "
        "AMP/DGMR recipe. Distribution and mixed precision come from `accelerate launch`.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "YAML config (see configs/distill_*.yaml)", "dotted overrides, e.g. optim.base_lr=1e-5")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in the run folder (<output>.run)"
    )
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    config = config_from(DistillConfig, args)  # config errors come before any torch import,
    check_run_folders(config, args.resume)  # and so do an existing output and a run folder --resume does not fit
    from accelerate import PartialState

    from ..distill import run_distillation

    output = run_distillation(config, resume=args.resume)
    if PartialState().is_main_process:
        if output is None:
            print(f"stopped after step {config.schedule.stop_after}; continue with --resume")
        else:
            print(f"distilled checkpoint written to {output}")
    return 0
