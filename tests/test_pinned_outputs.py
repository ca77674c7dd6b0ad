"""Pinned results: slicing, scores, search and reconstruction stay what they were across refactors.

What is exact by construction is pinned bit for bit (SHA-256, first 16 hex digits, in
``tests/data/pinned_outputs/digests.json``): sliced state dicts (values are copied), the widths and kept indices
the search chooses, its sequence of candidate widths and decisions, the integer cost figures, the tensors
reconstruction leaves untouched and its per-layer choice of damping. Everything computed in floating point
(forward outputs, Taylor/DGMR/magnitude scores, the search's criterion values, reconstructed weights and
held-out errors) is stored in ``tests/data/pinned_outputs/<case>.safetensors`` and compared with
``torch.testing.assert_close`` at the tolerances below: SHA-256 of float bytes pins the CPU's kernels (SIMD
width, blocking, FMA, thread count), not amp-hf's behaviour.

A discrete choice made from floats (a search decision, a top-k cut, a damping) that comes out differently while
the floats it was made from agree within tolerance is a tie, not a regression: the test skips with a reason
starting "tie:" that names the layer and the margin (nothing after that choice can be compared). A choice that
differs by more than the tolerance fails.

Regenerate only for an intended change of results (it refuses to overwrite without ``--force``):
``python tests/test_pinned_outputs.py --regenerate``
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import build, sample_inputs

import amp_hf
from amp_hf.reconstruct import ReconstructConfig, reconstruct
from amp_hf.selection import (
    CriterionConfig,
    CriterionEvaluator,
    accepts,
    adaptive_search,
    build_criterion,
    dgmr_scores,
    magnitude_scores,
    taylor_scores,
    tower_cost,
)

REFERENCES = Path(__file__).parent / "data" / "pinned_outputs"
DIGESTS = REFERENCES / "digests.json"
SLICING_FAMILIES = ["bert", "clip", "clip_vision", "clip_vision_proj", "dinov2", "dinov2_swiglu",
                    "dinov2_swiglu_cls", "siglip", "siglip_vision", "vit", "vit_cls"]  # fmt: skip
METHOD_FAMILIES = ["bert", "clip", "dinov2_swiglu", "siglip_vision", "vit"]
SEARCH_DELTA_E = 0.05

# Tolerances (rtol, atol). float32 eps is 1.2e-7; a float32 dot product of n terms summed in another order
# (SIMD width, blocking, FMA, threads) moves by up to ~n·eps relative to the sum of |terms|.
TOLERANCES = {
    # float32 forward through <= 3 blocks of 32-128-term sums plus LayerNorm: ~1e-5 relative worst case, x10 margin
    "outputs": (1e-4, 1e-5),
    # float64 mean of float32 activation x gradient products (forward + backward, ~2x the forward's depth); atol is
    # relative to the layer's largest score: signed scores cancel, their error scales with the terms, not the sum
    "taylor": (1e-4, 1e-4),
    # pick ranks (integers n..1, 0 unpicked) from a float64 QR of copied weights: exact (here the closest pivot
    # call is 3e-4 relative apart, float64 rounding 1e-16)
    "dgmr": (0.0, 0.0),
    # float64 norms of copied float32 weights: <= 128 terms x float64 eps 1.1e-16, x100 margin
    "magnitude": (1e-12, 0.0),
    # the entropy criterion: float32 forward, float64 mean of a softmax's entropy over <= 12 samples
    "search": (1e-5, 1e-6),
    # least-squares refit in float64 from float32 Gram statistics: inherits the forward's float32 error
    "reconstruct": (1e-4, 1e-6),
    # held-out relative errors of those refits (ratios of float64 quadratics of the same statistics)
    "reconstruct_errors": (1e-4, 1e-7),
}


def digest(*tensors: torch.Tensor) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        sha.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return sha.hexdigest()[:16]


def portable(name: str):
    """``tiny_models.build(name)`` with every non-constant weight redrawn so it is bit-identical on every CPU.

    ``torch.randn`` / ``normal_`` / ``trunc_normal_`` (the stock initialisers) have vectorised kernels that draw
    other numbers than the scalar path (``ATEN_CPU_CAPABILITY=default``, non-x86 CPUs); ``torch.rand`` and
    ``randint`` draw the same bits everywhere and one multiplication by a constant rounds the same everywhere.
    Constant tensors (LayerNorm ones and zeros, zero biases, CLIP's logit scale) are kept.
    """
    model = build(name)
    generator = torch.Generator().manual_seed(0)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point() or tensor.numel() < 2 or bool((tensor == tensor.flatten()[0]).all()):
                continue
            owner = modules.get(key.rpartition(".")[0])
            is_weight = key.endswith(".weight") and isinstance(owner, (torch.nn.Linear, torch.nn.Conv2d))
            bound = tensor[0].numel() ** -0.5 if is_weight else 0.04  # PyTorch's default Linear bound: 1/sqrt(fan_in)
            uniform = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
            tensor.copy_((2 * uniform - 1) * bound)
    return model


def portable_inputs(model, batch_size: int = 2, seed: int = 1) -> dict:
    """``tiny_models.sample_inputs`` with pixels drawn by ``torch.rand`` (same bits on every CPU, see above)."""
    inputs = sample_inputs(model, batch_size, seed)
    if "pixel_values" in inputs:
        generator = torch.Generator().manual_seed(seed)
        uniform = torch.rand(inputs["pixel_values"].shape, generator=generator, dtype=torch.float64)
        inputs["pixel_values"] = ((2 * uniform - 1) * 3**0.5).float()  # unit variance, like randn's
    return inputs  # input_ids come from torch.randint: the same everywhere


def pinned_plan(model) -> amp_hf.PrunePlan:
    widths = amp_hf.get_adapter(model).widths(model)
    generator = torch.Generator().manual_seed(7)
    keep = [(max(1, w // 3), w, 1)[i % 3] for i, w in enumerate(widths)]
    kept = [torch.randperm(w, generator=generator)[:k].tolist() for w, k in zip(widths, keep)]
    return amp_hf.PrunePlan(widths, kept, method="random")


def criterion_batches(model, count: int) -> list[dict]:
    adapter = amp_hf.get_adapter(model)
    batches = []
    for seed in range(count):
        inputs = portable_inputs(model, batch_size=6, seed=seed + 10)
        batches.append({"pixel_values": inputs["pixel_values"]} if adapter.modality == "image" else inputs)
    return batches


def run_slicing(name: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(exact digests, float tensors) of slicing ``name`` by the pinned plan and running it."""
    model = portable(name)
    pruned = amp_hf.slice_model(model, pinned_plan(model))
    state = pruned.state_dict()
    with torch.no_grad():
        outputs = pruned(**portable_inputs(model))
    tensors = [v for v in outputs.values() if isinstance(v, torch.Tensor)]
    return ({"state": digest(*(state[k] for k in sorted(state)))},
            {f"outputs.{i}": t.detach().contiguous() for i, t in enumerate(tensors)})


def run_methods(name: str) -> tuple[dict[str, str], dict[str, torch.Tensor], dict]:
    """(exact digests, float/decision tensors, objects) of Taylor/DGMR/magnitude scores, the cost model, a
    cached-input adaptive search and a reconstruction of ``name``."""
    model = portable(name)
    criterion = build_criterion(CriterionConfig())
    batches = criterion_batches(model, 4)
    taylor = taylor_scores(model, batches[:2], criterion)
    tensors = {f"taylor.abs.{i}": s for i, s in enumerate(taylor.abs)}
    tensors.update({f"taylor.signed.{i}": s for i, s in enumerate(taylor.signed)})
    tensors.update({f"dgmr.{i}": s for i, s in enumerate(dgmr_scores(model, width=8))})
    tensors.update({f"magnitude.{i}": s for i, s in enumerate(magnitude_scores(model))})
    # parameter and FLOP counts: integers (held in float64 well below 2**53), exact by construction
    params, flops = tower_cost(model, "params"), tower_cost(model, "flops")
    cost = torch.tensor([params.base_total, *params.per_neuron, flops.base_total, *flops.per_neuron],
                        dtype=torch.float64)
    evaluator = CriterionEvaluator(model, criterion, batches[2:])
    search = adaptive_search(model, taylor.abs, evaluator, delta_e=SEARCH_DELTA_E, steps=3, progress=False)
    tensors["search.reference"] = torch.tensor([search.reference_entropy], dtype=torch.float64)
    tensors["search.entropy"] = torch.tensor([v["entropy"] for v in search.log], dtype=torch.float64)
    steps = torch.tensor([[v["layer"], v["width"], int(v["accepted"])] for v in search.log])
    kept = torch.tensor([i for k in search.kept for i in k])

    plan = pinned_plan(model)
    pruned, report = reconstruct(model, plan, batches, ReconstructConfig(enabled=True, end_to_end_check=False))
    state = pruned.state_dict()
    sliced = amp_hf.slice_model(model, plan).state_dict()
    # reconstruction changes only refit output projections; the rest is the sliced model's, copied
    refit = sorted(k for k in state if not torch.equal(state[k], sliced[k]))
    tensors.update({f"reconstruct.{k}": state[k].contiguous() for k in refit})
    for layer in report.layers:
        tensors[f"reconstruct.errors.{layer.layer}"] = torch.tensor(
            [[math.nan, layer.error_sliced if layer.error_sliced is not None else math.nan],
             *([d, e] for d, e in sorted(layer.damping_errors.items()))], dtype=torch.float64)
    # the damping a layer uses, NaN when it stays sliced: a choice among configured constants
    choices = torch.tensor([math.nan if r.status == "sliced" else r.damping for r in report.layers],
                           dtype=torch.float64)
    exact = {
        "cost": digest(cost),
        "search_steps": digest(steps),
        "widths": digest(torch.tensor(search.widths)),
        "kept": digest(kept),
        "reconstruct_copied": digest(*(state[k] for k in sorted(state) if k not in refit)),
        "reconstruct_refit_keys": hashlib.sha256(json.dumps(refit).encode()).hexdigest()[:16],
        "reconstruct_choices": digest(choices),
    }
    return exact, tensors, {"search": search, "steps": steps, "choices": choices, "report": report}


# -- comparing ----------------------------------------------------------------------------------------------


SCALED = {"taylor"}  # kinds whose atol multiplies the reference tensor's largest magnitude


def close(actual: torch.Tensor, expected: torch.Tensor, kind: str, what: str) -> None:
    rtol, atol = TOLERANCES[kind]
    if kind in SCALED:
        atol *= float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what} ({kind}: rtol={rtol:g}, atol={atol:g}): {m}")


