"""What distillation compares: the last block's output before the final norm, split into summary and tokens.

In transformers 5.23 the last entry of ``hidden_states`` (``output_hidden_states=True``) is the output of
the last encoder layer, before any final norm, for every supported family: ViT, DINOv2 and SigLIP apply
their final LayerNorm afterwards, CLIP applies ``post_layernorm`` only to the pooled CLS token, and BERT has
no final norm (tests/test_distill.py pins this per family).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..families import FamilyAdapter


class FeatureModel(nn.Module):
    """Runs a model and returns the last block's pre-final-norm hidden states (and logits if asked).

    This is the module ``accelerator.prepare`` wraps for the student, so DDP / FSDP see one forward that
    produces every tensor the losses read. Without logits only the backbone runs (e.g. the vision tower
    of a CLIPModel, which needs no text input).
    """

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, with_logits: bool = False):
        super().__init__()
        self.model = model
        self.with_logits = with_logits
        self.adapter = adapter
        backbone = adapter.backbone(model)
        # A path, not a module attribute: a second reference would duplicate the weights in state_dict().
        # None: the backbone is a view that owns no weights (timm, open_clip wrappers), rebuilt per call.
        self.backbone_path = next((name for name, module in model.named_modules() if module is backbone), None)

    def _backbone(self) -> nn.Module:
        if self.backbone_path is None:
            return self.adapter.backbone(self.model)
        return self.model.get_submodule(self.backbone_path)

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        runner = self.model if self.with_logits else self._backbone()
        outputs = runner(**batch, output_hidden_states=True)
        result = {"hidden": outputs.hidden_states[-1]}
        if self.with_logits:
            result["logits"] = outputs.logits
        return result


@dataclass
class FeatureOutputs:
    summary: torch.Tensor  # (batch, dim)
    tokens: torch.Tensor  # (batch, tokens, dim)
    token_mask: torch.Tensor | None  # (batch, tokens); None = every token counts
    logits: torch.Tensor | None = None


def split_features(outputs: dict[str, torch.Tensor], batch: dict, summary: str) -> FeatureOutputs:
    """Summary token and remaining tokens of ``FeatureModel`` outputs (padding masked for text).

    ``summary``: the family's ``FamilyAdapter.summary``: ``"cls"`` (the first token) or ``"mean"`` (the
    attention-masked mean of every token)."""
    hidden = outputs["hidden"]
    mask = batch.get("attention_mask")
    if summary == "cls":
        summary, tokens = hidden[:, 0], hidden[:, 1:]
        mask = mask[:, 1:] if mask is not None else None
    else:
        tokens = hidden
        if mask is None:
            summary = hidden.mean(dim=1)
        else:
            weights = mask.to(hidden.dtype).unsqueeze(-1)
            summary = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return FeatureOutputs(summary=summary, tokens=tokens, token_mask=mask, logits=outputs.get("logits"))
