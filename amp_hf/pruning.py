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
from typing import Literal

import torch

from . import __version__
from .accounting import compare_stats, model_stats
from .checkpoint import write_pruned
from .config_utils import ConfigError
from .distributed import make_accelerator
from .data import DataConfig, DataError, load_processor, make_loader, prepare_dataset
from .families import get_adapter
from .loading import load_model, resolve_model_path
from .outputs import atomic_directory, expand_user, prepare_output
from .plan import PrunePlan
from .provenance import hub_reference, is_hub_id, portable, portable_reference
from .reconstruct import ReconstructConfig, SearchRefit, install_search_refit, reconstruct, search_refit_summary
from .selection import (
    CriterionConfig,
    CriterionEvaluator,
    NeuronScores,
    SearchConfig,
    adaptive_search,
    budget_search,
    build_criterion,
    check_budget_reachable,
    dgmr_scores,
    global_widths,
    magnitude_scores,
    plan_from_widths,
    random_scores,
    taylor_scores,
    tower_cost,
    uniform_widths,
)
from .slicing import slice_model

logger = logging.getLogger(__name__)
REPORT_FILE = "prune_report.json"


@dataclass
class ScoringConfig:
    data: DataConfig = field(default_factory=DataConfig)
    max_batches: int | None = None
    scores_path: str | None = None  # reuse scores saved by `amp-hf score` instead of recomputing

    def __post_init__(self):
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"scoring.max_batches must be >= 1 (or null for every batch); got {self.max_batches}")


@dataclass
class DGMRConfig:
    ratio: float = 1.0  # kept width = ratio x model dim d (the paper's r)
    width: int | None = None  # explicit kept width (overrides ratio)

    def __post_init__(self):
        if self.width is None and self.ratio <= 0:
            raise ValueError("dgmr.ratio must be > 0 (kept width = ratio x hidden size)")
        if self.width is not None and self.width < 1:
            raise ValueError("dgmr.width must be >= 1")


@dataclass
class PruneConfig:
    model: str = "minilm"
    output: str | None = None
    method: Literal["amp", "dgmr", "magnitude", "random"] = "amp"
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    search_data: DataConfig | None = None  # fixed evaluation batches for the search (default: scoring data)
    dgmr: DGMRConfig = field(default_factory=DGMRConfig)
    reconstruct: ReconstructConfig = field(default_factory=ReconstructConfig)  # least-squares refit (off by default)
    seed: int = 0
    overwrite: bool = False
    base_model: str | None = None  # the base's Hub id for the provenance, when amp-hf cannot tell it from `model`

    def __post_init__(self):
        self.model = expand_user(self.model)
        self.output = expand_user(self.output)
        self.scoring.scores_path = expand_user(self.scoring.scores_path)
        if self.base_model is not None and not is_hub_id(self.base_model):
            raise ValueError(f"base_model={self.base_model!r} is not a Hub repo id (org/name): it is recorded in the "
                             "checkpoint's config.json, which may be pushed, so local paths are not accepted")
        if self.method == "dgmr" and self.search.allocation != "adaptive" and not self.search.reconstruct:
            raise ValueError("method dgmr has its own uniform width (dgmr.ratio / dgmr.width): drop search.allocation "
                             "(or set search.reconstruct=true to search its Gram-Schmidt prefixes)")
        if self.search.reconstruct and self.reconstruct.enabled:
            raise ValueError("search.reconstruct=true already refits every layer inside the search (the saved "
                             "model is the searched one): drop reconstruct.enabled")


OVERWRITE = "overwrite=true"  # how the prune/score commands ask to replace an output


def config_inputs(config: PruneConfig) -> list[str | None]:
    """Every local path the run reads: outputs may neither contain nor replace them."""
    data = [config.scoring.data, config.search_data, config.reconstruct.data]
    return [config.model, config.scoring.scores_path, *(d.source for d in data if d is not None)]


def _accelerator():
    return make_accelerator(split_batches=True)


def _loader(data: DataConfig, processor, adapter, model, accelerator, shuffle: bool):
    dataset = prepare_dataset(data, processor, adapter, model)
    if len(dataset) < data.batch_size:
        raise DataError(
            f"data source {data.source!r} has {len(dataset)} samples, fewer than one batch of {data.batch_size}: "
            "lower data.batch_size or use more samples"
        )
    if data.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"data.batch_size={data.batch_size} (the global batch) must be divisible by the "
            f"{accelerator.num_processes} processes"
        )
    loader = make_loader(dataset, data.batch_size, shuffle=shuffle, seed=data.seed, drop_last=True,
                         num_workers=data.num_workers)
    return accelerator.prepare_data_loader(loader)


