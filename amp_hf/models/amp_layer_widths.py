"""Per-layer MLP widths for width-pruned transformers (the amp-hf checkpoint format).

This file is copied next to every pruned checkpoint and imported by the modeling files through a
single-dot relative import, so it must stay self-contained: torch, transformers and stdlib only.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

_HETEROGENEITY_LOGGER = "transformers.integrations.heterogeneity.configuration_utils"


@dataclass(frozen=True)
class NeuronMap:
    """Every tensor of one MLP that is indexed by its hidden neurons, as paths relative to the layer module.

    ``rows``: the input projections (``nn.Linear``); hidden neuron i is output row i. With ``chunks=c`` each
    of them stacks c blocks of H rows (a fused [gate; value] matrix has ``chunks=2``) and neuron i owns row i
    of every block.
    ``columns``: the output projection (``nn.Linear``); hidden neuron i is input column i. Its input is the
    post-activation hidden state (what Taylor importance and the refit read).
    ``vectors``: modules over the hidden width, e.g. a LayerNorm between activation and output projection;
    every parameter's entry i belongs to neuron i. A module without parameters (``nn.Identity``) is skipped.
    Rebuilding the MLP at another width (``resize``) replaces each of these modules by one of the same type.
    """

    rows: tuple[str, ...]
    columns: str
    chunks: int = 1
    vectors: tuple[str, ...] = ()

    # -- probing ---------------------------------------------------------------------------------------
    def matches(self, layer: nn.Module) -> bool:
        linears = [_get_submodule(layer, name) for name in (*self.rows, self.columns)]
        if not all(isinstance(module, nn.Linear) for module in linears):
            return False
        width = linears[-1].in_features
        if any(module.out_features != self.chunks * width for module in linears[:-1]):
            return False
        return all(_get_submodule(layer, name) is not None for name in self.vectors)

    def width(self, layer: nn.Module) -> int:
        return self.output(layer).in_features

    def output(self, layer: nn.Module) -> nn.Linear:
        return layer.get_submodule(self.columns)

    def inputs(self, layer: nn.Module) -> list[nn.Linear]:
        return [layer.get_submodule(name) for name in self.rows]

    def modules(self, layer: nn.Module) -> dict[str, nn.Module]:
        """Every module holding hidden-indexed tensors, by path."""
        names = (*self.rows, *self.vectors, self.columns)
        return {name: layer.get_submodule(name) for name in names if _has_parameters(layer.get_submodule(name))}

    def hidden_tensors(self, layer: nn.Module) -> list[tuple[str, int, int]]:
        """(parameter path, hidden dim, chunks) of every tensor indexed by hidden neurons."""
        tensors = []
        for name in self.rows:
            linear = layer.get_submodule(name)
            tensors += [(f"{name}.{p}", 0, self.chunks) for p in ("weight", "bias") if getattr(linear, p) is not None]
        for name in self.vectors:
            tensors += [(f"{name}.{p}", 0, 1) for p, _ in layer.get_submodule(name).named_parameters(recurse=False)]
        tensors.append((f"{self.columns}.weight", 1, 1))
        return tensors

    # -- what selection reads ----------------------------------------------------------------------------
    def input_vectors(self, layer: nn.Module) -> torch.Tensor:
        """Each neuron's input weights (H x chunks·d per projection, concatenated): row i of every block of
        every input projection, e.g. [gate row ; up row] for a gated unit."""
        width = self.width(layer)
        parts = []
        for linear in self.inputs(layer):
            weight = linear.weight
            if self.chunks > 1:
                weight = weight.reshape(self.chunks, width, -1).permute(1, 0, 2).reshape(width, -1)
            parts.append(weight)
        return torch.cat(parts, dim=1)

    def parameters_per_neuron(self, layer: nn.Module) -> int:
        """Parameters one hidden neuron owns (input rows with their bias entries, vector entries, output column)."""
        count = sum(self.chunks * (linear.in_features + (linear.bias is not None)) for linear in self.inputs(layer))
        count += sum(len(list(layer.get_submodule(name).parameters(recurse=False))) for name in self.vectors)
        return count + self.output(layer).out_features

    def multiply_adds_per_neuron(self, layer: nn.Module) -> int:
        """Multiply-adds one hidden neuron costs per token in the projections (norms are not matmuls)."""
        return sum(self.chunks * linear.in_features for linear in self.inputs(layer)) + self.output(layer).out_features

    # -- changing the width ------------------------------------------------------------------------------
    def resize(self, layer: nn.Module, width: int) -> None:
        """Rebuild the MLP of ``layer`` with ``width`` hidden neurons (fresh, uninitialised tensors)."""
        for name, module in self.modules(layer).items():
            if _hidden_sizes(self, name, module) != _hidden_sizes(self, name, module, width):
                _set_submodule(layer, name, _resized(self, name, module, width))

    def install(self, layer: nn.Module, full: dict[str, nn.Module], kept: torch.Tensor) -> None:
        """Put into ``layer`` copies of the ``full`` modules (from ``modules``) holding only the ``kept`` neurons."""
        width = len(kept)
        for name, module in full.items():
            new = _resized(self, name, module, width)
            for parameter_name, parameter in module.named_parameters(recurse=False):
                dim = 1 if name == self.columns and parameter_name == "weight" else 0
                if name == self.columns and parameter_name == "bias":
                    data = parameter.data  # the output bias is per output feature, not per neuron
                else:
                    chunks = self.chunks if name in self.rows else 1
                    data = parameter.data.index_select(dim, chunk_index(kept, chunks, self.width_of(name, module)))
                getattr(new, parameter_name).data = data
            _set_submodule(layer, name, new)

    def restore(self, layer: nn.Module, modules: dict[str, nn.Module]) -> None:
        """Put ``modules`` (saved from ``modules(layer)``) back into ``layer``."""
        for name, module in modules.items():
            _set_submodule(layer, name, module)

    def width_of(self, name: str, module: nn.Module) -> int:
        """The hidden width ``module`` (one of ``modules``) was built for."""
        if name == self.columns:
            return module.in_features
        if name in self.rows:
            return module.out_features // self.chunks
        return _vector_size(module)


# timm's MLP classes inside a timm block (paths relative to the block), shared by the timm family and
# open_clip's timm-trunk towers. timm's ``norm`` is an ``nn.Identity`` unless the MLP normalises its hidden
# width (EVA02's ``scale_mlp``); it is pruned with the neurons. Tried in order; the shapes tell them apart
# (a fused fc1 has twice the rows fc2 has columns).
TIMM_NEURON_MAPS = (
    NeuronMap(rows=("mlp.fc1_g", "mlp.fc1_x"), columns="mlp.fc2", vectors=("mlp.norm",)),  # SwiGLU
    NeuronMap(rows=("mlp.fc1",), columns="mlp.fc2", chunks=2, vectors=("mlp.norm",)),  # GluMlp, SwiGLUPacked
    NeuronMap(rows=("mlp.fc1",), columns="mlp.fc2", vectors=("mlp.norm",)),  # Mlp
)


def chunk_index(kept: torch.Tensor, chunks: int, width: int) -> torch.Tensor:
    """Row indices of the kept neurons in a tensor stacking ``chunks`` blocks of ``width`` rows."""
    kept = torch.as_tensor(kept, dtype=torch.long)
    if chunks == 1:
        return kept
    return torch.cat([kept + block * width for block in range(chunks)])


def _get_submodule(root: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return root.get_submodule(dotted)
    except AttributeError:
        return None


def _set_submodule(layer: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    setattr(layer.get_submodule(parent_name) if parent_name else layer, attr, module)


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _vector_size(module: nn.Module) -> int:
    return next(module.parameters(recurse=False)).shape[0]


def _hidden_sizes(neuron_map: NeuronMap, name: str, module: nn.Module, width: int | None = None) -> tuple:
    if width is None:
        width = neuron_map.width_of(name, module)
    if name == neuron_map.columns:
        return (width, module.out_features)
    if name in neuron_map.rows:
        return (module.in_features, neuron_map.chunks * width)
    return (width,)


def _resized(neuron_map: NeuronMap, name: str, module: nn.Module, width: int) -> nn.Module:
    """A module like ``module`` built for ``width`` hidden neurons (uninitialised tensors)."""
    factory = {"device": next(module.parameters()).device, "dtype": next(module.parameters()).dtype}
    if isinstance(module, nn.Linear):
        in_features, out_features = _hidden_sizes(neuron_map, name, module, width)
        return nn.Linear(in_features, out_features, bias=module.bias is not None, **factory)
    if isinstance(module, nn.LayerNorm):
        kwargs = {"eps": module.eps, "bias": module.bias is not None, **factory}
        try:
            return type(module)(width, elementwise_affine=module.elementwise_affine, **kwargs)
        except TypeError:  # timm's LayerNorm (EVA02 SwiGLU's norm) names it `affine`
            return type(module)(width, affine=module.elementwise_affine, **kwargs)
    if isinstance(module, nn.RMSNorm):
        return type(module)(width, eps=module.eps, elementwise_affine=module.elementwise_affine, **factory)
    raise TypeError(f"cannot rebuild {type(module).__name__} at another hidden width (NeuronMap.vectors)")


def find_neuron_map(layer: nn.Module, maps) -> NeuronMap | None:
    """The first of ``maps`` that matches ``layer``, or None."""
    return next((neuron_map for neuron_map in maps if neuron_map.matches(layer)), None)


def find_backbone(model: nn.Module, backbone_class: type) -> nn.Module:
    """The first ``backbone_class`` module of ``model`` (``model`` itself included)."""
    for module in model.modules():
        if isinstance(module, backbone_class):
            return module
    raise ValueError(f"{type(model).__name__} has no {backbone_class.__name__} inside")


def find_layer_stack(model: nn.Module, root: nn.Module, maps) -> tuple[str, nn.ModuleList]:
    """Dotted path (from ``model``) and module of the prunable layer stack: the first ``ModuleList`` inside
    ``root`` (a module of ``model``) whose every element matches one of ``maps``."""
    for module in root.modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(find_neuron_map(m, maps) for m in module):
            return next(name for name, candidate in model.named_modules() if candidate is module), module
    raise ValueError(f"no layer stack with a recognised MLP in {type(root).__name__}")


def layer_widths_from_config(config) -> list[int]:
    """Every layer's MLP width, read from transformers' ``per_layer_config`` (the single source of truth)."""
    return [int(layer_config.intermediate_size) for layer_config in config.per_layer_config]


@contextlib.contextmanager
def global_width_access(*configs):
    """Let stock constructors read the global ``intermediate_size`` of a heterogeneous config.

    Stock modules read ``config.intermediate_size`` while they are built; on a per-layer config that read
    raises ``AmbiguousGlobalPerLayerAttributeError``. The MLPs built from the global value are resized right
    after, so allowing the read for the duration of construction is safe. The one-time warning is silenced.
    """
    logger = logging.getLogger(_HETEROGENEITY_LOGGER)
    previous_level = logger.level
    previous = [config.__dict__.get("allow_global_per_layer_attribute_access") for config in configs]
    logger.setLevel(logging.ERROR)
    for config in configs:
        config.allow_global_per_layer_attribute_access = True
    try:
        yield
    finally:
        for config, value in zip(configs, previous):
            if value is None:
                config.__dict__.pop("allow_global_per_layer_attribute_access", None)
            else:
                config.allow_global_per_layer_attribute_access = value
        logger.setLevel(previous_level)


class PerLayerMLPWidthsMixin:
    """Put before a stock transformers model class: builds it, then resizes each pruned layer's MLP.

    Class attributes set by each modeling file:
      ``_amp_backbone_class``: the stock module owning the pruned layer stack;
      ``_amp_neuron_maps``: the ``NeuronMap`` candidates of one layer's MLP, tried in order;
      ``_amp_width_config``: attribute of the config holding the pruned tower's sub-config (None = itself).
    ``_amp_stack_root`` says where the layer stack is probed (``find_layer_stack``); amp-hf's family adapters
    call the same method, so the pruned model and the tools can never disagree about which layers are pruned.
    """

    _amp_backbone_class: type = nn.Module
    _amp_neuron_maps: tuple[NeuronMap, ...] = ()
    _amp_width_config: str | None = None

    @classmethod
    def _amp_stack_root(cls, model: nn.Module) -> nn.Module:
        """The module of ``model`` (this class or its stock counterpart) holding the pruned layer stack."""
        return find_backbone(model, cls._amp_backbone_class)

    @classmethod
    def _amp_widths_config(cls, config):
        return getattr(config, cls._amp_width_config) if cls._amp_width_config else config

    def __init__(self, config, *args, **kwargs):
        widths_config = self._amp_widths_config(config)
        with global_width_access(widths_config):
            super().__init__(config, *args, **kwargs)
        # Sub-models built from (copies of) the sub-config may carry the construction-time flag: drop it.
        for module in self.modules():
            sub_config = getattr(module, "config", None)
            if sub_config is not None and sub_config is not widths_config:
                for candidate in (sub_config, getattr(sub_config, "vision_config", None)):
                    if candidate is not None and hasattr(candidate, "__dict__"):
                        candidate.__dict__.pop("allow_global_per_layer_attribute_access", None)

    def post_init(self):
        # Runs at the end of the stock __init__, before weight initialisation: resize here so the new
        # modules are initialised (random init) or filled (from_pretrained) like every other weight.
        widths = layer_widths_from_config(self._amp_widths_config(self.config))
        _, layers = find_layer_stack(self, self._amp_stack_root(self), self._amp_neuron_maps)
        if len(layers) != len(widths):
            raise ValueError(f"config lists {len(widths)} layer widths but the model has {len(layers)} layers")
        for layer, width in zip(layers, widths):
            find_neuron_map(layer, self._amp_neuron_maps).resize(layer, width)
        super().post_init()
