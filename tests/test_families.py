"""Every supported model class is complete: an Auto mapping, an export spec, a tiny builder and a neuron map.

A family that forgets one of them fails here, not silently somewhere downstream."""

from __future__ import annotations

import functools

import pytest
import torch
from tiny_models import BUILDERS, build

import amp_hf
from amp_hf.families import ADAPTERS, AUTO_CLASSES, MODEL_CLASSES, auto_map_for
from amp_hf.slicing import slice_stack

ENTRIES = [(adapter, entry) for adapter in ADAPTERS.values() for entry in adapter.classes]
IDS = [entry.amp.__name__ for _, entry in ENTRIES]
# Classes without an export spec (none today): adding a class without one fails until it is listed here.
WITHOUT_EXPORT_SPEC: set[str] = set()
BUILT_ELSEWHERE = {  # the .venv-vision families (tests/test_open_clip*.py, tests/test_timm*.py)
    "AmpOpenCLIPModel": "tiny_open_clip.build_open_clip",
    "AmpTimmWrapperModel": "tests/test_timm.py",
    "AmpTimmWrapperForImageClassification": "tests/test_timm.py",
}


@functools.cache
def tiny_builders() -> dict[type, str]:
    """Stock class -> the tiny_models builder that makes one."""
    return {type(build(name)): name for name in BUILDERS}


def tiny_builder_of(stock: type) -> str | None:
    return tiny_builders().get(stock)


@pytest.mark.parametrize(("adapter", "entry"), ENTRIES, ids=IDS)
def test_every_model_class_has_an_auto_mapping(adapter, entry):
    assert MODEL_CLASSES[entry.amp.__name__] is entry.amp
    registered = AUTO_CLASSES[entry.amp.config_class]
    assert all(registered[name] is entry.amp for name in entry.auto)
    auto_map = auto_map_for(entry.amp.config_class, entry.amp)
    module = entry.amp.__module__.rsplit(".", 1)[-1]
    assert auto_map["AutoConfig"] == f"{module}.{entry.amp.config_class.__name__}"
    # loadable without amp-hf: some Auto class of the saved config names this very class
    assert f"{module}.{entry.amp.__name__}" in auto_map.values()


@pytest.mark.parametrize(("adapter", "entry"), ENTRIES, ids=IDS)
def test_every_model_class_has_an_export_spec_or_is_listed_without_one(adapter, entry):
    assert (entry.export is None) == (entry.amp.__name__ in WITHOUT_EXPORT_SPEC)
    if entry.export is not None:
        assert entry.task == entry.export.task
        assert {graph.modality for graph in entry.export.graphs} <= {"image", "text"}


@pytest.mark.parametrize(("adapter", "entry"), ENTRIES, ids=IDS)
def test_every_model_class_has_a_tiny_builder_and_a_neuron_map(adapter, entry):
    if entry.amp.__name__ in BUILT_ELSEWHERE:
        pytest.skip(f"built by {BUILT_ELSEWHERE[entry.amp.__name__]} in the .venv-vision run")
    name = tiny_builder_of(entry.stock)
    assert name is not None, f"tests/tiny_models.py has no builder for {entry.stock.__name__}"
    model = build(name)
    assert amp_hf.get_adapter(model) is adapter
    stack = amp_hf.resolve(model)
    assert all(neuron_map in adapter.neuron_maps for neuron_map in stack.maps)
    assert entry.amp._amp_neuron_maps == adapter.neuron_maps  # the remote code probes with the same maps
    widths = stack.widths()
    assert widths and all(width > 0 for width in widths)
    pruned = amp_hf.slice_model(model, amp_hf.keep_all_plan(model))
    assert type(pruned) is entry.amp and amp_hf.resolve(pruned).widths() == widths


@pytest.mark.parametrize(("adapter", "entry"), ENTRIES, ids=IDS)
def test_slicing_hands_back_the_pruned_stack_as_probing_finds_it(adapter, entry):
    # reconstruct, the search refit and the statistics use this stack instead of probing the pruned model
    if entry.amp.__name__ in BUILT_ELSEWHERE:
        pytest.skip(f"built by {BUILT_ELSEWHERE[entry.amp.__name__]} in the .venv-vision run")
    model = build(tiny_builder_of(entry.stock))
    widths = amp_hf.resolve(model).widths()
    plan = amp_hf.PrunePlan(widths, [range(0, width, 2) for width in widths])
    handed = slice_stack(model, plan)
    probed = amp_hf.resolve(handed.model)
    assert (handed.adapter, handed.layers_path, handed.maps) == (probed.adapter, probed.layers_path, probed.maps)
    assert handed.widths() == probed.widths() == plan.widths != widths


@pytest.mark.parametrize("adapter", list(ADAPTERS.values()), ids=list(ADAPTERS))
def test_family_facts_are_consistent(adapter):
    assert adapter.summary in ("cls", "mean")
    assert adapter.modality in ("image", "text")
    if adapter.joint_embedding is not None or adapter.text_padding != "longest":
        assert adapter.image_text
    if adapter.image_text:  # some class of the family holds both towers
        assert any(entry.task == "zero-shot-image-classification" for entry in adapter.classes)


def test_summary_token_matches_the_sequence_layout():
    """A "cls" image family has one token more than it has patches; SigLIP ("mean") has patches only."""
    patches = (32 // 8) ** 2
    for name in ("vit", "dinov2", "clip_vision", "siglip_vision"):
        model = build(name)
        with torch.no_grad():
            tokens = model(pixel_values=torch.zeros(1, 3, 32, 32)).last_hidden_state.shape[1]
        assert tokens == patches + (amp_hf.get_adapter(model).summary == "cls"), name
