"""Distillation losses (pure functions of student and teacher outputs, computed in fp32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LossConfig
from .features import FeatureOutputs


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over all elements of the (batch, tokens, dim) tensors; ``mask`` (batch, tokens)
    drops padding tokens from the mean."""
    error = (student.float() - teacher.float()).pow(2)
    if mask is None:
        return error.mean()
    weights = mask.to(error.dtype).unsqueeze(-1)
    return (error * weights).sum() / (weights.sum() * error.shape[-1]).clamp(min=1.0)


def similarity_log_softmax(embeddings: torch.Tensor, temp_inv: float) -> torch.Tensor:
    """Row-wise log-softmax of the in-batch cosine similarities times ``temp_inv`` (diagonal included)."""
    normalised = F.normalize(embeddings.float(), dim=-1)
    return F.log_softmax(normalised @ normalised.T * temp_inv, dim=-1)


def entropy_kl(student: torch.Tensor, teacher: torch.Tensor, temp_inv: float) -> torch.Tensor:
    """Symmetric KL between the teacher's and the student's in-batch similarity distributions.

    For each sample i, p_i = softmax_j(cos(z_i, z_j) * temp_inv) over the batch; the loss is
    ½ · mean_i [KL(p_teacher_i ‖ p_student_i) + KL(p_student_i ‖ p_teacher_i)].
    """
    log_p_student = similarity_log_softmax(student, temp_inv)
    log_p_teacher = similarity_log_softmax(teacher, temp_inv)
    forward = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    backward = F.kl_div(log_p_teacher, log_p_student, log_target=True, reduction="batchmean")
    return 0.5 * (forward + backward)


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch."""
    log_p_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * temperature**2


def distillation_losses(
    student: FeatureOutputs, teacher: FeatureOutputs, config: LossConfig
) -> dict[str, torch.Tensor]:
    """Every enabled term (unweighted) plus ``"total"``, their weighted sum."""
    terms: dict[str, torch.Tensor] = {}
    if config.cls:
        terms["cls"] = masked_mse(student.summary, teacher.summary)
    if config.tokens:
        terms["tokens"] = masked_mse(student.tokens, teacher.tokens, student.token_mask)
    if config.entropy:
        terms["entropy"] = entropy_kl(student.summary, teacher.summary, config.temp_inv)
    if config.logits:
        terms["logits"] = logit_kd(student.logits, teacher.logits, config.logit_temperature)
    weights = {"cls": config.cls, "tokens": config.tokens, "entropy": config.entropy, "logits": config.logits}
    terms["total"] = sum(weights[name] * value for name, value in terms.items())
    return terms
