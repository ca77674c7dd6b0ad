"""Sentence-transformers folders: what a pruned sentence encoder carries beside its transformers files.

A sentence-transformers model is a transformers folder plus ``modules.json`` (its pipeline: Transformer ->
Pooling -> optional Dense layers -> optional Normalize), one sub-folder per module after the Transformer,
``sentence_bert_config.json`` (``max_seq_length``, lower-casing) and ``config_sentence_transformers.json``
(prompts, similarity function). Pruning changes only the Transformer's MLPs, so every checkpoint amp-hf writes
from such a folder carries the rest unchanged, with the Transformer module at the checkpoint root:
``SentenceTransformer(checkpoint)`` (amp_hf imported, or ``trust_remote_code=True``) then runs the base's
pipeline on the pruned model.

``SentenceHead`` applies the same pooling / Dense / Normalize steps to amp-hf's own forward passes, so the
embeddings amp-hf evaluates are the ones sentence-transformers returns. amp-hf never imports
sentence-transformers.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .outputs import check_link_inside, folder_files

logger = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
SETTINGS_FILE = "config_sentence_transformers.json"  # prompts, default prompt, similarity function
TRANSFORMER_SETTINGS_FILE = "sentence_bert_config.json"  # max_seq_length, do_lower_case
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")  # what SentenceHead reproduces
# sentence-transformers' pooling config before v5 named each mode by a boolean key, in this order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def read_modules(folder: str | os.PathLike) -> list[dict] | None:
    """The entries of ``modules.json`` in ``folder``, or None when it is not a sentence-transformers folder."""
    path = Path(folder) / MODULES_FILE
    if not path.is_file():
        return None
    try:
        modules = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the sentence-transformers folder is corrupt") from error
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise ValueError(f"{path} is not a sentence-transformers module list")
    return modules


def _kind(module: dict) -> str:
    """The module's class name: ``sentence_transformers.models.Pooling`` -> ``Pooling``."""
    return str(module["type"]).rsplit(".", 1)[-1]


def _transformer_index(modules: list[dict]) -> int | None:
    return next((i for i, m in enumerate(modules) if _kind(m) == "Transformer"), None)


def carried_files(source: str | os.PathLike) -> tuple[list[dict], list[tuple[Path, str]]] | None:
    """What ``carry_sentence_transformers`` writes from ``source``: the carried modules.json entries and every
    (file, path in the checkpoint) it copies, or None when ``source`` is not a sentence-transformers folder.
    Reads no file content; a link out of ``source`` raises ``LinkOutsideError`` (``outputs.folder_files``),
    so ``amp-hf prune`` checks this before any compute."""
    source = Path(source)
    modules = read_modules(source)
    if modules is None:
        return None
    transformer = _transformer_index(modules)
    if transformer is None:
        logger.warning("%s has no sentence-transformers Transformer module: its modules.json is not carried", source)
        return None
    carried, files = [], []
    for index, module in enumerate(modules):
        module = dict(module)
        relative = str(module.get("path", ""))
        if index == transformer:
            settings = source / relative / TRANSFORMER_SETTINGS_FILE
            if settings.is_file():
                files.append((check_link_inside(source, settings), TRANSFORMER_SETTINGS_FILE))
            module["path"] = ""
        elif relative in ("", "."):
            logger.warning("sentence-transformers module %s lives in the model root: not carried", module["type"])
            continue
        elif (source / relative).is_dir():
            files += [(path, f"{relative}/{name}") for name, path in folder_files(source / relative, root=source)]
        carried.append(module)
    if (source / SETTINGS_FILE).is_file():
        files.append((check_link_inside(source, source / SETTINGS_FILE), SETTINGS_FILE))
    return carried, files


def check_carried_files(source: str | os.PathLike) -> None:
    """Refuse, before any compute, a sentence-transformers folder whose modules link out of it (see ``carried_files``)."""
    if Path(source).is_dir():
        carried_files(source)


