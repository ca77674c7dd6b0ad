"""``amp-hf import``: bring the official AMP / DGMR pruned ``.pth`` files into the amp-hf checkpoint format.

The official repos (visresearch/AMP, visresearch/DGMR) save raw ``torch.save(state_dict)`` files of their
vendored open_clip / EVA-CLIP / DINOv2 forks with smaller MLPs and no config: the widths exist only in the
tensor shapes. Importing reads such a file together with the base model it was pruned from, renames the
fork's keys to the base model's, infers every layer's width from the MLP tensors, checks every other tensor
against the base's shape, and writes an ordinary pruned checkpoint (atomically; nothing on error).

Supported layouts (``LAYOUTS``; the README lists them with the files they come from):
- ``open_clip-visual``: an open_clip ``VisionTransformer`` state dict (AMP ``model_layer.pth`` and AMP's
  distilled open_clip checkpoints). The text tower comes from the base.
- ``open_clip-clip``: a whole open_clip ``CLIP`` state dict (``visual.*`` + text tower; DGMR ``distill.pth`` /
  ``ft.pth`` for ViT-g-14-prune1/2).
- ``eva_clip-visual``: an EVA-CLIP ``EVAVisionTransformer`` state dict (AMP's EVA02-CLIP-bigE-14-plus files,
  DGMR's EVA ``distill.pth``), imported into an open_clip EVA02 model (its image tower a timm ``Eva`` trunk);
  names as timm renames them.
- ``eva_clip-clip``: a whole EVA-CLIP ``CustomCLIP`` state dict (``visual.*`` EVAVisionTransformer + ``text.*``
  + ``logit_scale``; DGMR's EVA ``ft.pth``, bf16) into the same kind of base. EVA-CLIP's ``TextTransformer`` has
  open_clip's module names (``token_embedding``, ``transformer.resblocks.<i>.{ln_1,attn,ln_2,mlp.c_fc,mlp.c_proj}``,
  ``ln_final``, ``text_projection``), so the text tower and ``logit_scale`` load by their own names.
- ``dinov2``: a facebookresearch ``DinoVisionTransformer`` state dict (DGMR ``dinov2/distill.pth``, AMP's
  DINOv2 ``model_layer.pth``), flat or block-chunked, imported into a transformers ``Dinov2Model``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, save_pruned
from .families import get_adapter
from .files.provenance import hub_reference
from .slicing import build_pruned_model, hidden_tensor_names

METHODS = {"amp": "imported-amp", "dgmr": "imported-dgmr"}
# Wrapper keys the repos' training code nests a state dict under, and prefixes DDP / FSDP wrappers add.
_NESTING_KEYS = ("state_dict", "model", "module")
_WRAPPER_PREFIXES = ("module.", "model.")


class ImportMismatchError(CheckpointError):
    """The file does not fit its base model; the message names the first mismatch."""


@dataclass(frozen=True)
class OfficialLayout:
    name: str
    family: str  # adapter name of the base model this layout imports into
    description: str
    matches: Callable[[dict], bool]  # does a (prefix-stripped) file state dict look like this layout?
    convert: Callable[[dict, dict], dict]  # (file state dict, base state dict) -> {base key: (tensor, file key)}
    image_tower_prefix: str | None = None  # set: the file holds only this part; the rest comes from the base
    base_prefix: str = ""  # the base model's tensors must include some under this prefix (its tower kind)
    optional: tuple[str, ...] = ()  # base keys the file may lack (taken from the base)


# -- open_clip (native VisionTransformer towers) ------------------------------------------------------------

_OPEN_CLIP = "open_clip_model."
_NATIVE_MLP = "transformer.resblocks.0.mlp.c_fc.weight"


def _prefixed(prefix: str) -> Callable[[dict, dict], dict]:
    return lambda state, base: {prefix + key: (value, key) for key, value in state.items()}


# -- EVA-CLIP's EVAVisionTransformer -> the timm Eva trunk of an open_clip EVA02 model ---------------------------

_TIMM_TRUNK = _OPEN_CLIP + "visual.trunk."
# EVA-CLIP module names -> timm's (as timm's own eva.checkpoint_filter_fn renames them)
_EVA_CLIP_RENAMES = (
    ("mlp.ffn_ln.", "mlp.norm."),
    ("attn.inner_attn_ln.", "attn.norm."),
    ("mlp.w1.", "mlp.fc1_g."),
    ("mlp.w2.", "mlp.fc1_x."),
    ("mlp.w3.", "mlp.fc2."),
)


def _convert_eva_clip(state: dict, base: dict) -> dict:
    converted = {}
    separate_qkv = "blocks.0.attn.q_proj.weight" in state
    for key, value in state.items():
        if "rope." in key:  # rotary tables: buffers rebuilt from the config
            continue
        target = key
        for old, new in _EVA_CLIP_RENAMES:
            target = target.replace(old, new)
        if separate_qkv:  # EVA-CLIP keeps q/v biases beside bias-free projections; timm puts them inside
            target = target.replace("attn.q_bias", "attn.q_proj.bias").replace("attn.v_bias", "attn.v_proj.bias")
        # EVA-CLIP's `head` is the image projection: the trunk's head in open_clip's EVA02 configs (timm_proj null)
        converted[_TIMM_TRUNK + target] = (value, key)
    return converted


_EVA_CLIP_VISUAL = "visual."


def _convert_eva_clip_whole(state: dict, base: dict) -> dict:
    # visual.*: the EVAVisionTransformer, renamed as above; text.* and logit_scale: open_clip's own names
    visual = {key[len(_EVA_CLIP_VISUAL):]: value for key, value in state.items() if key.startswith(_EVA_CLIP_VISUAL)}
    converted = {target: (value, _EVA_CLIP_VISUAL + key)
                 for target, (value, key) in _convert_eva_clip(visual, base).items()}  # fmt: skip
    converted.update({_OPEN_CLIP + key: (value, key) for key, value in state.items()
                      if not key.startswith(_EVA_CLIP_VISUAL)})  # fmt: skip
    return converted


def _is_eva_clip_visual(state: dict, prefix: str = "") -> bool:
    return f"{prefix}cls_token" in state and f"{prefix}patch_embed.proj.weight" in state and any(
        re.match(rf"^{re.escape(prefix)}blocks\.0\.mlp\.(fc2|w3)\.weight$", key) for key in state
    )


# -- DINOv2 (facebookresearch) -> transformers Dinov2Model ------------------------------------------------

_DINOV2_GLOBAL = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_DINOV2_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w3": "mlp.down_proj",
}


def _convert_dinov2(state: dict, base: dict) -> dict:
    converted = {}
    for key, value in state.items():
        if key in _DINOV2_GLOBAL:
            converted[_DINOV2_GLOBAL[key]] = (value, key)
            continue
        if key == "register_tokens":
            raise ImportMismatchError("the file has register tokens (DINOv2 with registers): not supported")
        # flat `blocks.<i>.` or block-chunked `blocks.<chunk>.<i>.` (the inner index is the global one)
        match = re.match(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if not match:
            converted[f"<unknown>.{key}"] = (value, key)
            continue
        layer, module, kind = match.groups()
        prefix = f"encoder.layer.{layer}."
        if module in ("ls1", "ls2"):
            converted[f"{prefix}layer_scale{module[-1]}.lambda1"] = (value, key)
        elif module == "attn.qkv":
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"{prefix}attention.{name}.{kind}"] = (part, key)
        elif module == "mlp.w12":  # packed [gate; value] rows: SiLU acts on the first half
            gate, up = value.chunk(2, dim=0)
            converted[f"{prefix}mlp.gate_proj.{kind}"] = (gate, key)
            converted[f"{prefix}mlp.up_proj.{kind}"] = (up, key)
        elif module in _DINOV2_BLOCK:
            converted[f"{prefix}{_DINOV2_BLOCK[module]}.{kind}"] = (value, key)
        else:
            converted[f"<unknown>.{key}"] = (value, key)
    return converted


LAYOUTS: dict[str, OfficialLayout] = {
    layout.name: layout
    for layout in (
        OfficialLayout(
            name="open_clip-visual",
            family="open_clip",
            description="open_clip VisionTransformer state dict (AMP model_layer.pth / distilled open_clip tower)",
            # the text tower of a whole CLIP has `transformer.resblocks` too: require the image tower's stem
            matches=lambda state: _NATIVE_MLP in state and "conv1.weight" in state,
            convert=_prefixed(_OPEN_CLIP + "visual."),
            image_tower_prefix=_OPEN_CLIP + "visual.",
            base_prefix=_OPEN_CLIP + "visual.transformer.",
        ),
        OfficialLayout(
            name="open_clip-clip",
            family="open_clip",
            description="whole open_clip CLIP state dict (DGMR ViT-g-14-prune* distill.pth / ft.pth)",
            matches=lambda state: "visual." + _NATIVE_MLP in state,
            convert=_prefixed(_OPEN_CLIP),
            base_prefix=_OPEN_CLIP + "visual.transformer.",
        ),
        OfficialLayout(
            name="eva_clip-visual",
            family="open_clip",
            description="EVA-CLIP EVAVisionTransformer state dict (AMP EVA02-CLIP-bigE-14-plus model_layer.pth)",
            matches=_is_eva_clip_visual,
            convert=_convert_eva_clip,
            image_tower_prefix=_OPEN_CLIP + "visual.",
            base_prefix=_TIMM_TRUNK,
        ),
        OfficialLayout(
            name="eva_clip-clip",
            family="open_clip",
            description="whole EVA-CLIP CustomCLIP state dict: visual.* + text.* + logit_scale (DGMR EVA ft.pth)",
            matches=lambda state: _is_eva_clip_visual(state, _EVA_CLIP_VISUAL) and "text.token_embedding.weight" in state,
            convert=_convert_eva_clip_whole,
            base_prefix=_TIMM_TRUNK,
        ),
        OfficialLayout(
            name="dinov2",
            family="dinov2",
            description="facebookresearch DinoVisionTransformer state dict (DGMR dinov2/distill.pth, AMP DINOv2)",
            matches=lambda state: "cls_token" in state and any(
                re.match(r"^blocks\.(\d+\.)?\d+\.mlp\.(w3|fc2)\.weight$", key) for key in state
            ),
            convert=_convert_dinov2,
            optional=("embeddings.mask_token",),
        ),
    )
}


# -- reading ---------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_tensors(path: Path):
    """``torch.load`` memory-mapped (the file's tensors are read from the page cache on use, not copied into
    memory first: a 1B-parameter file does not cost its size twice while importing); files in the legacy
    (pre-zip) format cannot be mapped and are read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an official ``.pth`` file, unwrapped from training wrappers (``model.`` / ``module.``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the official .pth file")
    try:
        state = _load_tensors(path)
    except Exception as error:  # pickle errors of every kind: the file is not a plain tensor dict
        raise CheckpointError(f"{path} is not a PyTorch state-dict file ({type(error).__name__}: {error})") from error
    while isinstance(state, dict) and len(state) == 1 and next(iter(state)) in _NESTING_KEYS:
        state = next(iter(state.values()))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    for prefix in _WRAPPER_PREFIXES:
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
    return state


def detect_layout(state: dict, family: str, base_keys=()) -> OfficialLayout:
    for layout in LAYOUTS.values():
        fits_base = not layout.base_prefix or any(key.startswith(layout.base_prefix) for key in base_keys)
        if layout.family == family and fits_base and layout.matches(state):
            return layout
    supported = ", ".join(f"{layout.name} ({layout.description})" for layout in LAYOUTS.values())
    raise ImportMismatchError(
        f"the file matches no official layout for a {family} base model (first key: {next(iter(state))!r}); "
        f"supported layouts: {supported}"
    )


# -- importing ---------------------------------------------------------------------------------------------


def imported_state_dict(state: dict, base, layout: OfficialLayout) -> tuple[dict, list[int]]:
    """The base model's state dict with the file's tensors in place, and each layer's width from the shapes.

    Raises ``ImportMismatchError`` naming the first mismatch: an extra key, a missing key, a width larger
    than the base's, inconsistent MLP tensors, or a non-MLP tensor whose shape differs from the base's.
    """
    base_state = base.state_dict()
    converted = layout.convert(state, base_state)
    for target, (_, file_key) in converted.items():
        if target not in base_state:
            raise ImportMismatchError(f"extra key {file_key!r}: the base model has no such tensor (wrong base model?)")
    for key in base_state:
        inside = layout.image_tower_prefix is None or key.startswith(layout.image_tower_prefix)
        if key not in converted and inside and key not in layout.optional:
            raise ImportMismatchError(f"missing key: the file has no tensor for {key!r} of the base model")
    widths, mlp_keys = [], set()
    for index, names in enumerate(hidden_tensor_names(base)):
        column_name = next(name for name, dim, _ in names if dim == 1)  # the output projection's columns
        column, column_key = converted[column_name]
        width, base_width = column.shape[1], base_state[column_name].shape[1]
        if not 0 < width <= base_width:
            raise ImportMismatchError(
                f"layer {index}: MLP width {width} (from {column_key!r}) is not in 1..{base_width}, the base's width"
            )
        for name, _, chunks in names:
            if name == column_name:
                continue
            tensor, file_key = converted[name]
            if tensor.shape[0] != chunks * width or tensor.shape[1:] != base_state[name].shape[1:]:
                raise ImportMismatchError(
                    f"layer {index}: {file_key!r} has shape {tuple(tensor.shape)}, expected {chunks * width} rows of "
                    f"{tuple(base_state[name].shape[1:])} (width {width} from {column_key!r})"
                )
        if column.shape[0] != base_state[column_name].shape[0]:
            raise ImportMismatchError(f"layer {index}: {column_key!r} has {column.shape[0]} outputs, "
                                      f"the base {base_state[column_name].shape[0]}")  # fmt: skip
        widths.append(int(width))
        mlp_keys.update(name for name, _, _ in names)
    merged = dict(base_state)
    for key, (tensor, file_key) in converted.items():
        if key not in mlp_keys and tensor.shape != base_state[key].shape:
            raise ImportMismatchError(
                f"{file_key!r} has shape {tuple(tensor.shape)} but the base's {key!r} is "
                f"{tuple(base_state[key].shape)} (wrong base model?)"
            )
        merged[key] = tensor.to(base_state[key].dtype)
    return merged, widths


def import_official(
    weights: str | os.PathLike,
    base_name: str,
    output: str | os.PathLike,
    method: str = "amp",
    layout: str = "auto",
    overwrite: bool = False,
):
    """Import an official pruned ``.pth`` against its base model and save an amp-hf pruned checkpoint."""
    from .data import DataError, load_processor
    from .loading import load_model, resolve_model_path

    if method not in METHODS:
        raise CheckpointError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if layout != "auto" and layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}: choose auto or one of {', '.join(LAYOUTS)}")
    from .files.outputs import expand, prepare_output

    output = prepare_output(output, overwrite=overwrite, inputs=[weights, base_name], flag="--overwrite")
    weights = expand(weights)
    state = read_state_dict(weights)
    base = load_model(base_name)
    adapter = get_adapter(base)
    chosen = detect_layout(state, adapter.name, base.state_dict()) if layout == "auto" else LAYOUTS[layout]
    if chosen.family != adapter.name:
        raise ImportMismatchError(f"layout {chosen.name} imports into {chosen.family} models, not {adapter.name}")
    merged, widths = imported_state_dict(state, base, chosen)
    # A Hub id, or an open_clip model name (the cards read it), or nothing: config.json may be pushed.
    base_id, base_revision = hub_reference(base_name)
    base_id = base_id or getattr(base.config, "open_clip_model_name", None)
    amp_pruning = {
        "method": METHODS[method],
        "source_file": weights.name,
        "source_sha256": file_sha256(weights),
        "source_layout": chosen.name,
        **({"base_model": base_id} if base_id else {}),
        **({"base_model_revision": base_revision} if base_revision else {}),
        "original_widths": adapter.widths(base),
        "widths": widths,
    }
    pruned = build_pruned_model(base, widths, merged, amp_pruning).eval()
    processor = None
    if not adapter.processor_in_config:
        try:
            processor = load_processor(str(base_name), adapter)
        except DataError:  # a base without a processor: the checkpoint works without one
            processor = None
    save_pruned(pruned, output, processor=processor, overwrite=overwrite, carry_from=resolve_model_path(base_name))
    return pruned, amp_pruning
