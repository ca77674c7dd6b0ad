"""Zero-shot text classifiers for CLIP / SigLIP, and the image / text embeddings they are compared with.

A text classifier is one unit column per class: the normalised mean over prompt templates of the
normalised text embeddings of ``template.format(classname)`` (CLIP's prompt ensembling, as in
clip_benchmark). Pruning leaves the text tower alone, so a classifier built once from the original
model serves every pruned variant: it is cached as safetensors under a key derived from the text tower's
weights, the tokenised prompts, the class names and the templates.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..families import UnsupportedModelError, get_adapter
from ..files.cache import cache_root

# The 7-template subset CLIP's authors found best for ImageNet (CLIP repo, notebooks/Prompt_Engineering).
DEFAULT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
CLASSIFIER_TENSOR = "classifier"
_TEXT_TOWER_PREFIX = "text_"  # CLIPModel / SiglipModel: text_model.*, text_projection.*


def has_text_tower(model: nn.Module) -> bool:
    return hasattr(model, "get_text_features")


def image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The image embedding that lives in the image-text space (after CLIP's visual projection)."""
    if hasattr(model, "get_image_features"):  # CLIPModel, SiglipModel and their amp_* versions
        return model.get_image_features(pixel_values=pixel_values).pooler_output
    joint = get_adapter(model).joint_embedding  # e.g. CLIPVisionModelWithProjection's image_embeds
    outputs = model(pixel_values=pixel_values)
    if joint is not None and getattr(outputs, joint, None) is not None:
        return getattr(outputs, joint)
    raise UnsupportedModelError(
        f"{type(model).__name__} has no image-text embedding space (CLIPVisionModel stops before the visual "
        "projection): evaluate a CLIPModel / CLIPVisionModelWithProjection / SigLIP checkpoint, or use --task knn"
    )


def tokenize(tokenizer, texts: Sequence[str], model: nn.Module) -> dict[str, torch.Tensor]:
    """Tokenise as the model was trained: SigLIP pads to the full length, CLIP pads to the longest text."""
    text_config = getattr(model.config, "text_config", model.config)  # CLIP/SigLIP sub-config, or the model's own
    max_length = text_config.max_position_embeddings
    padding = "max_length" if get_adapter(model).text_padding == "max_length" else True
    return dict(tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt"))


@torch.no_grad()
def text_features(model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Text embeddings (before normalisation) of ``texts``, batch by batch."""
    if not has_text_tower(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no text tower: pass the original CLIP/SigLIP model as the text model "
            "(--text-model), or a saved text classifier (--classifier)"
        )
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        inputs = tokenize(tokenizer, texts[start : start + batch_size], model)
        inputs = {name: value.to(device) for name, value in inputs.items()}
        chunks.append(model.get_text_features(**inputs).pooler_output.float().cpu())
    return torch.cat(chunks)


def build_text_classifier(
    model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> torch.Tensor:
    """(embedding dim, num classes): per class, the re-normalised mean of its normalised prompt embeddings."""
    _check_templates(templates)
    prompts = [template.format(name) for name in classnames for template in templates]
    embeddings = F.normalize(text_features(model, tokenizer, prompts), dim=-1)
    per_class = embeddings.view(len(classnames), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1).T.contiguous()


def classifier_key(model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """Cache key: identical for every model sharing the text tower (pruned or not) and prompt set."""
    digest = hashlib.sha256()
    if hasattr(model, "text_tower_state_dict"):  # open_clip: the text tower is not under one prefix
        text_tower = model.text_tower_state_dict()
    else:
        text_tower = {name: t for name, t in model.state_dict().items() if name.startswith(_TEXT_TOWER_PREFIX)}
    for name, tensor in sorted(text_tower.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    prompts = [template.format(name) for name in classnames for template in templates]
    digest.update(json.dumps(tokenize(tokenizer, prompts, model)["input_ids"].tolist()).encode())
    digest.update(json.dumps([list(classnames), list(templates)]).encode())
    return digest.hexdigest()[:24]


def save_text_classifier(
    classifier: torch.Tensor, path: str | os.PathLike, classnames: Sequence[str], templates: Sequence[str]
) -> Path:
    """Write the classifier as safetensors (class names and templates in the metadata), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"classnames": json.dumps(list(classnames)), "templates": json.dumps(list(templates))}
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file({CLASSIFIER_TENSOR: classifier.contiguous()}, staging, metadata=metadata)
        os.replace(staging, path)
    finally:
        Path(staging).unlink(missing_ok=True)
    return path


def load_text_classifier(path: str | os.PathLike) -> tuple[torch.Tensor, list[str], list[str]]:
    """``(classifier, classnames, templates)`` from a file written by ``save_text_classifier``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text classifier {path} does not exist: build one with a model that has a text tower")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"{path} is not a safetensors file ({error}): pass a classifier amp-hf saved") from error
    if "classnames" not in metadata:
        raise ValueError(f"{path} is not an amp-hf text classifier (no class names in its metadata)")
    classifier = load_file(str(path))[CLASSIFIER_TENSOR]
    return classifier, json.loads(metadata["classnames"]), json.loads(metadata["templates"])


def cached_text_classifier(
    model: nn.Module,
    tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[torch.Tensor, Path]:
    """The text classifier for ``model``'s text tower, built on first use and loaded from the cache after.

    Returns ``(classifier, cache file)``; the cache defaults to ``<amp-hf cache>/text_classifiers``.
    """
    directory = Path(cache_dir) if cache_dir is not None else cache_root() / "text_classifiers"
    path = directory / f"{classifier_key(model, tokenizer, classnames, templates)}.safetensors"
    if path.is_file():
        return load_text_classifier(path)[0], path
    classifier = build_text_classifier(model, tokenizer, classnames, templates)
    save_text_classifier(classifier, path, classnames, templates)
    return classifier, path


def _check_templates(templates: Sequence[str]) -> None:
    if not templates:
        raise ValueError("need at least one prompt template, e.g. 'a photo of a {}.'")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' for the class name")
