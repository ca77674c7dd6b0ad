"""Export-time patches: context managers that change how a model traces, never what it computes.

Each patch is undone on exit, so the model behaves exactly as before once the export is done.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from transformers import masking_utils


@contextlib.contextmanager
def skip_unpadded_attention_masks() -> Iterator[None]:
    """Trace bidirectional attention without a mask when the model got no padding mask.

    While exporting, transformers always materialises the bidirectional mask because it cannot look at a
    padding mask's values. With no padding mask at all (every vision tower) there is nothing to look at and
    the mask is all-true, so skipping it is exact; it removes a mask build, an ``Add`` and a ``Where`` per layer
    from the graph and leaves the plain SDPA pattern ONNX Runtime's attention fusion matches.
    """
    original = masking_utils._ignore_bidirectional_mask_sdpa

    def ignore_mask(padding_mask, kv_length, local_attention_size=None):
        if padding_mask is None and (local_attention_size is None or kv_length < local_attention_size):
            return True
        return original(padding_mask, kv_length, local_attention_size)

    masking_utils._ignore_bidirectional_mask_sdpa = ignore_mask
    try:
        yield
    finally:
        masking_utils._ignore_bidirectional_mask_sdpa = original


@contextlib.contextmanager
def slice_timm_rotary_halves() -> Iterator[None]:
    """Trace timm EVA's rotary embedding with slices instead of ``chunk``.

    ``emb.chunk(2, -1)`` becomes an ONNX ``Split`` with ``num_outputs``, an attribute opset 17 (the TensorRT
    target) does not have, so the converted graph fails the checker. Two slices of the same halves compute
    exactly the same values. Only patched when timm's EVA module is loaded (timm is optional).
    """
    eva = sys.modules.get("timm.models.eva")
    original = getattr(eva, "apply_rot_embed_cat", None)
    if original is None:
        yield
        return
    from timm.layers.pos_embed_sincos import apply_rot_embed

    def apply_rot_embed_cat(x, emb, half: bool = False):
        width = emb.shape[-1] // 2
        return apply_rot_embed(x, emb[..., :width], emb[..., width:], half=half)

    eva.apply_rot_embed_cat = apply_rot_embed_cat
    try:
        yield
    finally:
        eva.apply_rot_embed_cat = original


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """Every patch the exporter applies, as one context."""
    with skip_unpadded_attention_masks(), slice_timm_rotary_halves():
        yield