def compute_scores(config: PruneConfig, model, processor, accelerator) -> NeuronScores:
    """Per-layer neuron scores for ``config.method`` (Taylor/criterion for amp, data-free otherwise)."""
    if config.scoring.scores_path:
        return load_scores(config.scoring.scores_path, model)
    adapter = get_adapter(model)
    if config.method == "amp":
        criterion = build_criterion(config.criterion)
        criterion.prepare(model, adapter, processor)
        loader = _loader(config.scoring.data, processor, adapter, model, accelerator, shuffle=True)
        scores = taylor_scores(model, loader, criterion, accelerator, config.scoring.max_batches)
        scores.metadata.update(
            criterion=config.criterion.name, temperature=config.criterion.temperature,
            data=config.scoring.data.source, split=config.scoring.data.split, batch_size=config.scoring.data.batch_size,
        )
        return scores
    if config.method == "dgmr":
        # search.reconstruct searches DGMR's pick order: every neuron gets a rank, a width keeps a prefix
        width = max(adapter.widths(model)) if config.search.reconstruct else _dgmr_width(config, model)
        values = dgmr_scores(model, width=width)
    elif config.method == "magnitude":
        values = magnitude_scores(model)
    else:
        values = random_scores(model, config.seed)
    return NeuronScores(abs=values, signed=values, num_samples=0, metadata={"method": config.method})


def load_scores(path: str, model) -> NeuronScores:
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


def check_scores_fit(scores: NeuronScores, model, what: str = "the scores") -> None:
    """Scores must have one vector per MLP, each as long as that MLP is wide."""
    widths = get_adapter(model).widths(model)
    lengths = [len(s) for s in scores.abs]
    if lengths != widths or [len(s) for s in scores.signed] != widths:
        raise ConfigError(
            f"{what} were computed for a model with MLP widths {lengths}, but {get_adapter(model).name} model "
            f"{getattr(model.config, '_name_or_path', '')} has {widths}: re-run `amp-hf score` on this model"
        )


def check_before_compute(config: PruneConfig, model) -> None:
    """What can be refused from the config and the model alone, before any scoring or search."""
    widths = get_adapter(model).widths(model)
    search = config.search
    if config.method == "dgmr":
        width = _dgmr_width(config, model)
        narrow = [layer for layer, full in enumerate(widths) if width >= full]
        if narrow:
            raise ConfigError(
                f"the DGMR width {width} (dgmr.width, or dgmr.ratio x hidden size) is >= the width "
                f"{widths[narrow[0]]} of layer {narrow[0]}, which would keep every neuron there: choose a smaller "
                "dgmr.width / dgmr.ratio"
            )
        return
    if search.round_to > 1 and search.round_to >= min(widths):
        layer = widths.index(min(widths))
        raise ConfigError(
            f"search.round_to={search.round_to} is >= the width {widths[layer]} of layer {layer}: that layer could "
            "only keep every neuron; choose a smaller search.round_to"
        )
    if search.allocation in ("uniform", "global", "budget"):
        cost = tower_cost(model, search.target_metric)
        if search.allocation == "budget":
            check_budget_reachable(cost, search.target_reduction, search.tolerance, search.steps, search.round_to)
        else:
            uniform_widths(cost, search.target_reduction, search.round_to)  # refuses an unreachable target


def _dgmr_width(config: PruneConfig, model) -> int:
    if config.dgmr.width is not None:
        return config.dgmr.width
    return max(1, int(config.dgmr.ratio * get_adapter(model).backbone(model).config.hidden_size))


def _search_batches(config: PruneConfig, model, processor, accelerator) -> list[dict]:
    data = config.search_data or config.scoring.data
    loader = _loader(data, processor, get_adapter(model), model, accelerator, shuffle=False)
    return [batch for batch in loader]


