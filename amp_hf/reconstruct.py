"""Training-free recovery: refit every pruned MLP's output projection on calibration activations.

After a PrunePlan is chosen (by any method), each layer's output projection is refit in closed form so the kept
neurons reproduce the full MLP output on calibration tokens (math in ``refit``). Layers are processed first
to last, each run alone through the model's own forward (earlier layers skipped, their cached output
injected: ``layer_stack.run_layer``), so one pass per layer suffices:

* ``independent``: every layer sees the original network's activations;
* ``sequential``: every layer sees the activations of the already pruned and refit prefix (the inputs it will
  actually get), and is fit to reproduce its full MLP on them, so the fit is not made on inputs that no
  longer occur.

Guard rails: the calibration batches are split into fit and held-out batches; the damping is chosen per layer
by held-out error, and a layer whose held-out error would not drop stays plainly sliced. Then the end-to-end
criterion (e.g. AMP's entropy) on the held-out batches decides, against the original model's value: refit
layers whose plain slicing brings it closer are reverted one by one, and if the result is still further from
the original than plain slicing, the whole model falls back to plain slicing. Gram matrices are all-reduced
across ``accelerate`` processes, so N processes give the 1-process result.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import DataConfig, DataError, model_inputs
from .families import MlpStack, resolve
from .layer_stack import run_layer
from .plan import PrunePlan
from .refit import RefitResult, accumulate_gram, new_gram, refit_output_projection
from .selection import CRITERIA, CriterionConfig, CriterionEvaluator, build_criterion
from .slicing import slice_stack

logger = logging.getLogger(__name__)


@dataclass
class ReconstructConfig:
    """The ``reconstruct:`` section of a prune config."""

    enabled: bool = False
    mode: Literal["sequential", "independent"] = "sequential"
    damping: float | None = None  # fixed relative ridge λ; None = best of damping_candidates on held-out tokens
    damping_candidates: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    heldout_fraction: float = 0.25  # share of the calibration batches held out (damping choice, fallbacks)
    data: DataConfig | None = None  # calibration data (default: the scoring data)
    num_samples: int | None = None  # calibration samples (default: the data config's num_samples)
    end_to_end_check: bool = True  # revert refits that move the held-out criterion away from the original's
    # A per-layer revert must close at least this share of the sliced model's criterion gap to the original:
    # smaller changes are within the noise of a few held-out batches.
    revert_margin: float = 0.05

    def __post_init__(self):
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(
                f"reconstruct.heldout_fraction must be in (0, 1) (e.g. 0.25); got {self.heldout_fraction}"
            )
        if self.damping is not None and self.damping < 0:
            raise ValueError("reconstruct.damping must be >= 0 (a relative ridge strength, e.g. 0.001)")
        if not self.damping_candidates or any(d < 0 for d in self.damping_candidates):
            raise ValueError("reconstruct.damping_candidates must be a non-empty list of values >= 0")
        if self.revert_margin < 0:
            raise ValueError("reconstruct.revert_margin must be >= 0 (a share of the criterion gap, e.g. 0.05)")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError("reconstruct.num_samples must be >= 1 (or null for the data config's)")

    @property
    def dampings(self) -> list[float]:
        return [self.damping] if self.damping is not None else list(self.damping_candidates)

    def calibration_data(self, default: DataConfig) -> DataConfig:
        """The calibration data: ``data`` (or ``default``) with ``num_samples`` applied."""
        data = self.data or default
        return replace(data, num_samples=self.num_samples) if self.num_samples is not None else data


@dataclass
class LayerReport:
    layer: int
    width: int
    original_width: int
    status: Literal["reconstructed", "sliced"]
    reason: str | None  # why the layer stays sliced
    damping: float | None
    error_sliced: float | None  # held-out output error relative to the full MLP output's energy
    error_reconstructed: float | None
    damping_errors: dict[float, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class ReconstructionReport:
    mode: str
    kept: Literal["reconstructed", "sliced"]  # what the returned model holds
    fallback: str | None  # why the whole model was returned plainly sliced
    samples_fit: int
    samples_heldout: int
    tokens_fit: int
    tokens_heldout: int
    criterion: dict  # held-out values: original, sliced, reconstructed (returned model), all_layers_refit
    fidelity: dict  # held-out mean cosine of the embedding to the original's: sliced, reconstructed
    layers: list[LayerReport]
    wall_time_s: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the command line."""
        if self.kept == "sliced":
            return f"reconstruction ({self.mode}): returned plainly sliced ({self.fallback})"
        refit = sum(r.status == "reconstructed" for r in self.layers)
        return (f"reconstruction ({self.mode}): {refit}/{len(self.layers)} layers refit; held-out embedding cosine "
                f"to the original {self.fidelity['sliced']:.4f} (sliced) -> {self.fidelity['reconstructed']:.4f}")

    def provenance(self) -> dict:
        """The compact summary stored in ``config.amp_pruning["reconstruction"]``."""
        return {
            "mode": self.mode,
            "kept": self.kept,
            "fallback": self.fallback,
            "samples": {"fit": self.samples_fit, "heldout": self.samples_heldout},
            "tokens": {"fit": self.tokens_fit, "heldout": self.tokens_heldout},
            "layers_reconstructed": [r.layer for r in self.layers if r.status == "reconstructed"],
            "damping": [r.damping if r.status == "reconstructed" else None for r in self.layers],
            "layer_fallbacks": {str(r.layer): r.reason for r in self.layers if r.status == "sliced"},
            "layer_notes": {str(r.layer): r.notes for r in self.layers if r.notes},  # damping raised, ...
            "heldout_error": {
                "sliced": [r.error_sliced for r in self.layers],
                "reconstructed": [r.error_reconstructed if r.status == "reconstructed" else r.error_sliced
                                  for r in self.layers],
            },
            "criterion": self.criterion,
            "fidelity": self.fidelity,
        }


