"""Blockwise refinement (``reconstruct.mode: blockwise``): after the closed-form refit, a bounded number of
Adam steps per block on the cached calibration inputs, label-free.

Walking the blocks first to last from the first pruned MLP on, block i is fed the *pruned* model's own
input (the refined prefix's output) and trained to reproduce the *unpruned* model's output of block i (as
``objective=residual``, so drift from upstream is absorbed): the loss is the squared error over every
(non-padding) token relative to the target's energy. Trained: the kept input rows of the MLP (its input
projections and hidden-width vectors), its output projection and every norm of the block; the attention
weights stay. The closed form solves the output projection alone for fixed hidden activations; here the
kept neurons' input rows and the norms move too — the cheap middle between the closed form and
distillation.

Step t takes the fit batches in turn (batch t mod the fit count): its gradient is over that batch's shards
on every process (all-reduced), so N processes take the 1-process steps up to float summation order. The
held-out batches choose the step count: the block keeps the parameters of its best held-out error (checked
every ``blockwise_eval_every`` steps, the start included), so a block the steps do not help is returned as
it came.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..families import MlpStack
from ..layer_stack import layer_output, run_layer
from ..plan import PrunePlan
from .config import ReconstructConfig
from .layers import all_reduce_sum, token_mask


@dataclass
class BlockRefinement:
    layer: int
    error_start: float  # held-out squared error relative to the target's energy, before the steps
    error_refined: float  # the returned block's
    best_step: int  # steps taken by the returned parameters (0: the block came back unchanged)
    errors: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out error) as checked


@dataclass
class RefinementReport:
    steps: int
    lr: float
    blocks: list[BlockRefinement]
    wall_time_s: float
    kept: bool = True  # False: the end-to-end check returned the closed-form model
    fallback: str | None = None
    guard: str = "criterion"  # what that check compared (reconstruct.blockwise_guard)
    criterion: float | None = None  # the refined model's held-out criterion and embedding cosine to the original
    fidelity: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def is_norm(module: nn.Module) -> bool:
    """A per-token or per-channel normalisation with its own parameters (LayerNorm, RMSNorm, GroupNorm, ...)."""
    return (isinstance(module, (nn.LayerNorm, nn.GroupNorm))
            or type(module).__name__.endswith("Norm")) and any(
        True for _ in module.parameters(recurse=False))


def trainable_parameters(stack: MlpStack, index: int) -> list[nn.Parameter]:
    """What blockwise refinement updates in layer ``index``: the MLP's neuron-indexed modules (kept input rows,
    hidden-width vectors, output projection) and the layer's norms, each parameter once."""
    layer, neuron_map = stack.mlps()[index]
    modules = [*neuron_map.modules(layer).values(), *(m for m in layer.modules() if is_norm(m))]
    seen, parameters = set(), []
    for module in modules:
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                parameters.append(parameter)
    return parameters


@contextlib.contextmanager
def _only_these_train(model: nn.Module, parameters: list[nn.Parameter]):
    """Gradients for ``parameters`` only (the frozen rest builds no autograd graph); flags restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for p in parameters}
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(id(parameter) in chosen)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
            parameter.grad = None


def _squared_error(output: torch.Tensor, target: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squared errors, sum of the target's squares) over the batch's tokens (padding excluded)."""
    error, energy = (output - target).pow(2).sum(-1), target.detach().pow(2).sum(-1)
    mask = token_mask(batch, output)
    if mask is not None:
        mask = mask.to(error.dtype)
        error, energy = error * mask, energy * mask
    return error.sum(), energy.sum()


