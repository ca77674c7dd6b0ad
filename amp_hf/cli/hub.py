"""``amp-hf card`` and ``amp-hf push``."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..files.artifacts import CARD_FILE, PLOT_FILE
from ..files.outputs import expand

# hub_cards.push.DEFAULT_TIMEOUT, spelled here so `push --help` loads no Hub client (tests/test_cli.py checks it).
DEFAULT_TIMEOUT = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    card = subparsers.add_parser(
        "card",
        help="write a model card (README.md) and width_profile.png into a pruned checkpoint",
        description="Render the model card of a pruned checkpoint from its config.json provenance, any "
        "eval_report*.json beside it and its ONNX graphs (onnx/ or --onnx), and write README.md and "
        "width_profile.png into the folder. Reads local files only.",
    )
    card.add_argument("checkpoint", type=expand, help="pruned checkpoint folder")
    card.add_argument("--repo-id", help="Hub repo id to show in the usage snippets (default: a placeholder)")
    card.add_argument("--overwrite-readme", action="store_true",
                      help=f"replace a {CARD_FILE} / {PLOT_FILE} amp-hf did not write (e.g. a hand-written one)")
    _add_card_options(card)
    card.set_defaults(func=run_card)

    push_parser = subparsers.add_parser(
        "push",
        help="upload a pruned checkpoint, its card and ONNX graphs to the Hub in one commit",
        description="Create the repo if needed and upload the checkpoint folder (weights, config, modeling code), "
        "a freshly rendered card + width plot, and the ONNX folder (under onnx/) in a single commit: on any "
        "failure the repo is left as it was. The token comes from --token, HF_TOKEN or `hf auth login`.",
    )
    push_parser.add_argument("checkpoint", type=expand, help="pruned checkpoint folder")
    push_parser.add_argument("repo_id", help="target repo, namespace/name")
    options = push_parser.add_argument
    options("--private", action="store_true", help="create the repo as private (if it does not exist)")
    options("--revision", help="branch to commit to (created from main if missing)")
    options("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    options("--dry-run", action="store_true", help="list the files and sizes that would be sent; send nothing")
    options("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
            help=f"how long each Hub request may wait for an answer (default: {DEFAULT_TIMEOUT:g}; timeouts are retried)")
    options("--token", help="Hub token (prefer HF_TOKEN or `hf auth login`: arguments are visible to other users)")
    options("--commit-message", help="commit title (default: 'Upload <architecture> pruned with amp-hf <version>')")
    options("--keep-card", action="store_true",
            help=f"upload the folder's own {CARD_FILE} and {PLOT_FILE} instead of rendering them")  # fmt: skip
    _add_card_options(push_parser)
    push_parser.set_defaults(func=run_push)


def _add_card_options(parser: argparse.ArgumentParser) -> None:
    options = parser.add_argument
    options("--onnx", type=expand, metavar="DIR", help="folder of exported ONNX graphs to describe (pushed under onnx/)")
    options("--template", type=expand, help="your own Jinja model-card template (default: the one amp-hf ships)")
    options("--base-model", help="base model Hub id, when config.json does not record it")
    options("--license", help="license id for the card metadata (default: the base model's, if its card is on disk)")


def run_card(args: argparse.Namespace) -> int:
    from hub_cards.card import CardTemplateError, write_card

    try:
        written = write_card(
            args.checkpoint, template=args.template, base_model=args.base_model, license=args.license,
            onnx_dir=args.onnx, repo_id=args.repo_id, overwrite_readme=args.overwrite_readme,
        )  # fmt: skip
    except CardTemplateError as error:
        raise UsageError(str(error)) from error
    print(f"wrote {', '.join(path.name for path in written)} to {args.checkpoint}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from hub_cards.card import CardTemplateError
    from hub_cards.push import HubPushError, plan_upload, push_to_hub

    try:
        plan = plan_upload(
            args.checkpoint, args.repo_id, onnx_dir=args.onnx, template=args.template, base_model=args.base_model,
            license=args.license, keep_card=args.keep_card,
        )  # fmt: skip
        if args.dry_run:
            print(f"Dry run, nothing is sent. Would push {plan.describe(args.revision)}")
            return 0
        result = push_to_hub(
            plan, private=args.private or None, revision=args.revision, create_pr=args.create_pr, token=args.token,
            commit_message=args.commit_message, timeout=args.timeout,
        )  # fmt: skip
    except (HubPushError, CardTemplateError) as error:
        raise UsageError(str(error)) from error
    print(f"pushed {len(plan.files)} files to {result.repo_url}: {result.pull_request_url or result.commit_url}")
    return 0