class _InputCaptured(Exception):
    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden


@torch.no_grad()
def _layer_input(stack: MlpStack, index: int, batch: dict) -> torch.Tensor:
    """The input of layer ``index`` for ``batch`` (a forward pass stopped there)."""

    def capture(module, args):
        raise _InputCaptured(args[0])

    handle = stack.layers[index].register_forward_pre_hook(capture)
    try:
        stack.backbone(**model_inputs(batch))
    except _InputCaptured as captured:
        return captured.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"layer {index} of {type(stack.model).__name__} did not run in the forward pass")


def _output(stack: MlpStack, index: int) -> nn.Linear:
    layer, neuron_map = stack.mlps()[index]
    return neuron_map.output(layer)


@torch.no_grad()
def projection_grams(model: nn.Module | MlpStack, index: int, batches: Sequence[dict], inputs: Sequence | None,
                     is_fit: Sequence[bool], accelerator=None, keep_outputs: bool = False):
    """Fit and held-out Gram matrices (``refit.new_gram``) of the input of layer ``index``'s MLP output
    projection, summed over the batches marked fit / held out and all-reduced across processes; and the
    layer's outputs when ``keep_outputs`` (else Nones).

    ``inputs``: each batch's input to the layer (None entries, or ``inputs=None``: computed by a forward pass
    through the layers before it).
    """
    stack = resolve(model)
    width = _output(stack, index).in_features
    device = next(stack.model.parameters()).device
    grams = {True: new_gram(width, device), False: new_gram(width, device)}
    outputs = []
    for position, (batch, fit) in enumerate(zip(batches, is_fit)):
        hidden = inputs[position] if inputs is not None else None
        if hidden is None and index > 0:
            hidden = _layer_input(stack, index, batch)

        def collect(h, batch=batch, gram=grams[fit]):
            accumulate_gram(gram, h, _token_mask(batch, h))

        output = run_layer(stack, index, batch, hidden, collect)
        outputs.append(output if keep_outputs else None)
    fit, heldout = (_reduce(grams[k], accelerator).cpu() for k in (True, False))
    return fit, heldout, outputs


