"""Training-free recovery: refit every pruned MLP's output projection on calibration activations.

After a PrunePlan is chosen (by any method), each layer's output projection is refit in closed form so the kept
neurons reproduce the full MLP output on calibration tokens (math in ``gram``). Layers are processed first
to last, each run alone through the model's own forward (earlier layers skipped, their cached output
injected: ``layer_stack.run_layer``), so one pass per layer suffices:

* ``independent``: every layer sees the original network's activations;
* ``sequential``: every layer sees the activations of the already pruned and refit prefix (the inputs it will
  actually get), and is fit to reproduce its full MLP on them, so the fit is not made on inputs that no
  longer occur;
* ``blockwise``: ``sequential``, then a few label-free Adam steps per block (``blockwise``), kept only when
  the end-to-end criterion agrees.

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
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data import model_inputs
from ..families import MlpStack, resolve
from ..layer_stack import run_layer
from ..plan import PrunePlan
from ..selection import CRITERIA, CriterionConfig, CriterionEvaluator, build_criterion
from ..slicing import slice_stack
from .blockwise import BlockwiseRefiner, RefinementReport
from .config import ReconstructConfig
from .gram import refit_output_projection
from .layers import (
    all_reduce_sum,
    corrected_projection,
    output_projection,
    projection_grams,
    split_heldout,
)
from .residual import (
    WriterStatistics,
    channel_scale,
    check_residual_writers,
    corrected_writer,
    refit_writer,
    run_block,
    writer_projection,
)

logger = logging.getLogger(__name__)


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
    projection: Literal["mlp", "attention"] = "mlp"  # the MLP's output projection, or (residual) the attention's


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
    objective: str = "mlp"
    attention: list[LayerReport] = field(default_factory=list)  # residual: the attention output projections
    refinement: RefinementReport | None = None  # mode=blockwise

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for the command line."""
        name = self.mode if self.objective == "mlp" else f"{self.mode}, {self.objective} objective"
        refined = self.refinement is not None and self.refinement.kept
        if self.refinement is not None:
            blocks = self.refinement.blocks
            moved = sum(b.best_step > 0 for b in blocks)
            also = (f"{moved}/{len(blocks)} blocks refined" if refined
                    else f"refinement reverted ({self.refinement.fallback})")
            return (f"reconstruction ({name}): closed form {self.fidelity['closed_form']:.4f}, {also}; held-out "
                    f"embedding cosine to the original {self.fidelity['sliced']:.4f} (sliced) -> "
                    f"{self.fidelity['reconstructed']:.4f}")
        if self.kept == "sliced":
            return f"reconstruction ({name}): returned plainly sliced ({self.fallback})"
        refit = sum(r.status == "reconstructed" for r in self.layers)
        attention = sum(r.status == "reconstructed" for r in self.attention)
        also = f" and {attention} attention output projections" if self.attention else ""
        return (f"reconstruction ({name}): {refit}/{len(self.layers)} layers{also} refit; held-out embedding cosine "
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
            **({} if self.objective == "mlp" else {
                "objective": self.objective,
                "attention_outputs_reconstructed": [r.layer for r in self.attention if r.status == "reconstructed"],
            }),
            **({} if self.refinement is None else {"refinement": {
                "steps": self.refinement.steps, "lr": self.refinement.lr, "kept": self.refinement.kept,
                "fallback": self.refinement.fallback, "guard": self.refinement.guard,
                "refined": {"criterion": self.refinement.criterion, "fidelity": self.refinement.fidelity},
                "blocks": {str(b.layer): {"best_step": b.best_step, "heldout_error": [b.error_start, b.error_refined]}
                           for b in self.refinement.blocks},
                "wall_time_s": self.refinement.wall_time_s,
            }}),
        }


# -- the step ---------------------------------------------------------------------------------------------


