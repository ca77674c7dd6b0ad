"""``amp-hf stats``, ``score``, ``prune`` and ``run``."""

from __future__ import annotations

import argparse
import json

from ..files.model_reference import check_model_reference
from ..pruning_config import PruneConfig, prepare_prune_output
from .options import MODEL_REFERENCE, add_config_arguments, config_from


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "YAML config (see configs/); KEY=VALUE overrides follow",
                         "dotted overrides, e.g. model=minilm output=out/minilm search.delta_e=0.02", short=True)


def _prune_config(args) -> PruneConfig:
    return config_from(PruneConfig, args)


def format_stats_table(stats: dict) -> str:
    rows = [("quantity", "before", "after", "reduction")]
    for key, value in stats.items():
        rows.append((key, f"{value['before']:,}", f"{value['after']:,}", f"{100 * value['reduction']:.1f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def cmd_stats(args) -> int:
    check_model_reference(args.checkpoint)  # before torch loads
    from ..accounting import model_stats
    from ..families import get_adapter
    from ..loading import load_model

    model = load_model(args.checkpoint)
    stats = model_stats(model)
    widths = get_adapter(model).widths(model)
    if args.json:
        print(json.dumps({"widths": widths, **stats}))
    else:
        print(f"{type(model).__name__}  MLP widths: {widths}")
        for key, value in stats.items():
            print(f"  {key:14s} {value:>16,}")
    return 0


def cmd_score(args) -> int:
    if not args.output:
        from ..errors import UsageError

        raise UsageError("pass --output DIR for the scores (scores.safetensors + scores.json)")
    config = _prune_config(args)
    prepare_prune_output(config, args.output)  # refused before torch loads; run_score checks again
    from ..pruning import run_score

    scores = run_score(config, args.output)
    print(f"scored {scores.num_samples} samples -> {args.output}")
    return 0


def cmd_prune(args) -> int:
    config = _prune_config(args)
    prepare_prune_output(config)  # refused before torch loads; run_prune checks again
    from ..pruning import run_prune

    report = run_prune(config)
    print(f"{report['method']}: widths {report['original_widths']} -> {report['widths']}")
    print(format_stats_table(report["stats"]))
    if "reconstruction" in report:
        print(report["reconstruction"]["summary"])
    print(f"saved {report['output']}  ({report['wall_time_s']} s)")
    return 0


def register(subparsers) -> None:
    stats = subparsers.add_parser("stats", help="parameters, FLOPs and MLP widths of a checkpoint")
    stats.add_argument("checkpoint", help=f"the model, stock or pruned: {MODEL_REFERENCE}")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=cmd_stats)

    score = subparsers.add_parser("score", help="Taylor / data-free neuron scores, saved for reuse")
    _add_config_arguments(score)
    score.add_argument("--output", "-o", help="folder for scores.safetensors + scores.json")
    score.set_defaults(func=cmd_score)

    for name, text in (("prune", "search widths, slice and save a pruned checkpoint (reuses "
                        "scoring.scores_path when set)"), ("run", "score + prune in one go")):
        parser = subparsers.add_parser(name, help=text)
        _add_config_arguments(parser)
        parser.set_defaults(func=cmd_prune)