def corrected_projection(original: nn.Linear, kept: Sequence[int], delta: torch.Tensor):
    """(weight, bias) of the sliced output projection plus the refit correction ``delta`` (``refit`` layout:
    kept columns, then the bias), in ``original``'s dtype and device."""
    weight = original.weight.detach().to("cpu", torch.float64)[:, list(kept)] + delta[:, : len(kept)]
    bias = None
    if original.bias is not None:
        bias = (original.bias.detach().to("cpu", torch.float64) + delta[:, len(kept)]).to(
            original.bias.device, original.bias.dtype)
    return weight.to(original.weight.device, original.weight.dtype), bias


def _token_mask(batch: dict, hidden: torch.Tensor) -> torch.Tensor | None:
    """Text encoders: the attention mask (padding tokens do not count); images: every token counts."""
    mask = batch.get("attention_mask")
    return mask if mask is not None and tuple(mask.shape) == tuple(hidden.shape[:-1]) else None


# -- the step ---------------------------------------------------------------------------------------------


def reconstruction_is_closer(criterion: dict) -> bool:
    """The end-to-end rule on held-out criterion values {"original", "sliced", "reconstructed"}.

    The goal is the original model's behaviour, and pruning can move AMP's entropy either way (it often
    drops), so what counts is the distance to the original's value, not the sign of the change.
    """
    original = criterion["original"]
    return abs(criterion["reconstructed"] - original) <= abs(criterion["sliced"] - original)


