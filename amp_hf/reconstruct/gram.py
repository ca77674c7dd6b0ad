"""Closed-form refit of one pruned MLP's output projection from streamed Gram matrices (float64, CPU).

Notation: h ∈ R^H is the input of the output projection (the post-activation hidden state, for plain MLPs and
SwiGLU alike) and h̃ = [h; 1]. The Gram matrix F = Σ_tokens h̃ h̃ᵀ is everything a layer needs, whichever
neurons it keeps, and its corner entry F[H, H] counts the tokens. With S the kept neurons (plus the bias
coordinate when the projection has a bias) and D the dropped ones, the sliced layer misses W_D h_D of the full
output W h + b. The correction Δ of the kept columns (and bias) minimises

    Σ_tokens ||W_D h_D − Δ h̃_S||² + λ·s·||Δ_neurons||²,   s = mean of diag(F) over the kept neurons,

i.e. ridge regression pulled toward the *sliced* weights rather than toward zero: λ → ∞ is plain slicing, a
layer that keeps every neuron has nothing to correct, and directions the data cannot pin down stay sliced.
The bias is not damped. Normal equations: Δ (F_SS + λ·s·P) = W_D F_DS.

The error of any Δ on other tokens is a quadratic form in their Gram matrix, so choosing λ on held-out tokens
and comparing with plain slicing needs no stored activations: memory stays O(H²), not O(tokens·H).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

# Fewer fit tokens than unknowns: the data alone cannot determine Δ, so every damping is at least this.
UNDERDETERMINED_DAMPING = 0.1
# A damping that leaves the system numerically singular is raised tenfold, at most this many times. Cholesky
# of an exactly singular float64 matrix often "succeeds" with a rounding-sized pivot and a garbage solution,
# so a pivot this small relative to the largest counts as singular (condition number above ~1e12).
MAX_DAMPING_RAISES = 8
MIN_RELATIVE_PIVOT = 1e-12
_GRAM_CHUNK_ROWS = 4096  # tokens per float64 block: bounds the temporary copy of the activations


def new_gram(width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """An empty (H + 1) x (H + 1) float64 Gram matrix of [h; 1]."""
    return torch.zeros(width + 1, width + 1, dtype=torch.float64, device=device)


@torch.no_grad()
def accumulate_gram(gram: torch.Tensor, hidden: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
    """Add Σ h̃ h̃ᵀ over the tokens of ``hidden`` (..., H) to ``gram`` in place.

    ``token_mask`` (hidden.shape[:-1], nonzero = real token) drops padding tokens of text encoders. The
    product runs in float64 on ``gram``'s device, in row blocks so a large batch never needs a float64
    copy of all its activations at once.
    """
    tokens = hidden[token_mask.bool()] if token_mask is not None else hidden.reshape(-1, hidden.shape[-1])
    for start in range(0, tokens.shape[0], _GRAM_CHUNK_ROWS):
        block = tokens[start : start + _GRAM_CHUNK_ROWS].to(gram.device, torch.float64)
        block = torch.cat([block, block.new_ones(block.shape[0], 1)], dim=1)
        gram.addmm_(block.T, block)


@dataclass
class RefitResult:
    """Outcome of one layer's refit. ``delta`` is None when the layer should stay plainly sliced."""

    delta: torch.Tensor | None  # (out_features, kept [+ 1 for the bias]) correction, kept order, bias last
    error_sliced: float | None  # held-out error of plain slicing, relative to the full output's energy
    error_refit: float | None  # held-out relative error of the chosen refit
    damping: float | None  # the λ used (after any raise)
    reason: str | None = None  # why the layer stays sliced
    damping_errors: dict[float, float] = field(default_factory=dict)  # λ tried -> held-out relative error
    notes: list[str] = field(default_factory=list)  # damping raised, candidates skipped, ...


def _quadratic(matrix: torch.Tensor, gram: torch.Tensor) -> float:
    """Σ_tokens ||matrix · h̃||², i.e. trace(matrix · F · matrixᵀ), clamped at 0 against rounding."""
    return max(float(((matrix @ gram) * matrix).sum()), 0.0)


def _solve(gram_ss: torch.Tensor, rhs: torch.Tensor, penalty: torch.Tensor, damping: float):
    """Δ with Δ (F_SS + damping·penalty) = rhs; raise damping tenfold while the system is numerically singular."""
    for attempt in range(MAX_DAMPING_RAISES + 1):
        system = gram_ss.clone()
        system.diagonal().add_(penalty * damping)
        factor, info = torch.linalg.cholesky_ex(system)
        pivots = factor.diagonal() ** 2
        if info == 0 and pivots.min() > MIN_RELATIVE_PIVOT * pivots.max():
            delta = torch.cholesky_solve(rhs.T, factor).T.contiguous()
            if torch.isfinite(delta.sum()):  # a NaN or inf entry makes the sum non-finite (one cheap reduction)
                return delta, damping, attempt > 0
        damping = max(10.0 * damping, 1e-8)
    return None, damping, True


