"""Pruning criteria: the scalar whose change the Taylor scores estimate and the search watches.

``entropy`` is AMP's label-free criterion: L2-normalised embeddings, gathered across processes with autograd,
softmax of ``s_ij / τ`` over every gathered sample (diagonal included), mean entropy of the local rows, in fp32
and nats. ``ce`` is labelled cross-entropy (classifier heads; CLIP/SigLIP zero-shot logits from class prompts).
A criterion is prepared once and called per batch with the model's ``MlpStack`` (its model and adapter).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data import model_inputs
from ..families import MlpStack
from .config import CriterionConfig


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process in rank order, keeping autograd through the gather."""
    if _world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def similarity_entropy(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean (over local rows) entropy of the in-batch image-to-image similarity softmax, in nats."""
    local = F.normalize(embeddings.float(), dim=-1)
    every = gather_with_grad(local)
    log_p = (local @ every.T / temperature).log_softmax(dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean()


class EntropyCriterion:
    """AMP's label-free in-batch similarity entropy on the adapter's embedding."""

    def __init__(self, config: CriterionConfig):
        self.temperature = config.temperature

    def prepare(self, stack: MlpStack, processor=None) -> None:
        pass

    def __call__(self, stack: MlpStack, batch: dict) -> torch.Tensor:
        return similarity_entropy(stack.adapter.embed(stack.model, model_inputs(batch)), self.temperature)


class CrossEntropyCriterion:
    """Labelled cross-entropy: a classifier head's logits, or CLIP/SigLIP zero-shot logits from class prompts."""

    def __init__(self, config: CriterionConfig):
        self.config = config
        self.text_classifier = None

    def prepare(self, stack: MlpStack, processor=None) -> None:
        model = stack.model
        if hasattr(model, "get_text_features") and hasattr(model, "get_image_features"):
            if not self.config.class_names:
                raise ValueError(
                    "criterion ce on a CLIP/SigLIP model needs criterion.class_names (zero-shot classes)"
                )
            tokenizer = getattr(processor, "tokenizer", processor)
            if tokenizer is None:
                raise ValueError("criterion ce on a CLIP/SigLIP model needs the checkpoint's tokenizer")
            from ..evaluation.zero_shot import build_text_classifier  # the classifier `amp-hf eval --task zeroshot` uses

            classifier = build_text_classifier(model, tokenizer, self.config.class_names,
                                               [self.config.prompt_template])
            self.text_classifier = classifier.T.to(next(model.parameters()).device)  # (classes, dim), unit rows
        elif not stack.adapter.has_classifier_head(model):
            raise ValueError(
                f"criterion ce needs a classifier head or a CLIP/SigLIP model; {type(model).__name__} has neither: "
                "use criterion.name=entropy"
            )

    def __call__(self, stack: MlpStack, batch: dict) -> torch.Tensor:
        model = stack.model
        if "labels" not in batch:
            raise ValueError("criterion ce needs labelled data: the data source has no label column")
        inputs = model_inputs(batch)
        if self.text_classifier is not None:
            image = model.get_image_features(**inputs)
            image = F.normalize(getattr(image, "pooler_output", image).float(), dim=-1)
            logits = model.logit_scale.exp().float() * image @ self.text_classifier.T
        else:
            logits = model(**inputs).logits.float()
        return F.cross_entropy(logits, batch["labels"])


CRITERIA = {"entropy": EntropyCriterion, "ce": CrossEntropyCriterion}


def build_criterion(config: CriterionConfig):
    return CRITERIA[config.name](config)