def split_heldout(batches: Sequence[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """Fit batches first, the last ``fraction`` (at least one) held out. Whole batches keep the in-batch
    criterion meaningful and the split identical for any number of processes."""
    if len(batches) < 2:
        raise DataError(
            f"reconstruction needs at least 2 calibration batches (whole batches are held out) but got "
            f"{len(batches)}: raise reconstruct.num_samples or lower the data's batch_size"
        )
    heldout = min(len(batches) - 1, max(1, round(fraction * len(batches))))
    return list(batches[:-heldout]), list(batches[-heldout:])


@contextlib.contextmanager
def _eval_mode(*models: nn.Module):
    """Dropout would make the activations random: run in eval mode and restore the previous modes."""
    modes = [m.training for m in models]
    try:
        yield [m.eval() for m in models]
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def _reduce(tensor: torch.Tensor, accelerator) -> torch.Tensor:
    if accelerator is not None and accelerator.num_processes > 1:
        return accelerator.reduce(tensor, reduction="sum")
    return tensor


@torch.no_grad()
def _embeddings(stack: MlpStack, batches) -> list[torch.Tensor]:
    return [stack.adapter.embed(stack.model, model_inputs(batch)).float() for batch in batches]


@torch.no_grad()
def _mean_cosine(stack: MlpStack, batches, reference: list[torch.Tensor], accelerator) -> float:
    """Mean cosine of the embedding to ``reference`` over the held-out batches of all processes."""
    cosine = torch.zeros(2, dtype=torch.float64, device=reference[0].device)
    for embedding, target in zip(_embeddings(stack, batches), reference):
        cosine += torch.stack([F.cosine_similarity(embedding, target, dim=-1).double().sum(),
                               torch.tensor(float(len(target)), dtype=torch.float64, device=target.device)])
    cosine = _reduce(cosine, accelerator)
    return float(cosine[0] / cosine[1])


class _Refitter:
    """Walks the layers first to last, refitting ``pruned``'s output projections in place."""

    def __init__(self, model: MlpStack, pruned: MlpStack, plan: PrunePlan, fit, heldout, config: ReconstructConfig,
                 accelerator):
        self.model, self.pruned, self.plan, self.config = model, pruned, plan, config
        self.accelerator = accelerator
        self.batches = [*fit, *heldout]
        self.is_fit = [True] * len(fit) + [False] * len(heldout)
        # Both versions of every refit layer's output projection, so the end-to-end check can swap them.
        self.versions: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor | None]]] = {}
        self.tokens = (0, 0)

    def grams(self, index: int, inputs: list) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Fit and held-out Gram matrices of layer ``index`` of the original model on ``inputs``, and the
        original layer's outputs (kept only in independent mode, where they feed the next layer)."""
        return projection_grams(self.model, index, self.batches, inputs, self.is_fit, self.accelerator,
                                keep_outputs=self.config.mode == "independent")

    def refit_layer(self, index: int, gram_fit: torch.Tensor, gram_heldout: torch.Tensor) -> LayerReport:
        original = _output(self.model, index)
        kept = self.plan.kept[index]
        result = refit_output_projection(original.weight, original.bias, kept, gram_fit, gram_heldout,
                                         self.config.dampings)
        for note in result.notes:
            logger.warning("reconstruct layer %d: %s", index, note)
        if result.delta is not None:
            target = _output(self.pruned, index)
            self.versions[index] = {
                "sliced": (target.weight.detach().clone(), None if target.bias is None else target.bias.detach().clone()),
                "reconstructed": corrected_projection(original, kept, result.delta),
            }
            self.install(index, "reconstructed")
        return LayerReport(
            layer=index, width=len(kept), original_width=self.plan.original_widths[index],
            status="reconstructed" if result.delta is not None else "sliced", reason=result.reason,
            damping=result.damping, error_sliced=result.error_sliced, error_reconstructed=result.error_refit,
            damping_errors=result.damping_errors, notes=result.notes,
        )

    @torch.no_grad()
    def run(self, progress: bool) -> list[LayerReport]:
        inputs: list[torch.Tensor | None] = [None] * len(self.batches)  # each batch's input to the current layer
        reports = []
        for index in tqdm(range(len(self.plan.kept)), desc=f"reconstruct ({self.config.mode})",
                          disable=not progress):
            gram_fit, gram_heldout, outputs = self.grams(index, inputs)
            if index == 0:
                self.tokens = (int(gram_fit[-1, -1]), int(gram_heldout[-1, -1]))
            reports.append(self.refit_layer(index, gram_fit, gram_heldout))
            if self.config.mode == "sequential":
                outputs = [run_layer(self.pruned, index, b, h) for b, h in zip(self.batches, inputs)]
            inputs = outputs
        return reports

    @torch.no_grad()
    def install(self, index: int, version: Literal["sliced", "reconstructed"]) -> None:
        weight, bias = self.versions[index][version]
        target = _output(self.pruned, index)
        target.weight.copy_(weight)
        if bias is not None:
            target.bias.copy_(bias)