def solve_correction(gram_ss: torch.Tensor, rhs: torch.Tensor, heldout_ss: torch.Tensor, heldout_cross: torch.Tensor,
                     heldout_missed: float, energy: float, fit_tokens: int, has_bias: bool,
                     dampings: Sequence[float], scale: float, notes: list[str] | None = None) -> RefitResult:
    """The damped solve of a correction Δ on the support coordinates s̃ (kept neurons, then the bias coordinate
    when ``has_bias``), for any target r the projection should add: ``gram_ss`` = Σ_fit s̃ s̃ᵀ, ``rhs`` =
    Σ_fit r s̃ᵀ, and on the held-out tokens ``heldout_ss``, ``heldout_cross`` = Σ r s̃ᵀ and ``heldout_missed``
    = Σ ||r||² (the error of leaving the projection as it is). The held-out error of Δ is
    Σ ||r − Δ s̃||² = missed − 2⟨Δ, cross⟩ + ⟨Δ·ss, Δ⟩, relative to ``energy``; ``scale`` multiplies the
    relative damping (the mean kept diagonal). ``delta`` is None when no damping beats leaving it."""
    notes = list(notes or [])
    error_sliced = heldout_missed / energy
    support = gram_ss.shape[0]
    candidates = sorted({float(d) for d in dampings})
    if fit_tokens < support:
        floor = UNDERDETERMINED_DAMPING
        notes.append(
            f"{fit_tokens} fit tokens for {support} unknowns: damping raised to at least "
            f"{floor:g} (use more calibration samples)"
        )
        candidates = sorted({max(d, floor) for d in candidates})

    penalty = torch.ones(support, dtype=torch.float64)
    if has_bias:
        penalty[-1] = 0.0  # the bias is not damped (its column alone keeps the system definite)
    penalty *= scale if scale > 0 else 1.0

    best: tuple[float, float, torch.Tensor] | None = None
    errors: dict[float, float] = {}
    for requested in candidates:
        delta, used, raised = _solve(gram_ss, rhs, penalty, requested)
        if delta is None:
            notes.append(f"damping {requested:g}: no positive-definite system up to {used:g}, skipped")
            continue
        if raised:
            notes.append(f"damping {requested:g} raised to {used:g}: the Gram matrix is numerically singular")
        error = heldout_missed - 2 * float((delta * heldout_cross).sum()) + float(((delta @ heldout_ss) * delta).sum())
        errors[used] = max(error, 0.0) / energy
        if best is None or errors[used] < best[0]:
            best = (errors[used], used, delta)

    if best is None:
        return RefitResult(None, error_sliced, None, None, "no damping gave a finite solution", errors, notes)
    error, damping, delta = best
    if not error < error_sliced:
        reason = f"held-out error {error:.4g} is not below plain slicing's {error_sliced:.4g}"
        return RefitResult(None, error_sliced, error, damping, reason, errors, notes)
    return RefitResult(delta, error_sliced, error, damping, None, errors, notes)


class ProjectionRefit:
    """The refits of one output projection ``weight`` (out x H, ``bias``) from its fit and held-out Gram
    matrices, for any set of kept neurons. What does not depend on the kept set (float64 copies, finiteness,
    the full output's held-out energy) is computed once, so the search's many candidates of one layer are
    one small solve each."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gram_fit: torch.Tensor,
                 gram_heldout: torch.Tensor):
        self.weight = weight.detach().to("cpu", torch.float64)
        self.has_bias = bias is not None
        self.gram_fit = gram_fit.to("cpu", torch.float64)
        self.gram_heldout = gram_heldout.to("cpu", torch.float64)
        self.finite = bool(torch.isfinite(self.gram_fit).all() and torch.isfinite(self.gram_heldout).all())
        out_features, width = self.weight.shape
        full = torch.zeros(out_features, width + 1, dtype=torch.float64)  # [W, b]: the full layer's output map
        full[:, :width] = self.weight
        if bias is not None:
            full[:, width] = bias.detach().to("cpu", torch.float64)
        self.energy = (_quadratic(full, self.gram_heldout) or 1.0) if self.finite else 1.0

    def refit(self, kept: Sequence[int], dampings: Sequence[float]) -> RefitResult:
        """``refit_output_projection`` for the kept neurons ``kept``."""
        width = self.weight.shape[1]
        kept = torch.as_tensor(list(kept), dtype=torch.long)
        is_dropped = torch.ones(width, dtype=torch.bool)
        is_dropped[kept] = False
        dropped = is_dropped.nonzero().squeeze(1)
        support = torch.cat([kept, torch.tensor([width])]) if self.has_bias else kept
        if not self.finite:
            return RefitResult(None, None, None, None, reason="non-finite activations")
        weight_dropped = self.weight.index_select(1, dropped)  # what plain slicing leaves out: W_D h_D
        heldout_dropped = self.gram_heldout.index_select(0, dropped)
        missed = _quadratic(weight_dropped, heldout_dropped.index_select(1, dropped))
        if len(dropped) == 0:
            return RefitResult(None, missed / self.energy, None, None, reason="keeps every neuron")
        gram_fit = self.gram_fit
        return solve_correction(
            gram_fit.index_select(0, support).index_select(1, support),
            weight_dropped @ gram_fit.index_select(0, dropped).index_select(1, support),
            self.gram_heldout.index_select(0, support).index_select(1, support),
            weight_dropped @ heldout_dropped.index_select(1, support), missed,
            self.energy, int(gram_fit[width, width]), self.has_bias, dampings,
            float(gram_fit.diagonal()[kept].mean()))


def refit_output_projection(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kept: Sequence[int],
    gram_fit: torch.Tensor,
    gram_heldout: torch.Tensor,
    dampings: Sequence[float],
) -> RefitResult:
    """Refit the kept columns (and bias) of an output projection ``weight`` (out x H) on ``gram_fit``.

    Every damping in ``dampings`` (relative: λ multiplies the mean kept diagonal of the Gram matrix) is
    solved; the one with the lowest error on ``gram_heldout`` wins. The layer stays sliced (``delta`` None,
    ``reason`` says why) when it keeps every neuron, when its activations are not finite, or when no damping
    beats plain slicing on the held-out tokens.
    """
    return ProjectionRefit(weight, bias, gram_fit, gram_heldout).refit(kept, dampings)