def allocate(config: PruneConfig, model, scores: NeuronScores, processor, accelerator) -> tuple[PrunePlan, dict]:
    """Turn scores into a PrunePlan following ``config.search`` (or DGMR's uniform width)."""
    search = config.search
    adapter = get_adapter(model)
    full = adapter.widths(model)
    details: dict = {"allocation": search.allocation, "round_to": search.round_to}
    if config.method == "dgmr" and not search.reconstruct:
        width = _dgmr_width(config, model)
        widths = [min(width, f) for f in full]
        details.update(allocation="uniform", dgmr_ratio=config.dgmr.ratio, dgmr_width=width)
        return plan_from_widths(scores.abs, widths, "dgmr", details), {}
    cost = tower_cost(model, search.target_metric)
    if search.allocation == "uniform":
        widths = uniform_widths(cost, search.target_reduction, search.round_to)
        details["target_reduction"] = search.target_reduction
        return plan_from_widths(scores.abs, widths, config.method, details), {}
    if search.allocation == "global":
        widths = global_widths(scores.abs, cost, search.target_reduction, search.round_to)
        details["target_reduction"] = search.target_reduction
        return plan_from_widths(scores.abs, widths, config.method, details), {}

    criterion = build_criterion(config.criterion)
    criterion.prepare(model, adapter, processor)
    batches = _search_batches(config, model, processor, accelerator)
    evaluator = CriterionEvaluator(model, criterion, batches, accelerator, cache_gb=search.cache_gb)
    global_batch = (config.search_data or config.scoring.data).batch_size
    scale = math.log(global_batch) if search.delta_e_mode == "normalized" else 1.0
    progress = accelerator.is_local_main_process
    details.update(steps=search.steps, delta_e_mode=search.delta_e_mode, acceptance=search.acceptance,
                   search_batches=len(batches),
                   search_batch_size=global_batch, reconstruct=search.reconstruct)
    refit = None
    if search.reconstruct:  # the refit's statistics: the reconstruction's calibration data, as reconstruct.* sets
        data = config.reconstruct.calibration_data(config.scoring.data)
        calibration = list(_loader(data, processor, adapter, model, accelerator, shuffle=True))
        refit = SearchRefit(model, evaluator, config.reconstruct, search.cache_gb, calibration)
        details["reconstruct_data"] = f"{data.source}:{data.split}"
    if search.allocation == "adaptive":
        result = adaptive_search(model, scores.abs, evaluator, search.delta_e * scale, search.steps,
                                 search.round_to, progress=progress, acceptance=search.acceptance, refit=refit)
        details["delta_e"] = search.delta_e
    else:
        result, achieved = budget_search(model, scores.abs, evaluator, search.target_reduction, cost, search.steps,
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


def provenance(config: PruneConfig, model, plan: PrunePlan, scores: NeuronScores) -> dict:
    """What goes into ``config.amp_pruning`` (informational; loading never reads it)."""
    base_model, revision = (config.base_model, None) if config.base_model else hub_reference(config.model)
    values = {"method": plan.method}
    if base_model:  # a Hub id or nothing: config.json may be pushed, a local path would mean nothing there
        values["base_model"] = base_model
    if revision:
        values["base_model_revision"] = revision
    values.update(amp_hf_version=__version__, **plan.details)
    if config.method == "amp":
        values.update(
            criterion=config.criterion.name,
            temperature=config.criterion.temperature,
            scoring_samples=scores.num_samples,
            scoring_data=f"{config.scoring.data.source}:{config.scoring.data.split}",
        )
    return values


def slice_and_reconstruct(config: PruneConfig, model, plan: PrunePlan, amp_pruning: dict, processor,
                          accelerator, search_info: dict | None = None) -> tuple[torch.nn.Module, dict | None]:
    """The pruned model: plainly sliced, or (``reconstruct.enabled``) with refit output projections, or
    (``search.reconstruct``) with the output projections the search refit."""
    if search_info is not None and "output_projections" in search_info:
        pruned = slice_model(model, plan, amp_pruning)
        refit = install_search_refit(pruned, search_info.pop("output_projections"), search_info.pop("search_refit"))
        return pruned, {"summary": search_refit_summary(refit), **refit}
    if not config.reconstruct.enabled:
        return slice_model(model, plan, amp_pruning), None
    data = config.reconstruct.calibration_data(config.scoring.data)
    adapter = get_adapter(model)
    batches = list(_loader(data, processor, adapter, model, accelerator, shuffle=True))
    criterion = build_criterion(config.criterion)
    criterion.prepare(model, adapter, processor)
    pruned, report = reconstruct(model, plan, batches, config.reconstruct, accelerator, criterion, amp_pruning)
    pruned.config.amp_pruning["reconstruction"]["data"] = f"{data.source}:{data.split}"
    return pruned, {"summary": report.summary(), **report.to_dict()}


def run_prune(config: PruneConfig, accelerator=None, scores: NeuronScores | None = None) -> dict:
    """The whole pipeline; returns the report (also written as prune_report.json in the checkpoint)."""
    started = time.time()
    accelerator = accelerator or _accelerator()
    torch.manual_seed(config.seed)
    if config.output is None:
        raise ConfigError("set output=PATH (where the pruned checkpoint goes)")
    output = prepare_output(config.output, overwrite=config.overwrite, inputs=config_inputs(config), flag=OVERWRITE)
    model = load_model(config.model).to(accelerator.device)
    adapter = get_adapter(model)
    processor = load_processor(resolve_model_path(config.model), adapter)

    check_before_compute(config, model)
    if scores is not None:
        check_scores_fit(scores, model)
    scores = scores or compute_scores(config, model, processor, accelerator)
    plan, search_info = allocate(config, model, scores, processor, accelerator)
    pruned, reconstruction = slice_and_reconstruct(config, model, plan, provenance(config, model, plan, scores),
                                                   processor, accelerator, search_info)
    before, after = model_stats(model), model_stats(pruned)
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
            (staging / REPORT_FILE).write_text(json.dumps(portable_report, indent=2))
    accelerator.wait_for_everyone()
    return report


def run_score(config: PruneConfig, output: str, accelerator=None) -> NeuronScores:
    accelerator = accelerator or _accelerator()
    output = prepare_output(output, overwrite=config.overwrite, inputs=config_inputs(config), flag=OVERWRITE)
    model = load_model(config.model).to(accelerator.device)
    processor = load_processor(resolve_model_path(config.model), get_adapter(model))
    scores = compute_scores(config, model, processor, accelerator)
    if accelerator.is_main_process:
        scores.metadata.setdefault("model", config.model)
        with atomic_directory(output, overwrite=config.overwrite, inputs=config_inputs(config), flag=OVERWRITE) as staging:
            scores.save(staging)
    accelerator.wait_for_everyone()
    return scores