class BlockwiseRefiner:
    """Walks the blocks of ``pruned`` first to last and refines each from the first pruned MLP on (in place)."""

    def __init__(self, model: MlpStack, pruned: MlpStack, plan: PrunePlan, fit: list[dict], heldout: list[dict],
                 config: ReconstructConfig, accelerator=None):
        self.model, self.pruned, self.plan, self.config, self.accelerator = model, pruned, plan, config, accelerator
        self.fit, self.heldout = fit, heldout
        self.batches = [*fit, *heldout]
        self.starts: list[tuple[list[nn.Parameter], list[torch.Tensor]]] = []  # for ``restore``

    def run(self, progress: bool) -> RefinementReport:
        started = time.time()
        batches = self.batches
        originals: list[torch.Tensor | None] = [None] * len(batches)  # each batch's input, unpruned model
        inputs: list[torch.Tensor | None] = [None] * len(batches)  # and in the pruned model
        blocks, drift = [], False
        for index in tqdm(range(len(self.plan.kept)), desc="reconstruct (blockwise refinement)", disable=not progress):
            targets = [run_layer(self.model, index, batch, hidden) for batch, hidden in zip(batches, originals)]
            drift = drift or self.plan.widths[index] < self.plan.original_widths[index]
            if drift:
                blocks.append(self.refine(index, inputs, targets))
            inputs = [run_layer(self.pruned, index, b, h) for b, h in zip(batches, inputs)]
            originals = targets
        return RefinementReport(self.config.blockwise_steps, self.config.blockwise_lr, blocks,
                                round(time.time() - started, 2))

    @torch.no_grad()
    def restore(self) -> None:
        """Put every refined block back as it came (the end-to-end check rejected the refinement)."""
        for parameters, values in self.starts:
            for parameter, value in zip(parameters, values):
                parameter.copy_(value)

    def _energies(self, targets: list) -> list[torch.Tensor]:
        """Each batch's target energy (sum of squares over its tokens), every process's shard counted: fixed
        for a block, so computed once, not at every step."""
        return [all_reduce_sum(_squared_error(target, target, batch)[1].double(), self.accelerator)
                for batch, target in zip(self.batches, targets)]

    def _relative_error(self, index: int, inputs: list, targets: list, energies: list, which: list[int],
                        backward: bool) -> float:
        """Relative squared error of block ``index`` over the batches ``which`` (positions in fit + held-out),
        every process's shards of them counted; ``backward``: also its gradient (this process's share: the
        all-reduce of the gradients completes it)."""
        energy = sum(energies[position] for position in which).clamp(min=1e-30)
        total = torch.zeros((), dtype=torch.float64, device=energy.device)
        with torch.set_grad_enabled(backward):
            for position in which:
                batch = self.batches[position]
                error, _ = _squared_error(layer_output(self.pruned, index, batch, inputs[position]),
                                          targets[position], batch)
                if backward:
                    (error / energy.to(error.dtype)).backward()
                total += error.detach().double()
        return float(all_reduce_sum(total, self.accelerator) / energy)

    def refine(self, index: int, inputs: list, targets: list) -> BlockRefinement:
        parameters = trainable_parameters(self.pruned, index)
        config = self.config
        self.starts.append((parameters, [p.detach().clone() for p in parameters]))
        every = max(1, config.blockwise_eval_every)
        with _only_these_train(self.pruned.model, parameters):
            optimizer = torch.optim.Adam(parameters, lr=config.blockwise_lr)
            heldout = list(range(len(self.fit), len(self.batches)))
            energies = self._energies(targets)
            best_error = start = self._relative_error(index, inputs, targets, energies, heldout, backward=False)
            best = [p.detach().clone() for p in parameters]
            best_step, checked = 0, [(0, start)]
            for step in range(1, config.blockwise_steps + 1):
                optimizer.zero_grad(set_to_none=False)
                self._relative_error(index, inputs, targets, energies, [(step - 1) % len(self.fit)], backward=True)
                if self.accelerator is not None and self.accelerator.num_processes > 1:
                    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                                      for p in parameters])
                    flat = all_reduce_sum(flat, self.accelerator)
                    offset = 0
                    for p in parameters:
                        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
                        offset += p.numel()
                optimizer.step()
                if step % every == 0 or step == config.blockwise_steps:
                    error = self._relative_error(index, inputs, targets, energies, heldout, backward=False)
                    checked.append((step, error))
                    if error < best_error:
                        best_error, best_step = error, step
                        best = [p.detach().clone() for p in parameters]
            with torch.no_grad():
                for parameter, value in zip(parameters, best):
                    parameter.copy_(value)
        return BlockRefinement(index, start, best_error, best_step, checked)