def reconstruction_is_closer(criterion: dict) -> bool:
    """The end-to-end rule on held-out criterion values {"original", "sliced", "reconstructed"}.

    The goal is the original model's behaviour, and pruning can move AMP's entropy either way (it often
    drops), so what counts is the distance to the original's value, not the sign of the change.
    """
    original = criterion["original"]
    return abs(criterion["reconstructed"] - original) <= abs(criterion["sliced"] - original)


@contextlib.contextmanager
def _eval_mode(*models: nn.Module):
    """Dropout would make the activations random: run in eval mode and restore the previous modes."""
    modes = [m.training for m in models]
    try:
        yield [m.eval() for m in models]
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


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
    cosine = all_reduce_sum(cosine, accelerator)
    return float(cosine[0] / cosine[1])


class _RefitWalk:
    """What both objectives' walks hold: the two models, the fit and held-out batches, and both versions of
    every refit projection (so the end-to-end check can swap them)."""

    def __init__(self, model: MlpStack, pruned: MlpStack, plan: PrunePlan, fit, heldout, config: ReconstructConfig,
                 accelerator):
        self.model, self.pruned, self.plan, self.config = model, pruned, plan, config
        self.accelerator = accelerator
        self.batches = [*fit, *heldout]
        self.is_fit = [True] * len(fit) + [False] * len(heldout)
        self.versions: dict = {}
        self.tokens = (0, 0)


class _Refitter(_RefitWalk):
    """Walks the layers first to last, refitting ``pruned``'s output projections in place."""

    def grams(self, index: int, inputs: list) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Fit and held-out Gram matrices of layer ``index`` of the original model on ``inputs``, and the
        original layer's outputs (kept only in independent mode, where they feed the next layer)."""
        return projection_grams(self.model, index, self.batches, inputs, self.is_fit, self.accelerator,
                                keep_outputs=self.config.mode == "independent")

    def refit_layer(self, index: int, gram_fit: torch.Tensor, gram_heldout: torch.Tensor) -> LayerReport:
        original = output_projection(self.model, index)
        kept = self.plan.kept[index]
        result = refit_output_projection(original.weight, original.bias, kept, gram_fit, gram_heldout,
                                         self.config.dampings)
        for note in result.notes:
            logger.warning("reconstruct layer %d: %s", index, note)
        if result.delta is not None:
            target = output_projection(self.pruned, index)
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
            if self.config.mode != "independent":  # sequential, blockwise
                outputs = [run_layer(self.pruned, index, b, h) for b, h in zip(self.batches, inputs)]
            inputs = outputs
        return reports

    @torch.no_grad()
    def install(self, index: int, version: Literal["sliced", "reconstructed"], projection: str = "mlp") -> None:
        weight, bias = self.versions[index][version]
        target = output_projection(self.pruned, index)
        target.weight.copy_(weight)
        if bias is not None:
            target.bias.copy_(bias)


