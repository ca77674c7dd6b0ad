"""The residual objective of reconstruction (``reconstruct.objective: residual``): what one residual-stream
writer of a layer (the MLP's output projection, the attention's output projection; the family's
``residual_writers``) needs for its refit.

A writer's output o = W z + b is added, optionally scaled channel-wise by γ (LayerScale), to the residual
stream. Given the *pruned* model's own inputs, the stream right after that addition should equal the
*unpruned* model's. With s the unpruned stream there and s' the pruned one, the writer should add
r = (s − s') / γ more than it does: a correction Δ of [W, b] with Δ z̃ ≈ r, z̃ = [z; 1]. That is the damped
least squares of ``gram.solve_correction``; its statistics come from one streamed Gram matrix of [z; r; 1]
(fit and held-out), so memory stays O((in + out)²) whatever the token count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..families import MlpStack, ResidualWriter
from ..layer_stack import run_layer
from .gram import RefitResult, accumulate_gram, new_gram, solve_correction
from .layers import all_reduce_sum, token_mask


def check_residual_writers(stack: MlpStack) -> None:
    """Refuse ``objective=residual`` (before any compute) for a model whose layers declare no residual-stream
    layout (``FamilyAdapter.residual_layouts``)."""
    for index, layer in enumerate(stack.layers):
        if not any(writer.projection is None for writer in stack.adapter.residual_writers(layer)):
            raise ConfigError(
                f"reconstruct.objective=residual: the {stack.adapter.name} family declares no residual-stream "
                f"layout that fits layer {index} ({type(layer).__name__}); use reconstruct.objective=mlp"
            )


def writer_projection(stack: MlpStack, index: int, writer: ResidualWriter) -> nn.Linear:
    layer, neuron_map = stack.mlps()[index]
    return neuron_map.output(layer) if writer.projection is None else layer.get_submodule(writer.projection)


@torch.no_grad()
def run_block(stack: MlpStack, index: int, batch: dict, hidden: torch.Tensor | None,
              writers: Sequence[ResidualWriter]) -> tuple[torch.Tensor, list[dict]]:
    """Layer ``index``'s output for ``batch`` from its input ``hidden`` (None: the embeddings, layer 0), and
    per writer {"input": its projection's input, "stream": the residual stream right after its addition}."""
    layer = stack.layers[index]
    records: list[dict] = [{} for _ in writers]
    handles = []
    for record, writer in zip(records, writers):
        handles.append(writer_projection(stack, index, writer).register_forward_pre_hook(
            lambda module, args, record=record: record.__setitem__("input", args[0])))
        if writer.stream is not None:
            handles.append(layer.get_submodule(writer.stream).register_forward_pre_hook(
                lambda module, args, record=record: record.__setitem__("stream", args[0])))
    try:
        output = run_layer(stack, index, batch, hidden)
    finally:
        for handle in handles:
            handle.remove()
    for record in records:
        record.setdefault("stream", output)
    return output, records


def channel_scale(stack: MlpStack, index: int, writer: ResidualWriter, like: torch.Tensor) -> torch.Tensor | None:
    """γ of the writer's LayerScale (its module applied to ones, or the parameter itself), or None."""
    if writer.scale is None:
        return None
    scale = writer.scale_of(stack.layers[index])
    with torch.no_grad():
        if isinstance(scale, torch.Tensor):
            return scale.detach().to(like.device, like.dtype).expand(like.shape[-1])
        return scale(torch.ones(like.shape[-1], dtype=like.dtype, device=like.device))


class WriterStatistics:
    """Fit and held-out Gram matrices of √w·[z; r; 1] for one writer, then the plain 1 that counts tokens
    (``gram.new_gram`` layout; r the stream gap divided by γ; w a token's weight: 1, or with a
    ``normalized`` stream 1 / the variance the norm divides by), all-reduced across processes by ``reduced``."""

    def __init__(self, inputs: int, outputs: int, device, normalized: bool = False):
        self.inputs, self.outputs, self.normalized = inputs, outputs, normalized
        self.grams = {True: new_gram(inputs + outputs + 1, device), False: new_gram(inputs + outputs + 1, device)}

    @torch.no_grad()
    def add(self, fit: bool, batch: dict, projection_input: torch.Tensor, target_stream: torch.Tensor,
            stream: torch.Tensor, scale: torch.Tensor | None) -> None:
        gap = (target_stream - stream).double()
        if scale is not None:
            scale = scale.double()
            usable = scale.abs() > 1e-12  # a channel the writer cannot reach: nothing to correct there
            gap = torch.where(usable, gap / torch.where(usable, scale, torch.ones_like(scale)), torch.zeros_like(gap))
        root = torch.ones_like(gap[..., :1])
        if self.normalized:  # the norm's output moves by (its gain) x gap / σ_token: weigh each token by 1/σ²
            root = stream.double().var(dim=-1, unbiased=False, keepdim=True).add(1e-12).rsqrt()
        joint = torch.cat([projection_input.double(), gap, torch.ones_like(root)], dim=-1) * root
        accumulate_gram(self.grams[fit], joint, token_mask(batch, projection_input))

    def reduced(self, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(all_reduce_sum(self.grams[k], accelerator).cpu() for k in (True, False))


def refit_writer(projection: nn.Linear, statistics: WriterStatistics, dampings: Sequence[float],
                 accelerator=None) -> RefitResult:
    """The damped correction of ``projection``'s [W, b] (its current weights: sliced, or original) from a
    writer's statistics; ``delta`` (out x in [+ 1]) is None when no damping beats leaving it as it is. The
    errors are relative to the held-out energy of the output the writer should produce (its output + r)."""
    fit, heldout = statistics.reduced(accelerator)
    if not (torch.isfinite(fit).all() and torch.isfinite(heldout).all()):
        return RefitResult(None, None, None, None, reason="non-finite activations")
    inputs, outputs = statistics.inputs, statistics.outputs
    gap = torch.arange(inputs, inputs + outputs)
    has_bias = projection.bias is not None
    support = torch.cat([torch.arange(inputs), torch.tensor([inputs + outputs])]) if has_bias else torch.arange(inputs)
    # (the last coordinate, the plain 1, only counts tokens)
    current = projection.weight.detach().to("cpu", torch.float64)
    if has_bias:
        current = torch.cat([current, projection.bias.detach().to("cpu", torch.float64)[:, None]], dim=1)
    heldout_ss, heldout_cross = heldout[support][:, support], heldout[gap][:, support]
    missed = float(heldout[gap, gap].sum())
    energy = missed + 2 * float((current * heldout_cross).sum()) + float(((current @ heldout_ss) * current).sum())
    return solve_correction(fit[support][:, support], fit[gap][:, support], heldout_ss, heldout_cross, missed,
                            energy if energy > 0 else 1.0, int(fit[-1, -1]), has_bias, dampings,
                            float(fit.diagonal()[:inputs].mean()))


@torch.no_grad()
def corrected_writer(projection: nn.Linear, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of ``projection`` plus ``delta`` (in columns, then the bias), in its dtype and device."""
    inputs = projection.in_features
    weight = projection.weight.detach().to("cpu", torch.float64) + delta[:, :inputs]
    bias = None
    if projection.bias is not None:
        bias = (projection.bias.detach().to("cpu", torch.float64) + delta[:, inputs]).to(
            projection.bias.device, projection.bias.dtype)
    return weight.to(projection.weight.device, projection.weight.dtype), bias