class SearchRefit:
    """The refit inside AMP's search (``search.reconstruct``): for every candidate width of the searched layer,
    the closed-form refit of its output projection, so the criterion is measured on the refit model.

    The search runs last to first, so when layer l is searched everything before it is the original network:
    its Gram statistics come from cached layer inputs (the original activations, as in ``mode=independent``),
    once per layer, fit on the calibration ``batches`` (default: the evaluator's search batches) minus the
    held-out ones (``heldout_fraction``); the damping is chosen on the held-out ones at the layer's first
    candidate (the middle width) and every candidate is then one small solve. The
    statistics and solves are kept for the budget mode's repeated searches (within ``memory_gb``) and are
    all-reduced across processes like the evaluator's criterion, so N processes find the 1-process answer.
    ``guard`` (``end_to_end_check``): the search also evaluates the accepted width plainly sliced and keeps the
    slice when it is closer to the reference by more than ``revert_margin`` of its gap.
    """

    def __init__(self, model: nn.Module | MlpStack, evaluator: CriterionEvaluator,
                 config: ReconstructConfig | None = None, memory_gb: float = 4.0,
                 batches: Sequence[dict] | None = None):
        self.stack, self.evaluator = resolve(model), evaluator
        self.config = config or ReconstructConfig(enabled=True)
        # Where the layer inputs come from: the evaluator's own cache, or a cache of the calibration batches
        # (filled by one pass of the original model before the first layer is searched).
        self.inputs = evaluator if batches is None else CriterionEvaluator(
            self.stack, None, list(batches), evaluator.accelerator, memory_gb)
        fit, heldout = split_heldout(self.inputs.batches, self.config.heldout_fraction)
        self.is_fit = [True] * len(fit) + [False] * len(heldout)
        self.guard = self.config.end_to_end_check
        self.memory = memory_gb * 2**30
        self._grams: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._solutions: dict[tuple[int, tuple[int, ...]], tuple[tuple | None, RefitResult]] = {}
        self._cache_tried = False
        self._dampings: dict[int, list[float]] = {}
        self.tokens = (0, 0)

    def prepare(self, layer: int) -> None:
        """Gram statistics of ``layer``; call it while that layer and every layer before it are original."""
        if layer in self._grams:
            return
        if self.inputs.layer_inputs is None and self.inputs is not self.evaluator and not self._cache_tried:
            self._cache_tried = True
            self.inputs.cache_inputs()  # false when over the memory budget: prefix passes per layer instead
        cached = self.inputs.layer_inputs
        fit, heldout, _ = projection_grams(self.stack, layer, self.inputs.batches,
                                           cached[layer] if cached is not None else None, self.is_fit,
                                           self.evaluator.accelerator)
        self.tokens = (int(fit[-1, -1]), int(heldout[-1, -1]))
        size = 2 * fit.numel() * fit.element_size()
        for other in [k for k in self._grams if k != layer]:  # keep the newest statistics within the budget
            if size * (len(self._grams) + 1) <= self.memory:
                break
            del self._grams[other]
        self._grams[layer] = (fit, heldout)

    def _solve(self, layer: int, kept: list[int], full: nn.Linear) -> tuple[tuple | None, RefitResult]:
        key = (layer, tuple(kept))
        if key not in self._solutions:
            if layer not in self._grams:
                raise RuntimeError(f"SearchRefit.prepare({layer}) must run before the layer's candidates")
            fit, heldout = self._grams[layer]
            dampings = self._dampings.get(layer, self.config.dampings)
            result = refit_output_projection(full.weight, full.bias, kept, fit, heldout, dampings)
            if result.damping is not None:
                # chosen on held-out tokens at the layer's first candidate; its other candidates are one solve each
                self._dampings.setdefault(layer, [result.damping])
            projection = corrected_projection(full, kept, result.delta) if result.delta is not None else None
            if len(self._solutions) * full.weight.numel() * full.weight.element_size() > self.memory:
                self._solutions.clear()
            self._solutions[key] = (projection, result)
        return self._solutions[key]

    def projection(self, layer: int, kept: list[int], full: nn.Linear) -> tuple | None:
        """(weight, bias) of the refit output projection keeping ``kept`` (ascending) of ``full``'s inputs; None
        when the refit would not beat plain slicing on the held-out tokens (or keeps every neuron)."""
        return self._solve(layer, kept, full)[0]

    def prefers_sliced(self, sliced: float, refit: float, reference: float) -> bool:
        """The guard: plain slicing is closer to the reference by more than the margin of its own gap."""
        required = self.config.revert_margin * abs(sliced - reference)
        return abs(sliced - reference) < abs(refit - reference) - required

    def report(self, layer: int, kept: list[int], refit: bool) -> dict:
        """The chosen state of ``layer``: whether it holds the refit, its damping and held-out errors."""
        key = (layer, tuple(kept))
        result = self._solutions[key][1] if key in self._solutions else None
        reason = None if refit else (result.reason if result is not None and result.reason else
                                     "end-to-end: plain slicing is closer to the reference" if result is not None
                                     else "keeps every neuron")
        return {"layer": layer, "width": len(kept), "status": "reconstructed" if refit else "sliced",
                "reason": reason, "damping": result.damping if result is not None and refit else None,
                "error_sliced": result.error_sliced if result is not None else None,
                "error_reconstructed": result.error_refit if result is not None and refit else None,
                "notes": list(result.notes) if result is not None else []}