class _ResidualRefitter(_RefitWalk):
    """``objective=residual``: walks the layers first to last and refits every residual-stream writer from
    the first pruned MLP on (that MLP's output projection, every later attention and MLP output projection),
    so the stream right after each writer matches the unpruned model's, given the pruned model's own inputs:
    drift from upstream layers is absorbed instead of carried."""

    def __init__(self, *args):
        super().__init__(*args)
        self.attention: list[LayerReport] = []

    @torch.no_grad()
    def run(self, progress: bool) -> list[LayerReport]:
        originals: list[torch.Tensor | None] = [None] * len(self.batches)  # each batch's input, unpruned model
        inputs: list[torch.Tensor | None] = [None] * len(self.batches)  # and in the pruned model
        reports, drift = [], False
        for index in tqdm(range(len(self.plan.kept)), desc="reconstruct (residual)", disable=not progress):
            writers = self.pruned.adapter.residual_writers(self.pruned.layers[index])
            targets, outputs = [], []
            for batch, hidden in zip(self.batches, originals):  # the unpruned stream after every writer
                output, records = run_block(self.model, index, batch, hidden, writers)
                outputs.append(output)
                targets.append([record["stream"] for record in records])
            pruned_here = self.plan.widths[index] < self.plan.original_widths[index]
            for position, writer in enumerate(writers):
                kind = "mlp" if writer.projection is None else "attention"
                drift = drift or (kind == "mlp" and pruned_here)
                if drift:
                    report = self.refit_writer(index, position, writer, kind, inputs, targets)
                else:
                    report = LayerReport(index, self.plan.widths[index], self.plan.original_widths[index], "sliced",
                                         "keeps every neuron" if kind == "mlp" else "no pruned MLP before it",
                                         None, None, None, projection=kind)
                (reports if kind == "mlp" else self.attention).append(report)
            inputs = [run_layer(self.pruned, index, b, h) for b, h in zip(self.batches, inputs)]
            originals = outputs
        return reports

    def refit_writer(self, index: int, position: int, writer, kind: str, inputs: list, targets: list) -> LayerReport:
        projection = writer_projection(self.pruned, index, writer)
        statistics = WriterStatistics(projection.in_features, projection.out_features,
                                      projection.weight.device, writer.normalized)
        for batch, hidden, target, fit in zip(self.batches, inputs, targets, self.is_fit):
            _, (record,) = run_block(self.pruned, index, batch, hidden, [writer])
            scale = channel_scale(self.pruned, index, writer, record["stream"])
            statistics.add(fit, batch, record["input"], target[position], record["stream"], scale)
        result = refit_writer(projection, statistics, self.config.dampings, self.accelerator)
        if self.tokens == (0, 0):
            fit_gram, heldout_gram = statistics.reduced(self.accelerator)
            self.tokens = (int(fit_gram[-1, -1]), int(heldout_gram[-1, -1]))
        for note in result.notes:
            logger.warning("reconstruct layer %d (%s output): %s", index, kind, note)
        if result.delta is not None:
            self.versions[kind, index] = {
                "sliced": (projection.weight.detach().clone(),
                           None if projection.bias is None else projection.bias.detach().clone()),
                "reconstructed": corrected_writer(projection, result.delta),
            }
            self.install(index, "reconstructed", kind)
        return LayerReport(
            layer=index, width=self.plan.widths[index], original_width=self.plan.original_widths[index],
            status="reconstructed" if result.delta is not None else "sliced", reason=result.reason,
            damping=result.damping, error_sliced=result.error_sliced, error_reconstructed=result.error_refit,
            damping_errors=result.damping_errors, notes=result.notes, projection=kind,
        )

    @torch.no_grad()
    def install(self, index: int, version: Literal["sliced", "reconstructed"], projection: str = "mlp") -> None:
        writers = self.pruned.adapter.residual_writers(self.pruned.layers[index])
        writer = next(w for w in writers if (w.projection is None) == (projection == "mlp"))
        weight, bias = self.versions[projection, index][version]
        target = writer_projection(self.pruned, index, writer)
        target.weight.copy_(weight)
        if bias is not None:
            target.bias.copy_(bias)


def _end_to_end_check(refitter: _RefitWalk, layers: list[LayerReport], evaluate, values: dict,
                      margin: float) -> str | None:
    """Revert refits the criterion rejects (per layer, then whole model); return the whole-model fallback reason."""
    _revert_harmful_refits(refitter, layers, evaluate, values, margin)
    if reconstruction_is_closer(values):
        return None
    for report in layers:
        if report.status == "reconstructed":
            refitter.install(report.layer, "sliced", report.projection)
            report.status, report.reason = "sliced", "whole-model fallback"
    return (f"held-out criterion {values['reconstructed']:.6g} is further from the original's "
            f"{values['original']:.6g} than plain slicing's {values['sliced']:.6g}")


