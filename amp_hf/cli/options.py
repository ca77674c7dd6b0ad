"""Option glue more than one command uses: a YAML config with dotted KEY=VALUE overrides, and checked types."""

from __future__ import annotations

import argparse

from ..files.config_utils import build, config_values

# What every model argument accepts (amp_hf/files/model_reference.py resolves it).
MODEL_REFERENCE = "a folder, a Hub id (ORG/NAME[@REVISION], hf-hub:ORG/NAME; downloaded once) or 'minilm'"


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, overrides_help: str,
                         short: bool = False) -> None:
    """``--config FILE`` and trailing ``KEY=VALUE`` overrides (``amp_hf.cli.main`` also accepts overrides after
    the options)."""
    flags = ("--config", "-c") if short else ("--config",)
    parser.add_argument(*flags, help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)


def config_from(config_class: type, args: argparse.Namespace):
    """The ``config_class`` instance the command's ``--config`` and overrides describe, its keys, types and
    ranges checked. The config classes import no torch (``*/config.py``, ``pruning_config``), so every such
    refusal comes before the command's heavy imports."""
    return build(config_class, config_values(args.config, args.overrides))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (so a 0 is a usage error, not a traceback later)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value