def within(a: float, b: float, kind: str, scale: float = 1.0) -> bool:
    rtol, atol = TOLERANCES[kind]
    return abs(a - b) <= atol * (scale if kind in SCALED else 1.0) + rtol * abs(b)


def cut_gap(scores: torch.Tensor, width: int) -> float | None:
    """Score gap between the last neuron kept and the first dropped at ``width`` (None: nothing is cut)."""
    if not 0 < width < len(scores):
        return None
    ordered = torch.sort(scores.double(), descending=True).values
    return float(ordered[width - 1] - ordered[width])


def is_cut_tie(scores: torch.Tensor, width: int) -> bool:
    """Whether the last kept and first dropped neuron at ``width`` score within the Taylor tolerance."""
    if not 0 < width < len(scores):
        return False
    ordered = torch.sort(scores.double(), descending=True).values
    return within(float(ordered[width - 1]), float(ordered[width]), "taylor", float(ordered.abs().max()))


def check_search(reference: dict, search, steps: torch.Tensor, name: str) -> None:
    """Walk the search's log against the reference: criterion values within tolerance, same decisions; a
    decision or top-k cut that differs where the reference's floats sit within tolerance of the threshold is a
    tie (skip), anything else fails."""
    ref_steps = reference["search.steps"]
    ref_values = reference["search.entropy"].tolist()
    close(torch.tensor([search.reference_entropy], dtype=torch.float64), reference["search.reference"], "search",
          f"{name}: unpruned criterion value")
    chain = float(reference["search.reference"])  # the reference the current layer's candidates are judged against
    best = None
    for index, entry in enumerate(search.log):
        layer, width, accepted = ref_steps[index].tolist()
        if best is not None and layer != ref_steps[index - 1, 0]:
            chain, best = best, None  # a new layer: the previous layer's last accepted value is the reference
        assert (entry["layer"], entry["width"]) == (layer, width), (
            f"{name}: search step {index} tried layer {entry['layer']} width {entry['width']}, reference "
            f"layer {layer} width {width}, with every earlier criterion value and decision the same")
        scores = reference[f"taylor.abs.{layer}"]
        if not within(entry["entropy"], ref_values[index], "search") and is_cut_tie(scores, width):
            pytest.skip(f"tie: {name} layer {layer} width {width}: Taylor scores at the top-{width} cut differ by "
                        f"{cut_gap(scores, width):.3g}, within the score tolerance; the neurons kept differ")
        close(torch.tensor(entry["entropy"], dtype=torch.float64), reference["search.entropy"][index], "search",
              f"{name}: criterion value of search step {index} (layer {layer}, width {width})")
        if bool(entry["accepted"]) != bool(accepted):
            margin = ref_values[index] - chain - SEARCH_DELTA_E
            if within(ref_values[index], chain + SEARCH_DELTA_E, "search"):
                pytest.skip(f"tie: {name} layer {layer} width {width}: the criterion rise is {margin:+.3g} from "
                            f"ΔE={SEARCH_DELTA_E}, within tolerance; the search decided the other way")
            pytest.fail(f"{name}: search step {index} (layer {layer}, width {width}) "
                        f"{'accepted' if entry['accepted'] else 'rejected'} a candidate the reference "
                        f"{'accepted' if accepted else 'rejected'}, {margin:+.3g} from the ΔE threshold "
                        f"(value {entry['entropy']:.6g}, reference {chain:.6g}, ΔE {SEARCH_DELTA_E}, same rule "
                        f"would decide as the reference: {accepts(ref_values[index], chain, SEARCH_DELTA_E)})")
        if accepted:
            best = ref_values[index]
    assert len(search.log) == len(ref_steps), f"{name}: {len(search.log)} search steps, reference {len(ref_steps)}"
    assert torch.equal(steps, ref_steps), f"{name}: search steps differ from the reference"