def _revert_harmful_refits(refitter: _RefitWalk, layers: list[LayerReport], evaluate, values: dict,
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
        refitter.install(report.layer, "sliced", report.projection)
        value = evaluate()
        if abs(value - original) < abs(values["reconstructed"] - original) - required:
            report.status = "sliced"
            report.reason = (f"end-to-end: held-out criterion {value:.6g} is closer to the original's "
                             f"{original:.6g} with this layer sliced than refit ({values['reconstructed']:.6g})")
            values["reconstructed"] = value
        else:
            refitter.install(report.layer, "reconstructed", report.projection)


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
    if config.objective == "residual":
        check_residual_writers(stack)
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
        refitter = (_ResidualRefitter if config.objective == "residual" else _Refitter)(
            stack, pruned_stack, plan, fit, heldout, config, accelerator)
        layers = refitter.run(progress)
        attention = getattr(refitter, "attention", [])
        # stream order (a layer's attention output before its MLP's), for the end-to-end check's reverts
        writers = sorted([*layers, *attention], key=lambda r: (r.layer, r.projection == "mlp"))
        values["reconstructed"] = values["all_layers_refit"] = evaluate() if refitter.versions else values["sliced"]
        fallback = None
        if refitter.versions and config.end_to_end_check:
            fallback = _end_to_end_check(refitter, writers, evaluate, values, config.revert_margin)
            if fallback:
                logger.warning("reconstruct: %s; returning the plainly sliced model", fallback)
        if fallback is None and not any(report.status == "reconstructed" for report in writers):
            fallback = "no layer was refit (see the per-layer reasons)"
        kept = "sliced" if fallback else "reconstructed"
        if kept == "sliced":
            values["reconstructed"] = values["sliced"]
        refit_cosine = _mean_cosine(pruned_stack, heldout, reference, accelerator) if kept != "sliced" else sliced_cosine
        fidelity = {"sliced": sliced_cosine, "reconstructed": refit_cosine}  # the returned model's
        refinement = None
        if config.mode == "blockwise":
            refiner = BlockwiseRefiner(stack, pruned_stack, plan, fit, heldout, config, accelerator)
            refinement = refiner.run(progress)
            values["closed_form"], fidelity["closed_form"] = values["reconstructed"], refit_cosine
            refinement.guard = config.blockwise_guard
            refinement.criterion = refined = evaluate()
            refinement.fidelity = refined_cosine = _mean_cosine(pruned_stack, heldout, reference, accelerator)
            original = values["original"]
            if config.blockwise_guard == "fidelity":
                worse = refined_cosine < refit_cosine
                why = (f"held-out embedding cosine to the original {refined_cosine:.6g} is below the closed "
                       f"form's {refit_cosine:.6g}")
            else:
                worse = abs(refined - original) > abs(values["closed_form"] - original)
                why = (f"held-out criterion {refined:.6g} is further from the original's {original:.6g} than "
                       f"the closed form's {values['closed_form']:.6g}")
            if not config.end_to_end_check or not worse:
                values["reconstructed"], fidelity["reconstructed"] = refined, refined_cosine
                kept = "reconstructed"
            else:
                refiner.restore()
                refinement.kept, refinement.fallback = False, why
                logger.warning("reconstruct: blockwise refinement reverted: %s", refinement.fallback)
    counts = [sum(len(next(iter(model_inputs(b).values()))) for b in part) for part in (fit, heldout)]
    samples = all_reduce_sum(torch.tensor(counts, dtype=torch.float64, device=next(model.parameters()).device), accelerator)
    report = ReconstructionReport(
        mode=config.mode, kept=kept, fallback=fallback,
        samples_fit=int(samples[0]), samples_heldout=int(samples[1]),
        tokens_fit=refitter.tokens[0], tokens_heldout=refitter.tokens[1],
        criterion={"name": _criterion_name(criterion), **values},
        fidelity=fidelity, layers=layers, wall_time_s=round(time.time() - started, 2), objective=config.objective,
        attention=attention, refinement=refinement,
    )
    pruned.config.amp_pruning["reconstruction"] = report.provenance()
    return pruned_stack, report
