"""The ``amp-hf`` command line (also ``python -m amp_hf``, which is what ``accelerate launch -m`` runs).

Each command group is one module of this package with a ``register(subparsers)`` function, so this file only
lists them. Nothing outside this package builds a parser or imports it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .._version import __version__
from ..errors import UsageError
from ..files.outputs import is_disk_full

# Modules that add subcommands, in --help order, with the package each drives when it is not part of amp_hf.
COMMAND_MODULES = (
    ("amp_hf.cli.core", None),  # stats, score, prune, run
    ("amp_hf.cli.importing", None),  # import (official AMP / DGMR .pth files)
    ("amp_hf.cli.distill", None),  # distill
    ("amp_hf.cli.evaluate", None),  # eval
    ("amp_hf.cli.demo", None),  # demo (the README's main job)
    ("amp_hf.cli.export", "export"),  # export, bench
    ("amp_hf.cli.hub", "hub_cards"),  # card, push
)


def _user_errors() -> tuple[type[BaseException], ...]:
    return (UsageError, FileExistsError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amp-hf",
        description="Prune the MLP hidden neurons of Hugging Face vision transformers and text encoders "
        "(AMP, DGMR), recover with distillation, export to ONNX, and push to the Hub.",
    )
    parser.add_argument("--version", action="version", version=f"amp-hf {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, package in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if package is not None and (error.name == package or str(error.name).startswith(f"{package}.")):
                continue  # not in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except _user_errors() as error:
        if args.verbose:
            raise
        print(f"amp-hf {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if args.verbose or not is_disk_full(error):
            raise
        print(f"amp-hf {args.command}: error: no space left on the device ({error.strerror}: "
              f"{error.filename or 'while writing'}); nothing was saved: free some space or choose another output",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print(f"amp-hf {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; KEY=VALUE overrides may also follow the options (``prune --config C search.steps=4``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _close_process_group() -> None:
    """Tear down the process group of an `accelerate launch` run before exit: a gloo group left to interpreter
    shutdown can abort a rank ("terminate called without an active exception", seen under 2-process eval)."""
    if "torch.distributed" not in sys.modules:  # a command that never loaded torch has no group to close
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