def check_kept(reference: dict, search, digests: dict, name: str) -> None:
    """Kept indices follow from the Taylor order at the chosen widths: a difference is a tie when the scores
    at some layer's cut are within tolerance of each other."""
    if digest(torch.tensor([i for k in search.kept for i in k])) == digests["kept"]:
        return
    ties = [(layer, width, cut_gap(reference[f"taylor.abs.{layer}"], width)) for layer, width in
            enumerate(search.widths) if is_cut_tie(reference[f"taylor.abs.{layer}"], width)]
    if ties:
        pytest.skip(f"tie: {name} kept indices differ; the Taylor scores at the cut are within tolerance at "
                    + ", ".join(f"layer {layer} width {width} (gap {gap:.3g})" for layer, width, gap in ties))
    pytest.fail(f"{name}: the kept indices differ from the reference though widths, scores and every search "
                f"decision agree (no Taylor scores within tolerance at any cut)")


def check_reconstruct_choices(reference: dict, choices: torch.Tensor, digests: dict, name: str) -> None:
    """Per layer, the damping with the smallest held-out error (or plain slicing if nothing beats it): a
    different choice is a tie when the two candidates' reference errors are within tolerance."""
    if digest(choices) == digests["reconstruct_choices"]:
        return
    expected = []
    for layer in range(len(choices)):
        rows = reference[f"reconstruct.errors.{layer}"]  # [NaN, sliced error], then [damping, error] per damping
        errors = {(None if math.isnan(d) else d): e for d, e in rows.tolist()}
        ref_choice = min((d for d in errors if d is not None), key=lambda d: errors[d], default=None)
        if ref_choice is not None and not errors[ref_choice] < errors[None]:
            ref_choice = None
        got = None if math.isnan(float(choices[layer])) else float(choices[layer])
        expected.append(ref_choice)
        if got == ref_choice:
            continue
        if got in errors and within(errors[got], errors[ref_choice], "reconstruct_errors"):
            pytest.skip(f"tie: {name} layer {layer}: reconstruction chose damping {got} instead of {ref_choice}; "
                        f"their reference held-out errors {errors[got]:.6g} and {errors[ref_choice]:.6g} are within "
                        f"tolerance (None = plainly sliced)")
        pytest.fail(f"{name} layer {layer}: reconstruction chose damping {got}, the reference {ref_choice} "
                    f"(held-out errors {errors}; None = plainly sliced)")
    pytest.fail(f"{name}: reconstruction's choices {choices.tolist()} differ from the reference digest though each "
                f"layer's choice matches the reference errors' minimum {expected}")