def carry_sentence_transformers(source: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Copy the sentence-transformers modules and settings of ``source`` into the checkpoint ``target``.

    The Transformer module is the checkpoint itself (its path becomes the root); every other module folder
    (Pooling, Dense, Normalize, ...) and both settings files are copied as they are (links resolved; none may
    point out of ``source``). Returns False (and writes nothing) when ``source`` is not a sentence-transformers
    folder.
    """
    target = Path(target)
    found = carried_files(source)
    if found is None:
        return False
    carried, files = found
    for path, relative in files:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / relative)
    (target / MODULES_FILE).write_text(json.dumps(carried, indent=2) + "\n")
    return True


def sentence_settings(folder: str | os.PathLike) -> dict:
    """What a model card or a user needs to know: modules, max_seq_length, prompts, similarity function."""
    folder = Path(folder)
    modules = read_modules(folder) or []
    settings = {"modules": [_kind(m) for m in modules]}
    # sentence-transformers >= 6 keeps max_seq_length as the tokenizer's model_max_length.
    tokenizer = _json(folder / "tokenizer_config.json").get("model_max_length")
    if isinstance(tokenizer, int) and tokenizer < 1_000_000:  # transformers' "no limit" is a huge number
        settings["max_seq_length"] = tokenizer
    for name in (TRANSFORMER_SETTINGS_FILE, SETTINGS_FILE):
        values = _json(folder / name)
        settings.update({k: values[k] for k in ("max_seq_length", "prompts", "similarity_fn_name") if values.get(k)})
    return settings


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


# -- the embedding pipeline ---------------------------------------------------------------------------


@dataclass
class SentenceHead:
    """Pooling, Dense layers and normalisation of a sentence-transformers pipeline, on token embeddings."""

    pooling: tuple[str, ...] = ()
    dense: list[nn.Module] = field(default_factory=list)
    normalize: bool = False

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> SentenceHead | None:
        """The head of the sentence-transformers folder ``folder``; None when it is not one, or when a module
        is one this class does not reproduce (a warning names it; callers then use amp-hf's own pooling)."""
        folder = Path(folder)
        modules = read_modules(folder)
        transformer = None if modules is None else _transformer_index(modules)
        if transformer is None:
            return None
        head = cls()
        for module in modules[transformer + 1:]:
            kind, path = _kind(module), folder / str(module.get("path", ""))
            if kind == "Pooling" and not head.pooling and not head.normalize:
                head.pooling = _pooling_modes(path)
                if not set(head.pooling) <= set(POOLING_MODES):
                    return _not_reproduced(folder, f"pooling mode {'+'.join(head.pooling)}")
            elif kind == "Dense" and head.pooling and not head.normalize:
                dense = _load_dense(path)
                if dense is None:
                    return _not_reproduced(folder, f"Dense activation of {path.name}")
                head.dense.append(dense)
            elif kind == "Normalize" and head.pooling:
                head.normalize = True
            else:
                return _not_reproduced(folder, f"module {module['type']} at this place")
        return head if head.pooling else None

    def __call__(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones(token_embeddings.shape[:-1], dtype=torch.long, device=token_embeddings.device)
        mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)
        pooled = []
        for mode in self.pooling:
            if mode == "cls":
                first = attention_mask.to(torch.int).argmax(dim=1)
                pooled.append(token_embeddings[torch.arange(len(first), device=first.device), first])
            elif mode == "max":
                pooled.append(token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
            else:
                count = mask.sum(dim=1).clamp(min=1e-9)
                total = (token_embeddings * mask).sum(dim=1)
                pooled.append(total / (count if mode == "mean" else count.sqrt()))
        embedding = torch.cat(pooled, dim=-1)
        for layer in self.dense:
            embedding = layer.to(embedding.device, embedding.dtype)(embedding)
        return F.normalize(embedding, p=2, dim=-1) if self.normalize else embedding


def _not_reproduced(folder: Path, what: str) -> None:
    logger.warning("%s: amp-hf does not reproduce the sentence-transformers %s; its embeddings use the family's "
                   "own pooling instead", folder, what)


def _pooling_modes(folder: Path) -> tuple[str, ...]:
    config = _json(folder / "config.json")
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(name for key, name in _LEGACY_POOLING_KEYS.items() if config.get(key))
        return modes or ("mean",)
    return (mode,) if isinstance(mode, str) else tuple(mode)


def _load_dense(folder: Path) -> nn.Module | None:
    config = json.loads((folder / "config.json").read_text())
    if config.get("use_residual"):
        return None
    activation = str(config.get("activation_function") or "torch.nn.modules.activation.Tanh")
    if not activation.startswith("torch."):  # custom code: sentence-transformers needs trust_remote_code for it
        return None
    linear = nn.Linear(config["in_features"], config["out_features"], bias=config.get("bias", True))
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    else:
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    module_name, class_name = activation.rsplit(".", 1)
    return nn.Sequential(linear, getattr(importlib.import_module(module_name), class_name)()).eval()


def sentence_head(model: nn.Module) -> SentenceHead | None:
    """The sentence-transformers head of the folder ``model`` was loaded (or sliced) from, if it has one."""
    folder = getattr(model, "name_or_path", "") or ""
    return SentenceHead.from_folder(folder) if folder and Path(folder).is_dir() else None


def sentence_embedder(model: nn.Module, adapter) -> Callable[[dict], torch.Tensor]:
    """``inputs -> embedding``: the sentence-transformers embedding of a model loaded from such a folder, else
    the family's criterion embedding (``adapter.embed``)."""
    head = sentence_head(model) if adapter.modality == "text" else None
    if head is None:
        return lambda inputs: adapter.embed(model, inputs)
    backbone = adapter.backbone(model)
    return lambda inputs: head(backbone(**inputs).last_hidden_state, inputs.get("attention_mask"))