@torch.no_grad()
def install_search_refit(pruned: nn.Module | MlpStack, projections: dict[int, tuple], layers: list[dict]) -> dict:
    """Put the output projections the search refit (``SearchRefit``; ``layers``: its per-layer reports) into
    the sliced model ``pruned`` (best: the stack ``slice_stack`` returned) and record them in its provenance;
    returns that provenance."""
    stack = resolve(pruned)
    for index, (weight, bias) in projections.items():
        linear = _output(stack, index)
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    provenance = {
        "mode": "in_search",
        "kept": "reconstructed" if projections else "sliced",
        "layers_reconstructed": sorted(projections),
        "damping": [layer["damping"] for layer in layers],
        "layer_fallbacks": {str(layer["layer"]): layer["reason"] for layer in layers if layer["status"] == "sliced"},
        "heldout_error": {
            "sliced": [layer["error_sliced"] for layer in layers],
            "reconstructed": [layer["error_sliced"] if layer["error_reconstructed"] is None
                              else layer["error_reconstructed"] for layer in layers],
        },
    }
    stack.model.config.amp_pruning["reconstruction"] = provenance
    return {**provenance, "layers": layers}


def search_refit_summary(refit: dict) -> str:
    """One line for the command line."""
    return (f"reconstruction (in the search): {len(refit['layers_reconstructed'])}/{len(refit['damping'])} layers "
            "refit; the saved model is the one the search evaluated")


def _end_to_end_check(refitter: _Refitter, layers: list[LayerReport], evaluate, values: dict,
                      margin: float) -> str | None:
    """Revert refits the criterion rejects (per layer, then whole model); return the whole-model fallback reason."""
    _revert_harmful_refits(refitter, layers, evaluate, values, margin)
    if reconstruction_is_closer(values):
        return None
    for report in layers:
        if report.status == "reconstructed":
            refitter.install(report.layer, "sliced")
            report.status, report.reason = "sliced", "whole-model fallback"
    return (f"held-out criterion {values['reconstructed']:.6g} is further from the original's "
            f"{values['original']:.6g} than plain slicing's {values['sliced']:.6g}")


def _revert_harmful_refits(refitter: _Refitter, layers: list[LayerReport], evaluate, values: dict,
                           margin: float) -> None:
    """Per-layer end-to-end check, first layer to last: a refit layer goes back to plain slicing when that
    brings the held-out criterion closer to the original's by more than ``margin`` x the sliced model's gap.
    Layer-wise error alone misleads: on all-MiniLM-L6-v2 one output dimension holds ~98% of layer 0's MLP
    output energy, so a refit can win on squared error yet hurt the embedding."""
    original = values["original"]
    required = margin * abs(values["sliced"] - original)
    for report in layers:
        if report.status != "reconstructed":
            continue
        refitter.install(report.layer, "sliced")
        value = evaluate()
        if abs(value - original) < abs(values["reconstructed"] - original) - required:
            report.status = "sliced"
            report.reason = (f"end-to-end: held-out criterion {value:.6g} is closer to the original's "
                             f"{original:.6g} with this layer sliced than refit ({values['reconstructed']:.6g})")
            values["reconstructed"] = value
        else:
            refitter.install(report.layer, "reconstructed")


def _criterion_name(criterion) -> str:
    return next((name for name, cls in CRITERIA.items() if isinstance(criterion, cls)), type(criterion).__name__)