@pytest.fixture(scope="module")
def pinned():
    if not DIGESTS.is_file():
        pytest.fail(f"{DIGESTS} is missing: run `python tests/test_pinned_outputs.py --regenerate`")
    return json.loads(DIGESTS.read_text())


def load_reference(case: str) -> dict[str, torch.Tensor]:
    return load_file(str(REFERENCES / f"{case}.safetensors"))


@pytest.mark.parametrize("name", SLICING_FAMILIES)
def test_slicing_matches_the_pinned_results(name, pinned):
    exact, tensors = run_slicing(name)
    assert exact == pinned["slicing"][name]  # copied values: bit-identical on every machine
    reference = load_reference(f"slicing_{name}")
    assert sorted(tensors) == sorted(reference), f"{name}: the model returns other outputs than the reference"
    for key in sorted(reference):
        close(tensors[key], reference[key], "outputs", f"{name}: {key}")


@pytest.mark.parametrize("name", METHOD_FAMILIES)
def test_scores_search_and_reconstruction_match_the_pinned_results(name, pinned):
    exact, tensors, objects = run_methods(name)
    digests = pinned["methods"][name]
    reference = load_reference(f"methods_{name}")
    for kind in ("taylor", "dgmr", "magnitude"):
        for key in sorted(k for k in reference if k.startswith(f"{kind}.")):
            close(tensors[key], reference[key], kind, f"{name}: {key} scores")
    assert exact["cost"] == digests["cost"], f"{name}: parameter / FLOP counts differ (integers: exact)"

    check_search(reference, objects["search"], objects["steps"], name)
    assert exact["widths"] == digests["widths"], f"{name}: search widths differ though every step agrees"
    check_kept(reference, objects["search"], digests, name)

    check_reconstruct_choices(reference, objects["choices"], digests, name)
    assert exact["reconstruct_refit_keys"] == digests["reconstruct_refit_keys"], (
        f"{name}: reconstruction refit other tensors than the reference")
    # tensors reconstruction does not touch are the sliced model's copied values
    assert exact["reconstruct_copied"] == digests["reconstruct_copied"], f"{name}: tensors reconstruction keeps differ"
    for key in sorted(k for k in reference if k.startswith("reconstruct.errors.")):
        close(tensors[key], reference[key], "reconstruct_errors", f"{name}: {key} (held-out error per damping)")
    for key in sorted(k for k in reference if k.startswith("reconstruct.") and ".errors." not in k):
        close(tensors[key], reference[key], "reconstruct", f"{name}: refit {key}")


