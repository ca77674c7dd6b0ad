"""The prune pipeline: load -> score -> allocate widths -> slice -> save, driven by one config.

Runs the same on one process or many (``accelerate launch -m amp_hf prune ...``): every process scores and
searches its shard of each global batch; only the main process writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from ._version import __version__
from .accounting import compare_stats, model_stats
from .checkpoint import write_pruned
from .data import DataConfig, DataError, load_processor, make_loader, prepare_dataset
from .distributed import make_accelerator
from .families import MlpStack, resolve
from .files.artifacts import PRUNE_REPORT_FILE
from .files.config_utils import ConfigError
from .files.outputs import atomic_directory
from .files.provenance import hub_reference, portable, portable_reference
from .files.sentence_transformers_format import check_carried_files
from .loading import load_model, resolve_model_path
from .plan import PrunePlan
from .pruning_config import OVERWRITE, PruneConfig, ScoringConfig, config_inputs, prepare_prune_output  # noqa: F401 (re-exported)
from .reconstruct import SearchRefit, check_residual_writers, install_search_refit, reconstruct_stack, search_refit_summary
from .reconstruct.layers import ProjectionGramCollector, gram_bytes, split_heldout
from .selection import (
    SCORING_METHODS,
    CriterionEvaluator,
    NeuronScores,
    ScoringInputs,
    SearchConfig,
    adaptive_search,
    budget_search,
    build_criterion,
    check_budget_reachable,
    global_widths,
    tower_cost,
    uniform_widths,
)
from .slicing import slice_stack

logger = logging.getLogger(__name__)


def _accelerator():
    return make_accelerator(split_batches=True)


@dataclass
class PruneRun:
    """What one run resolved once and carries from step to step: the config, the model resolved to its
    family and MLP maps, its processor, the accelerator, and the criterion (built and prepared on first use)."""

    config: PruneConfig
    stack: MlpStack
    processor: object
    accelerator: object
    _criterion: object = field(default=None, init=False, repr=False)
    _calibration: list | None = field(default=None, init=False, repr=False)
    # search.reconstruct: every layer's Gram statistics, collected during Taylor scoring (see compute_scores)
    scoring_grams: list | None = field(default=None, init=False, repr=False)

    @classmethod
    def start(cls, config: PruneConfig, accelerator) -> PruneRun:
        model = load_model(config.model).to(accelerator.device)
        stack = resolve(model)
        return cls(config, stack, load_processor(resolve_model_path(config.model), stack.adapter), accelerator)

    @property
    def model(self):
        return self.stack.model

    @property
    def method(self):
        return SCORING_METHODS[self.config.method]

    @property
    def criterion(self):
        if self._criterion is None:
            self._criterion = build_criterion(self.config.criterion)
            self._criterion.prepare(self.stack, self.processor)
        return self._criterion

    def calibration_batches(self) -> list[dict]:
        """The reconstruction's calibration batches (``reconstruct.data`` / ``num_samples``, default the scoring
        data), loaded once per run."""
        if self._calibration is None:
            data = self.config.reconstruct.calibration_data(self.config.scoring.data)
            self._calibration = list(self.loader(data, shuffle=True))
        return self._calibration

    def gram_statistics_from_scoring(self) -> bool:
        """Whether Taylor scoring's own pass can collect the search refit's Gram statistics: the refit's
        calibration batches are the scoring batches (the same data config, no scoring.max_batches),
        scored in float32 (the refit's statistics are float32 activations), and every layer's statistics fit in
        ``search.cache_gb`` (as for the search's own one-pass collection)."""
        config = self.config
        return (config.search.reconstruct and self.method.needs_data and config.scoring.precision == "fp32"
                and config.reconstruct.calibration_data(config.scoring.data) == config.scoring.data
                and config.scoring.max_batches is None and gram_bytes(self.stack) <= config.search.cache_gb * 2**30)

    def loader(self, data: DataConfig, shuffle: bool):
        dataset = prepare_dataset(data, self.processor, self.stack.adapter, self.model)
        if len(dataset) < data.batch_size:
            raise DataError(
                f"data source {data.source!r} has {len(dataset)} samples, fewer than one batch of {data.batch_size}: "
                "lower data.batch_size or use more samples"
            )
        if data.batch_size % self.accelerator.num_processes:
            raise ConfigError(
                f"data.batch_size={data.batch_size} (the global batch) must be divisible by the "
                f"{self.accelerator.num_processes} processes"
            )
        loader = make_loader(dataset, data.batch_size, shuffle=shuffle, seed=data.seed, drop_last=True,
                             num_workers=data.num_workers)
        return self.accelerator.prepare_data_loader(loader)

    def own_width(self) -> int | None:
        """The kept width of a method that fixes one per layer (DGMR), else None."""
        if self.method.own_width is None:
            return None
        return self.method.own_width(ScoringInputs(self.stack, dgmr=self.config.dgmr))


def compute_scores(run: PruneRun) -> NeuronScores:
    """Per-layer neuron scores for ``config.method`` (Taylor/criterion for amp, data-free otherwise)."""
    config = run.config
    if config.scoring.scores_path:
        return load_scores(config.scoring.scores_path, run.stack)
    # search.reconstruct searches DGMR's pick order: every neuron gets a rank, a width keeps a prefix
    inputs = ScoringInputs(run.stack, seed=config.seed, dgmr=config.dgmr, accelerator=run.accelerator,
                           max_batches=config.scoring.max_batches, rank_all=config.search.reconstruct,
                           precision=config.scoring.precision)
    collector = None
    if run.method.needs_data:
        inputs.criterion = run.criterion
        inputs.loader = lambda: run.loader(config.scoring.data, shuffle=True)
        if run.gram_statistics_from_scoring():
            # one pass instead of two: the scoring batches are the calibration batches, so the Taylor pass
            # also accumulates every layer's Gram statistics for search.reconstruct
            calibration = run.calibration_batches()
            fit, heldout = split_heldout(calibration, config.reconstruct.heldout_fraction)
            collector = ProjectionGramCollector(run.stack, [True] * len(fit) + [False] * len(heldout))
            inputs.loader, inputs.on_activations = (lambda: calibration), collector
    scores = run.method(inputs)
    if collector is not None:
        run.scoring_grams = collector.grams(run.accelerator)
    if run.method.needs_data:
        scores.metadata.update(
            criterion=config.criterion.name, temperature=config.criterion.temperature,
            data=config.scoring.data.source, split=config.scoring.data.split, batch_size=config.scoring.data.batch_size,
            precision=config.scoring.precision,
        )
    return scores


def load_scores(path: str, model: torch.nn.Module | MlpStack) -> NeuronScores:
    """Scores saved by ``amp-hf score``, checked against ``model``'s MLP widths."""
    try:
        scores = NeuronScores.load(path)
    except FileNotFoundError as error:
        raise ConfigError(f"scoring.scores_path: {error}") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"scoring.scores_path {path} is damaged ({type(error).__name__}: {error}): re-run `amp-hf score`"
        ) from error
    check_scores_fit(scores, model, f"scores in {path}")
    return scores


def check_scores_fit(scores: NeuronScores, model: torch.nn.Module | MlpStack, what: str = "the scores") -> None:
    """Scores must have one vector per MLP, each as long as that MLP is wide."""
    stack = resolve(model)
    widths = stack.widths()
    lengths = [len(s) for s in scores.abs]
    if lengths != widths or [len(s) for s in scores.signed] != widths:
        raise ConfigError(
            f"{what} were computed for a model with MLP widths {lengths}, but {stack.adapter.name} model "
            f"{getattr(stack.model.config, '_name_or_path', '')} has {widths}: re-run `amp-hf score` on this model"
        )


def check_before_compute(run: PruneRun) -> None:
    """What can be refused from the config and the model alone, before any scoring or search."""
    config = run.config
    if config.reconstruct.enabled and config.reconstruct.objective == "residual":
        check_residual_writers(run.stack)
    widths = run.stack.widths()
    search = config.search
    width = run.own_width()
    if width is not None:
        narrow = [layer for layer, full in enumerate(widths) if width >= full]
        if narrow:
            raise ConfigError(
                f"the DGMR width {width} (dgmr.width, or dgmr.ratio x hidden size) is >= the width "
                f"{widths[narrow[0]]} of layer {narrow[0]}, which would keep every neuron there: choose a smaller "
                "dgmr.width / dgmr.ratio"
            )
        return
    needed_steps = math.ceil(math.log2(max(widths)))  # H / 2^steps reaches one neuron: the rest repeat it
    limit = max(needed_steps, SearchConfig.steps)  # AMP's default is never refused, even for a toy-sized MLP
    if search.allocation in ("adaptive", "budget") and search.steps > limit:
        raise ConfigError(
            f"search.steps={search.steps} is more than the search can use: each step halves the width interval, "
            f"and the widest MLP (H={max(widths)}) is down to one neuron after log2(H) ≈ {needed_steps} steps, so "
            f"the rest would only repeat it; set search.steps <= {limit}"
        )
    if search.round_to > 1 and search.round_to >= min(widths):
        layer = widths.index(min(widths))
        raise ConfigError(
            f"search.round_to={search.round_to} is >= the width {widths[layer]} of layer {layer}: that layer could "
            "only keep every neuron; choose a smaller search.round_to"
        )
    if search.allocation in ("uniform", "global", "budget"):
        cost = tower_cost(run.stack, search.target_metric)
        if search.allocation == "budget":
            check_budget_reachable(cost, search.target_reduction, search.tolerance, search.steps, search.round_to)
        else:
            uniform_widths(cost, search.target_reduction, search.round_to)  # refuses an unreachable target


def allocate(run: PruneRun, scores: NeuronScores) -> tuple[PrunePlan, dict]:
    """Turn scores into a PrunePlan following ``config.search`` (or the method's own width, e.g. DGMR's)."""
    config, stack, accelerator = run.config, run.stack, run.accelerator
    model = stack.model
    search = config.search
    full = stack.widths()
    details: dict = {"allocation": search.allocation, "round_to": search.round_to}
    width = None if search.reconstruct else run.own_width()
    if width is not None:
        widths = [min(width, f) for f in full]
        details.update(allocation="uniform", dgmr_ratio=config.dgmr.ratio, dgmr_width=width)
        return PrunePlan.from_scores(scores.abs, widths, config.method, details), {}
    cost = tower_cost(stack, search.target_metric)
    if search.allocation == "uniform":
        widths = uniform_widths(cost, search.target_reduction, search.round_to)
        details["target_reduction"] = search.target_reduction
        return PrunePlan.from_scores(scores.abs, widths, config.method, details), {}
    if search.allocation == "global":
        widths = global_widths(scores.abs, cost, search.target_reduction, search.round_to)
        details["target_reduction"] = search.target_reduction
        return PrunePlan.from_scores(scores.abs, widths, config.method, details), {}

    search_data = config.search_data or config.scoring.data
    batches = list(run.loader(search_data, shuffle=False))
    evaluator = CriterionEvaluator(stack, run.criterion, batches, accelerator, cache_gb=search.cache_gb)
    global_batch = search_data.batch_size
    scale = math.log(global_batch) if search.delta_e_mode == "normalized" else 1.0
    progress = accelerator.is_local_main_process
    details.update(steps=search.steps, delta_e_mode=search.delta_e_mode, acceptance=search.acceptance,
                   search_batches=len(batches),
                   search_batch_size=global_batch, reconstruct=search.reconstruct)
    refit = None
    if search.reconstruct:  # the refit's statistics: the reconstruction's calibration data, as reconstruct.* sets
        data = config.reconstruct.calibration_data(config.scoring.data)
        refit = SearchRefit(model, evaluator, config.reconstruct, search.cache_gb, run.calibration_batches(),
                            grams=run.scoring_grams)
        details["reconstruct_data"] = f"{data.source}:{data.split}"
        # where the refit's Gram statistics came from: Taylor scoring's pass, or a pass of the search's own
        details["reconstruct_statistics"] = "scoring pass" if run.scoring_grams is not None else "own pass"
    if search.allocation == "adaptive":
        result = adaptive_search(stack, scores.abs, evaluator, search.delta_e * scale, search.steps,
                                 search.round_to, progress=progress, acceptance=search.acceptance, refit=refit)
        details["delta_e"] = search.delta_e
    else:
        result, achieved = budget_search(stack, scores.abs, evaluator, search.target_reduction, cost, search.steps,
                                         search.round_to, search.tolerance, search.max_budget_iterations,
                                         upper=scale, acceptance=search.acceptance, progress=progress, refit=refit)
        if abs(achieved - search.target_reduction) > search.tolerance:  # never save what was not asked for
            raise ConfigError(
                f"the budget search reached {achieved:.1%} for the {search.target_reduction:.1%} target "
                f"(tolerance ±{search.tolerance:.1%}), so nothing was saved: raise search.steps (finer widths), "
                "search.max_budget_iterations or search.tolerance, or change the target"
            )
        details.update(target_reduction=search.target_reduction, target_metric=search.target_metric,
                       achieved_reduction=achieved, delta_e=result.delta_e / scale)
    details.update(delta_e_nats=result.delta_e, reference_entropy=result.reference_entropy,
                   final_entropy=result.final_entropy)
    plan = PrunePlan(full, result.kept, config.method, details)
    info = {"search_log": result.log, "evaluations": result.evaluations}
    if refit is not None:
        info.update(search_refit=result.refit, output_projections=result.projections)
    return plan, info


def provenance(run: PruneRun, plan: PrunePlan, scores: NeuronScores) -> dict:
    """What goes into ``config.amp_pruning`` (informational; loading never reads it)."""
    config = run.config
    base_model, revision = (config.base_model, None) if config.base_model else hub_reference(config.model)
    values = {"method": plan.method}
    if base_model:  # a Hub id or nothing: config.json may be pushed, a local path would mean nothing there
        values["base_model"] = base_model
    if revision:
        values["base_model_revision"] = revision
    values.update(amp_hf_version=__version__, **plan.details)
    if run.method.needs_data:
        values.update(
            criterion=config.criterion.name,
            temperature=config.criterion.temperature,
            scoring_samples=scores.num_samples,
            scoring_data=f"{config.scoring.data.source}:{config.scoring.data.split}",
        )
    return values


def slice_and_reconstruct(run: PruneRun, plan: PrunePlan, amp_pruning: dict,
                          search_info: dict | None = None) -> tuple[MlpStack, dict | None]:
    """The pruned model, resolved: plainly sliced, or (``reconstruct.enabled``) with refit output projections,
    or (``search.reconstruct``) with the output projections the search refit."""
    config = run.config
    if search_info is not None and "output_projections" in search_info:
        projections, layers = search_info.pop("output_projections"), search_info.pop("search_refit")
        if not config.reconstruct.enabled:  # the shipped model is the searched one
            pruned = slice_stack(run.stack, plan, amp_pruning)
            refit = install_search_refit(pruned, projections, layers)
            return pruned, {"summary": search_refit_summary(refit), **refit}
        # reconstruct.mode=blockwise after search.reconstruct: the search chose the widths with its refit; the
        # shipped model is the sequential closed form + blockwise refinement of those widths
    if not config.reconstruct.enabled:
        return slice_stack(run.stack, plan, amp_pruning), None
    data = config.reconstruct.calibration_data(config.scoring.data)
    pruned, report = reconstruct_stack(run.stack, plan, run.calibration_batches(), config.reconstruct, run.accelerator, run.criterion,
                                       amp_pruning)
    pruned.model.config.amp_pruning["reconstruction"]["data"] = f"{data.source}:{data.split}"
    return pruned, {"summary": report.summary(), **report.to_dict()}


def run_prune(config: PruneConfig, accelerator=None, scores: NeuronScores | None = None) -> dict:
    """The whole pipeline; returns the report (also written as prune_report.json in the checkpoint)."""
    started = time.time()
    accelerator = accelerator or _accelerator()
    torch.manual_seed(config.seed)
    output = prepare_prune_output(config)
    check_carried_files(resolve_model_path(config.model))
    run = PruneRun.start(config, accelerator)
    processor = run.processor

    check_before_compute(run)
    if scores is not None:
        check_scores_fit(scores, run.stack)
    scores = scores or compute_scores(run)
    plan, search_info = allocate(run, scores)
    pruned_stack, reconstruction = slice_and_reconstruct(run, plan, provenance(run, plan, scores), search_info)
    pruned = pruned_stack.model
    before, after = model_stats(run.stack), model_stats(pruned_stack)
    pruned.config.amp_pruning.update(params_before=before["params_tower"], params_after=after["params_tower"],
                                     flops_before=before["flops_tower"], flops_after=after["flops_tower"])
    report = {
        "model": config.model,
        "output": str(output),
        "method": plan.method,
        "original_widths": plan.original_widths,
        "widths": plan.widths,
        "stats": compare_stats(before, after),
        "details": plan.details,
        "wall_time_s": round(time.time() - started, 2),
        "num_processes": accelerator.num_processes,
        "config": {key: value for key, value in asdict(config).items() if key not in ("output", "overwrite")},
        **search_info,
    }
    if reconstruction is not None:
        report["reconstruction"] = reconstruction
    if accelerator.is_main_process:
        with atomic_directory(output, overwrite=config.overwrite, inputs=config_inputs(config), flag=OVERWRITE) as staging:
            write_pruned(pruned, staging, plan, extras=[processor] if processor is not None else [])
            portable_report = portable(json.loads(json.dumps(report, default=str)), output)
            portable_report["model"] = portable_reference(config.model, output)
            del portable_report["output"]  # the report sits in it
            (staging / PRUNE_REPORT_FILE).write_text(json.dumps(portable_report, indent=2))
    accelerator.wait_for_everyone()
    return report


def run_score(config: PruneConfig, output: str, accelerator=None) -> NeuronScores:
    accelerator = accelerator or _accelerator()
    output = prepare_prune_output(config, output)
    scores = compute_scores(PruneRun.start(config, accelerator))
    if accelerator.is_main_process:
        scores.metadata.setdefault("model", config.model)
        with atomic_directory(output, overwrite=config.overwrite, inputs=config_inputs(config), flag=OVERWRITE) as staging:
            scores.save(staging)
    accelerator.wait_for_everyone()
    return scores
