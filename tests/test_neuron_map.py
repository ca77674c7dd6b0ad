"""NeuronMap on MLP shapes beyond the transformers families: a fused [gate; value] input projection with
an inner norm over the hidden width (timm's GluMlp / SwiGLUPacked), split gate/value projections with an
inner norm (timm's SwiGLU) and open_clip's c_fc/ln/c_proj. The modules are written here with the same
forward as those libraries, so the test runs without timm or open_clip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amp_hf.models.amp_layer_widths import NeuronMap, chunk_index, find_layer_stack, find_neuron_map

D, H = 12, 10


class GluMlp(nn.Module):
    """timm.layers.GluMlp: fc1 -> chunk(2) -> act(gate) * value -> norm(H) -> fc2."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(D, 2 * H)
        self.norm = nn.LayerNorm(H)
        self.fc2 = nn.Linear(H, D)

    def forward(self, x):
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.norm(nn.functional.silu(gate) * value))


class SwiGLU(nn.Module):
    """timm.layers.SwiGLU: act(fc1_g(x)) * fc1_x(x) -> norm(H) -> fc2."""

    def __init__(self):
        super().__init__()
        self.fc1_g = nn.Linear(D, H)
        self.fc1_x = nn.Linear(D, H)
        self.norm = nn.LayerNorm(H)
        self.fc2 = nn.Linear(H, D)

    def forward(self, x):
        return self.fc2(self.norm(nn.functional.silu(self.fc1_g(x)) * self.fc1_x(x)))


class OpenClipMlp(nn.Sequential):
    """open_clip's ResidualAttentionBlock.mlp with scale_fc: c_fc -> gelu -> ln(H) -> c_proj."""

    def __init__(self):
        super().__init__()
        self.c_fc = nn.Linear(D, H)
        self.gelu = nn.GELU()
        self.ln = nn.LayerNorm(H)
        self.c_proj = nn.Linear(H, D)


class Block(nn.Module):
    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        return x + self.mlp(x)


CASES = {
    "glu": (GluMlp, NeuronMap(rows=("mlp.fc1",), columns="mlp.fc2", chunks=2, vectors=("mlp.norm",))),
    "swiglu": (SwiGLU, NeuronMap(rows=("mlp.fc1_g", "mlp.fc1_x"), columns="mlp.fc2", vectors=("mlp.norm",))),
    "open_clip": (OpenClipMlp, NeuronMap(rows=("mlp.c_fc",), columns="mlp.c_proj", vectors=("mlp.ln",))),
}


def block(name: str) -> tuple[Block, NeuronMap]:
    torch.manual_seed(0)
    mlp_class, neuron_map = CASES[name]
    layer = Block(mlp_class())
    for parameter in layer.parameters():  # LayerNorm starts at weight 1 / bias 0: make every entry distinct
        nn.init.normal_(parameter)
    return layer, neuron_map


def sliced_copy(layer: Block, neuron_map: NeuronMap, kept: list[int]) -> Block:
    """The layer rebuilt at len(kept) neurons and filled by slicing its state dict along the map."""
    pruned = Block(type(layer.mlp)())
    neuron_map.resize(pruned, len(kept))
    state = layer.state_dict()
    index = torch.tensor(kept)
    for name, dim, chunks in neuron_map.hidden_tensors(layer):
        state[name] = state[name].index_select(dim, chunk_index(index, chunks, H))
    pruned.load_state_dict(state)
    return pruned


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_map_matches_only_its_own_mlp(name):
    layer, neuron_map = block(name)
    assert neuron_map.matches(layer) and neuron_map.width(layer) == H
    others = [m for other, (_, m) in CASES.items() if other != name]
    assert not any(m.matches(layer) for m in others)
    stack = nn.Module()
    stack.blocks = nn.ModuleList([block(name)[0] for _ in range(2)])
    assert find_layer_stack(stack, stack, [*others, neuron_map])[0] == "blocks"
    assert find_neuron_map(layer, [*others, neuron_map]) is neuron_map


@pytest.mark.parametrize("name", sorted(CASES))
def test_keeping_every_neuron_reproduces_the_mlp(name):
    layer, neuron_map = block(name)
    x = torch.randn(3, 5, D)
    # exact: keeping every neuron copies every weight, so both run the same ops on the same values
    torch.testing.assert_close(sliced_copy(layer, neuron_map, list(range(H)))(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_search_install_equals_slicing_and_restore_puts_the_full_modules_back(name):
    layer, neuron_map = block(name)
    kept = [0, 3, 4, 8]
    x = torch.randn(3, 5, D)
    expected = sliced_copy(layer, neuron_map, kept)(x)
    full = neuron_map.modules(layer)
    reference = layer(x)
    neuron_map.install(layer, full, torch.tensor(kept))
    assert neuron_map.width(layer) == len(kept)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)  # exact: same kept weights, same shapes
    neuron_map.restore(layer, full)
    torch.testing.assert_close(layer(x), reference, rtol=0, atol=0)  # exact: the original modules are back


def test_a_fused_projection_gives_each_neuron_its_gate_and_value_rows():
    layer, neuron_map = block("glu")
    vectors = neuron_map.input_vectors(layer)
    weight = layer.mlp.fc1.weight
    assert vectors.shape == (H, 2 * D)
    torch.testing.assert_close(vectors[3], torch.cat([weight[3], weight[H + 3]]))
    # per neuron: gate row + value row with their biases, the norm's weight and bias, the output column
    assert neuron_map.parameters_per_neuron(layer) == 2 * (D + 1) + 2 + D
    assert neuron_map.multiply_adds_per_neuron(layer) == 2 * D + D


def test_gluing_without_the_inner_norm_has_nothing_to_slice_there():
    layer, _ = block("glu")
    layer.mlp.norm = nn.Identity()  # timm builds GluMlp(norm_layer=None) this way
    neuron_map = CASES["glu"][1]
    assert neuron_map.matches(layer)
    assert [name for name, _, _ in neuron_map.hidden_tensors(layer)] == ["mlp.fc1.weight", "mlp.fc1.bias",
                                                                       "mlp.fc2.weight"]