# -- regenerating -------------------------------------------------------------------------------------------


def compute_references() -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    torch.set_num_threads(1)  # references from one fixed summation order; the tests run at any thread count
    digests: dict = {"slicing": {}, "methods": {}}
    files = {}
    for name in SLICING_FAMILIES:
        digests["slicing"][name], files[f"slicing_{name}"] = run_slicing(name)
    for name in METHOD_FAMILIES:
        exact, tensors, objects = run_methods(name)
        tensors["search.steps"] = objects["steps"]
        digests["methods"][name], files[f"methods_{name}"] = exact, tensors
        near_ties(name, tensors)
    return digests, files


def near_ties(name: str, tensors: dict) -> None:
    """Print the reference's closest calls (search decisions vs ΔE), so a regeneration shows how robust it is."""
    values, steps = tensors["search.entropy"].tolist(), tensors["search.steps"].tolist()
    chain, best, margins = float(tensors["search.reference"]), None, []
    for index, (layer, _width, accepted) in enumerate(steps):
        if best is not None and layer != steps[index - 1][0]:
            chain, best = best, None
        margins.append(abs(values[index] - chain - SEARCH_DELTA_E))
        best = values[index] if accepted else best
    print(f"{name}: closest search decision {min(margins):.3g} nats from ΔE "
          f"(search tolerance {TOLERANCES['search'][1] + TOLERANCES['search'][0] * max(map(abs, values)):.3g})")


def regenerate(force: bool) -> int:
    if REFERENCES.exists() and not force:
        print(f"{REFERENCES} exists; pass --force to overwrite it (only for an intended change of results)",
              file=sys.stderr)
        return 2
    digests, files = compute_references()
    REFERENCES.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pinned_outputs.", dir=REFERENCES.parent))
    for case, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / f"{case}.safetensors"))
    (staging / "digests.json").write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    if REFERENCES.exists():
        old = json.loads(DIGESTS.read_text()) if DIGESTS.is_file() else {}
        for group, cases in digests.items():
            for case, values in cases.items():
                for key, value in values.items():
                    before = old.get(group, {}).get(case, {}).get(key)
                    if before != value:
                        print(f"exact digest changed: {group} {case} {key}: {before} -> {value}")
        shutil.rmtree(REFERENCES)
    staging.rename(REFERENCES)
    print(f"wrote {len(files)} reference files and digests.json to {REFERENCES}")
    return 0


if __name__ == "__main__":
    flags = set(sys.argv[1:])
    if not flags or not flags <= {"--regenerate", "--force"} or "--regenerate" not in flags:
        print("usage: python tests/test_pinned_outputs.py --regenerate [--force]", file=sys.stderr)
        sys.exit(2)
    sys.exit(regenerate("--force" in flags))
