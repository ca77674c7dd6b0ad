"""``amp-hf demo``: the README's main job, end to end."""

from __future__ import annotations

from ..errors import UsageError


def cmd_demo(args) -> int:
    from ..demo import format_summary, run_demo

    try:
        from hub_cards.push import HubPushError
    except ImportError:  # a build without hub_cards: --push is refused by run_demo's import
        HubPushError = UsageError
    try:
        summary = run_demo(args.output, quick=args.quick, vision=args.vision, push=args.push, overwrite=args.overwrite)
    except HubPushError as error:
        raise UsageError(str(error)) from error
    print(format_summary(summary))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job: AMP prune → distil → eval → ONNX → card on the real all-MiniLM-L6-v2, offline"
    )
    parser.add_argument("--output", "-o", default="out/demo", help="folder for the checkpoints, ONNX, cards, summary")
    parser.add_argument("--quick", action="store_true", help="few samples (CI smoke run)")
    parser.add_argument("--vision", action="store_true", help="the Fashion-MNIST ViT instead of MiniLM")
    parser.add_argument("--push", metavar="REPO_ID", help="push the distilled checkpoint (with ONNX and card) to this repo")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output folder")
    parser.set_defaults(func=cmd_demo)
