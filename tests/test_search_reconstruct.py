"""Reconstruction-aware search (search.reconstruct): candidates are evaluated after the closed-form refit of
their output projection. Checked against the definition (every candidate sliced and reconstructed from
scratch), keep-all = identity, budget mode, the saved model = the searched model, and 2 processes = 1."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from helpers import prune_one_and_two_processes
from oracle_search import oracle_refit_search
from safetensors.torch import load_file
from tiny_models import build

import amp_hf
from amp_hf.cli import main
from amp_hf.families import resolve
from amp_hf.reconstruct import ReconstructConfig, SearchRefit
from amp_hf.reconstruct.layers import gram_bytes
from amp_hf.selection import (
    CriterionConfig,
    CriterionEvaluator,
    adaptive_search,
    budget_search,
    build_criterion,
    taylor_scores,
    tower_cost,
)

# the refit alone (no end-to-end guard), at one damping so reconstruct() solves exactly what the search does
RAW = ReconstructConfig(enabled=True, end_to_end_check=False, damping=1e-2)


def image_batches(model, count=4, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = amp_hf.get_adapter(model).backbone(model).config
    return [{"pixel_values": torch.randn(size, 3, config.image_size, config.image_size, generator=generator)}
            for _ in range(count)]


def text_batches(count=4, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        mask = torch.ones(size, 12, dtype=torch.long)
        mask[: size // 2, 8:] = 0  # padding tokens must not enter the statistics
        batches.append({"input_ids": torch.randint(1, 99, (size, 12), generator=generator), "attention_mask": mask})
    return batches


def setup(name, count=4):
    model = build(name).eval()
    batches = text_batches(count) if name == "bert" else image_batches(model, count)
    criterion = build_criterion(CriterionConfig(name="entropy", temp_inv=15.0))
    return model, batches, criterion, taylor_scores(model, batches, criterion).abs


def output_linear(model, layer):
    module, neuron_map = resolve(model).mlps()[layer]
    return neuron_map.output(module)


@pytest.mark.parametrize("name, delta_e", [("vit", 0.002), pytest.param("bert", 0.002, marks=pytest.mark.slow)])
def test_search_evaluates_the_reconstructed_model_by_definition(name, delta_e):
    model, batches, criterion, scores = setup(name)
    evaluator = CriterionEvaluator(model, criterion, batches)
    result = adaptive_search(model, scores, evaluator, delta_e, progress=False, refit=SearchRefit(model, evaluator, RAW))
    widths, rebuilt = oracle_refit_search(model, scores, batches, criterion, delta_e)
    assert result.widths == widths
    full = amp_hf.get_adapter(model).widths(model)
    assert result.widths != full and result.projections  # something was pruned and refit
    final = CriterionEvaluator(rebuilt, criterion, batches).evaluate()
    assert result.final_entropy == pytest.approx(final, rel=1e-6, abs=1e-9)
    for layer, (weight, bias) in result.projections.items():  # the very weights reconstruction computes
        torch.testing.assert_close(weight, output_linear(rebuilt, layer).weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bias, output_linear(rebuilt, layer).bias, rtol=1e-5, atol=1e-6)
    assert {r["layer"] for r in result.refit if r["status"] == "reconstructed"} == set(result.projections)
    assert amp_hf.get_adapter(model).widths(model) == full  # the model is left as it was


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_one_pass_statistics_search_exactly_like_the_per_layer_path(name, caplog):
    model, batches, criterion, scores = setup(name)
    calibration = text_batches(5, seed=1) if name == "bert" else image_batches(model, 5, seed=1)
    layers = amp_hf.get_adapter(model).layers(model)
    needed = gram_bytes(model) / 2**30
    runs = {}
    # one pass; forced per-layer (cached calibration inputs); per-layer because the statistics do not fit
    for path, options in {"one pass": {}, "per layer": {"one_pass": False},
                          "over budget": {"memory_gb": 0.9 * needed}}.items():
        evaluator = CriterionEvaluator(model, criterion, batches)
        refit = SearchRefit(model, evaluator, ReconstructConfig(enabled=True), batches=calibration, **options)
        calls = [0] * len(layers)
        handles = [layer.register_forward_hook(lambda *_, i=i, calls=calls: calls.__setitem__(i, calls[i] + 1))
                   for i, layer in enumerate(layers)]
        with caplog.at_level(logging.INFO, logger="amp_hf.reconstruct"):
            for layer in range(len(layers) - 1, -1, -1):
                refit.prepare(layer)
        for handle in handles:
            handle.remove()
        if path == "one pass":  # every layer ran once per calibration batch, for all layers' statistics
            assert calls == [len(calibration)] * len(layers)
        else:
            assert calls[0] > len(calibration)  # per layer: the input cache, then layer 0 again for its own
        runs[path] = refit, adaptive_search(model, scores, evaluator, 0.002, progress=False, refit=refit)
    assert "collected layer by layer" in caplog.text  # the over-budget run said why
    (one, result), others = runs["one pass"], [runs["per layer"], runs["over budget"]]
    assert result.projections  # something was refit
    for refit, other in others:
        assert other.widths == result.widths and other.kept == result.kept  # exact
        assert [e["entropy"] for e in other.log] == pytest.approx([e["entropy"] for e in result.log], rel=1e-9)
        assert other.final_entropy == pytest.approx(result.final_entropy, rel=1e-9)
        assert other.projections.keys() == result.projections.keys()
        for layer, (weight, bias) in result.projections.items():
            torch.testing.assert_close(other.projections[layer][0], weight, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(other.projections[layer][1], bias, rtol=1e-9, atol=1e-9)
        for layer in range(len(layers)):  # the statistics themselves (float64 sums of the same activations)
            if layer in refit._grams:
                for mine, theirs in zip(refit._grams[layer], one._grams[layer]):
                    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_statistics_collected_by_the_taylor_pass_search_like_the_refit_pass(name):
    from amp_hf.reconstruct.layers import ProjectionGramCollector, split_heldout

    model, batches, criterion, _ = setup(name)
    calibration = text_batches(5, seed=1) if name == "bert" else image_batches(model, 5, seed=1)
    fit, heldout = split_heldout(calibration, ReconstructConfig().heldout_fraction)
    collector = ProjectionGramCollector(model, [True] * len(fit) + [False] * len(heldout))
    scores = taylor_scores(model, calibration, criterion, on_activations=collector).abs
    for mine, theirs in zip(scores, taylor_scores(model, calibration, criterion).abs):  # collecting changes nothing
        assert torch.equal(mine, theirs)
    grams = collector.grams()
    runs = {}
    for path, given in (("refit pass", None), ("taylor pass", grams)):
        evaluator = CriterionEvaluator(model, criterion, batches)
        refit = SearchRefit(model, evaluator, ReconstructConfig(enabled=True), batches=calibration, grams=given)
        runs[path] = refit, adaptive_search(model, scores, evaluator, 0.002, progress=False, refit=refit)
    (own, result), (_, other) = runs["refit pass"], runs["taylor pass"]
    assert result.projections and other.widths == result.widths and other.kept == result.kept
    assert other.final_entropy == pytest.approx(result.final_entropy, rel=1e-6)
    for layer, pair in enumerate(grams):  # the same activations, from a forward pass that also keeps the graph
        for mine, theirs in zip(pair, own._grams[layer]):
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="the pass covered 0 of the split's 5 batches"):
        ProjectionGramCollector(model, [True] * 4 + [False]).grams()


def test_keeping_every_neuron_is_the_identity():
    model, batches, criterion, scores = setup("vit")
    evaluator = CriterionEvaluator(model, criterion, batches)
    refit = SearchRefit(model, evaluator, RAW)
    evaluator.cache_inputs()
    refit.prepare(2)
    width = amp_hf.get_adapter(model).widths(model)[2]
    assert refit.projection(2, list(range(width)), output_linear(model, 2)) is None
    # ΔE = 0 with the change rule: only candidates that do not move the criterion at all could pass
    result = adaptive_search(model, scores, evaluator, 0.0, steps=3, progress=False, acceptance="change",
                             refit=refit)
    assert result.widths == amp_hf.get_adapter(model).widths(model) and not result.projections
    assert result.final_entropy == result.reference_entropy
    assert {r["reason"] for r in result.refit} == {"keeps every neuron"}


def test_budget_mode_with_refit_reuses_its_searches_and_meets_the_target():
    model, batches, criterion, scores = setup("vit", count=2)
    cost = tower_cost(model, "params")
    evaluator = CriterionEvaluator(model, criterion, batches)
    result, achieved = budget_search(model, scores, evaluator, 0.3, cost, steps=4, tolerance=0.03,
                                     refit=SearchRefit(model, evaluator), progress=False)
    assert abs(achieved - 0.3) <= 0.03
    fresh_evaluator = CriterionEvaluator(model, criterion, batches)
    fresh = adaptive_search(model, scores, fresh_evaluator, result.delta_e, steps=4, progress=False,
                            refit=SearchRefit(model, fresh_evaluator))
    # exact: the same evaluations and solves repeated in one process (only the memo differs)
    assert fresh.widths == result.widths and fresh.final_entropy == result.final_entropy
    assert fresh.projections.keys() == result.projections.keys()
    for layer in fresh.projections:
        torch.testing.assert_close(fresh.projections[layer][0], result.projections[layer][0], rtol=0, atol=0)


# -- the command line: the saved model is the searched model ------------------------------------------------


PRUNE = ["prune", "search.reconstruct=true", "search.allocation=adaptive", "search.delta_e=0.003",
         "scoring.data.source=digits", "scoring.data.num_samples=64", "scoring.data.batch_size=16"]


def test_saved_model_is_the_searched_model(vit_checkpoint, tmp_path, capsys):
    from amp_hf.data import DataConfig, load_processor
    from amp_hf.distributed import make_accelerator
    from amp_hf.pruning import PruneConfig, PruneRun, ScoringConfig

    output = tmp_path / "pruned"
    assert main([*PRUNE, f"model={vit_checkpoint}", f"output={output}"]) == 0
    assert "reconstruction (in the search): " in capsys.readouterr().out
    report = json.loads((output / "prune_report.json").read_text())
    provenance = json.loads((output / "config.json").read_text())["amp_pruning"]
    assert provenance["reconstruct"] is True and provenance["reconstruction"]["mode"] == "in_search"
    assert provenance["reconstruction"]["layers_reconstructed"]  # the search really refit something
    # the calibration batches are the scoring batches: the Taylor pass collected the refit's statistics
    assert report["details"]["reconstruct_statistics"] == "scoring pass"
    assert report["widths"] != report["original_widths"]

    saved = amp_hf.load_model(str(output)).eval()
    base = amp_hf.load_model(str(vit_checkpoint)).eval()
    processor = load_processor(str(vit_checkpoint), amp_hf.get_adapter(base))
    data = DataConfig(source="digits", num_samples=64, batch_size=16)
    config = PruneConfig(model=str(vit_checkpoint), scoring=ScoringConfig(data=data))
    run = PruneRun(config, amp_hf.resolve(base), processor, make_accelerator(split_batches=True))
    batches = list(run.loader(data, shuffle=False))  # the search's batches
    criterion = build_criterion(CriterionConfig())
    value = CriterionEvaluator(saved, criterion, batches).evaluate()
    assert value == pytest.approx(report["details"]["final_entropy"], rel=1e-5)
    # and the refit mattered: plain slicing of the same widths measures something else
    plain = amp_hf.slice_model(base, amp_hf.PrunePlan.load(output))
    assert CriterionEvaluator(plain, criterion, batches).evaluate() != pytest.approx(value, rel=1e-5)


def test_blockwise_refinement_of_the_searched_widths(vit_checkpoint, tmp_path):
    """search.reconstruct picks the widths; reconstruct.mode=blockwise then ships the sequential closed form +
    blockwise steps of exactly those widths (the recipe docs/benchmarks.md measures as amp-refit + blockwise)."""
    searched, refined = tmp_path / "searched", tmp_path / "refined"
    assert main([*PRUNE, f"model={vit_checkpoint}", f"output={searched}"]) == 0
    assert main([*PRUNE, f"model={vit_checkpoint}", f"output={refined}", "reconstruct.enabled=true",
                 "reconstruct.mode=blockwise", "reconstruct.blockwise_steps=4", "reconstruct.blockwise_eval_every=2"]) == 0
    plans = [amp_hf.PrunePlan.load(path) for path in (searched, refined)]
    assert plans[1].widths == plans[0].widths and plans[1].kept == plans[0].kept
    provenance = json.loads((refined / "config.json").read_text())["amp_pruning"]["reconstruction"]
    assert provenance["mode"] == "blockwise" and provenance["refinement"]["steps"] == 4
    assert json.loads((refined / "prune_report.json").read_text())["details"]["reconstruct"] is True


def test_dgmr_search_chooses_prefixes_of_its_gram_schmidt_order(vit_checkpoint, tmp_path):
    from amp_hf.selection import dgmr_scores

    output = tmp_path / "dgmr"
    # one halving: every layer's candidate is half its width, a prefix long enough to tell orders apart
    # (on this random tiny ViT any prefix passes ΔE, so more halvings would end at width 1)
    args = [*PRUNE, "method=dgmr", "search.steps=1", "search.delta_e=0.01", f"model={vit_checkpoint}"]
    assert main([*args, f"output={output}"]) == 0
    plan = amp_hf.PrunePlan.load(output)
    base = amp_hf.load_model(str(vit_checkpoint))
    assert plan.widths == [w // 2 for w in plan.original_widths]
    for kept, scores in zip(plan.kept, dgmr_scores(base, width=max(plan.original_widths))):
        order = torch.sort(-scores, stable=True).indices.tolist()
        assert set(kept) == set(order[: len(kept)])  # a prefix of DGMR's pick order
    report = json.loads((output / "prune_report.json").read_text())
    assert report["method"] == "dgmr" and report["reconstruction"]["mode"] == "in_search"
    assert report["details"]["reconstruct_statistics"] == "own pass"  # DGMR runs no Taylor pass to collect them


@pytest.mark.parametrize("override, message", [
    ("search.allocation=uniform", "use reconstruct.enabled=true"),
    ("reconstruct.enabled=true", "drop reconstruct.enabled, or set reconstruct.mode=blockwise"),
])
def test_search_reconstruct_conflicts_fail_with_the_fix(vit_checkpoint, tmp_path, capsys, override, message):
    args = [*PRUNE, f"model={vit_checkpoint}", f"output={tmp_path / 'never'}", override,
            "search.target_reduction=0.3"]
    assert main(args) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "never").exists()


@pytest.mark.multiprocess
def test_two_processes_search_like_one(vit_checkpoint, tmp_path):
    args = [*PRUNE, f"model={vit_checkpoint}"]
    prune_one_and_two_processes(main, args, tmp_path)
    reports = [json.loads((tmp_path / name / "prune_report.json").read_text()) for name in ("one", "two")]
    assert reports[1]["widths"] == reports[0]["widths"] and reports[1]["num_processes"] == 2
    assert [r["details"]["reconstruct_statistics"] for r in reports] == ["scoring pass"] * 2
    assert reports[1]["reconstruction"]["layers_reconstructed"] == reports[0]["reconstruction"]["layers_reconstructed"]
    assert reports[1]["details"]["final_entropy"] == pytest.approx(reports[0]["details"]["final_entropy"], rel=1e-6)
    one, two = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6)
