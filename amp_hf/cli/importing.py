"""``amp-hf import``: official AMP / DGMR pruned ``.pth`` files into amp-hf checkpoints."""

from __future__ import annotations

from ..files.model_reference import check_model_reference
from ..files.outputs import prepare_output

# amp_hf.importing.METHODS' keys, spelled here so `import --help` loads no torch
# (tests/test_cli.py checks that they agree).
METHOD_NAMES = ("amp", "dgmr")


def cmd_import(args) -> int:
    # a missing base or an existing output is refused before torch loads (import_official checks again)
    check_model_reference(args.base, "base model")
    prepare_output(args.output, overwrite=args.overwrite, inputs=[args.weights, args.base], flag="--overwrite")
    from ..importing import import_official

    _, info = import_official(args.weights, args.base, args.output, method=args.method, layout=args.layout,
                              overwrite=args.overwrite)  # fmt: skip
    print(f"{info['method']} ({info['source_layout']}): widths {info['original_widths']} -> {info['widths']}")
    print(f"saved {args.output}  (source sha256 {info['source_sha256'][:16]}...)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "import", help="import an official AMP / DGMR pruned .pth file (widths from its shapes) into a checkpoint"
    )
    parser.add_argument("weights", help="the official .pth file")
    parser.add_argument("--base", required=True,
                        help="the base model it was pruned from, as a Hub id (hf-hub:laion/..., facebook/dinov2-...; "
                        "downloaded once) or a folder: open_clip's Hub layout, an amp-hf open_clip folder, or a "
                        "transformers Dinov2Model")  # fmt: skip
    parser.add_argument("--output", "-o", required=True, help="folder for the pruned checkpoint")
    parser.add_argument("--method", choices=METHOD_NAMES, default="amp", help="which repo the file comes from")
    parser.add_argument("--layout", default="auto", help="auto (default) or a layout name (the README's import section lists them; "
                        "a wrong name is refused with the list)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.set_defaults(func=cmd_import)