def reconstruct(
    model: nn.Module | MlpStack,
    plan: PrunePlan,
    batches: Sequence[dict],
    config: ReconstructConfig | None = None,
    accelerator=None,
    criterion=None,
    amp_pruning: dict | None = None,
) -> tuple[nn.Module, ReconstructionReport]:
    """``reconstruct_stack``, returning the pruned model itself."""
    pruned, report = reconstruct_stack(model, plan, batches, config, accelerator, criterion, amp_pruning)
    return pruned.model, report


def reconstruct_stack(
    model: nn.Module | MlpStack,
    plan: PrunePlan,
    batches: Sequence[dict],
    config: ReconstructConfig | None = None,
    accelerator=None,
    criterion=None,
    amp_pruning: dict | None = None,
) -> tuple[MlpStack, ReconstructionReport]:
    """Slice ``model`` by ``plan`` and refit every pruned layer's output projection; ``model`` is unchanged.

    ``batches``: this process's shards of the calibration batches (model inputs, labels optional); the last
    ``config.heldout_fraction`` of them are held out. ``criterion``: the end-to-end check (default: AMP's
    entropy criterion; must be ``prepare``-d). ``amp_pruning``: provenance for the new config (as in
    ``slice_model``); the reconstruction summary is added under ``"reconstruction"``.
    Returns the pruned model (reconstructed, or plainly sliced where that measured better), resolved, and the
    report.
    """
    started = time.time()
    stack = resolve(model)
    model = stack.model
    config = config or ReconstructConfig(enabled=True)
    criterion = criterion or build_criterion(CriterionConfig())
    fit, heldout = split_heldout(batches, config.heldout_fraction)
    pruned_stack = slice_stack(stack, plan, amp_pruning)
    pruned = pruned_stack.model
    progress = accelerator is None or accelerator.is_local_main_process
    with _eval_mode(model, pruned):
        def evaluate(candidate=pruned_stack) -> float:
            return CriterionEvaluator(candidate, criterion, heldout, accelerator).evaluate()

        reference = _embeddings(stack, heldout)
        sliced_cosine = _mean_cosine(pruned_stack, heldout, reference, accelerator)
        values = {"original": evaluate(stack), "sliced": evaluate()}
        refitter = _Refitter(stack, pruned_stack, plan, fit, heldout, config, accelerator)
        layers = refitter.run(progress)
        values["reconstructed"] = values["all_layers_refit"] = evaluate() if refitter.versions else values["sliced"]
        fallback = None
        if refitter.versions and config.end_to_end_check:
            fallback = _end_to_end_check(refitter, layers, evaluate, values, config.revert_margin)
            if fallback:
                logger.warning("reconstruct: %s; returning the plainly sliced model", fallback)
        if fallback is None and not any(report.status == "reconstructed" for report in layers):
            fallback = "no layer was refit (see the per-layer reasons)"
        kept = "sliced" if fallback else "reconstructed"
        if kept == "sliced":
            values["reconstructed"] = values["sliced"]
        refit_cosine = _mean_cosine(pruned_stack, heldout, reference, accelerator) if kept != "sliced" else sliced_cosine
    counts = [sum(len(next(iter(model_inputs(b).values()))) for b in part) for part in (fit, heldout)]
    samples = _reduce(torch.tensor(counts, dtype=torch.float64, device=next(model.parameters()).device), accelerator)
    report = ReconstructionReport(
        mode=config.mode, kept=kept, fallback=fallback,
        samples_fit=int(samples[0]), samples_heldout=int(samples[1]),
        tokens_fit=refitter.tokens[0], tokens_heldout=refitter.tokens[1],
        criterion={"name": _criterion_name(criterion), **values},
        fidelity={"sliced": sliced_cosine, "reconstructed": refit_cosine},  # the returned model's
        layers=layers, wall_time_s=round(time.time() - started, 2),
    )
    pruned.config.amp_pruning["reconstruction"] = report.provenance()
    return pruned_stack, report
