"""The prune / score configuration (``configs/*.yaml`` plus dotted overrides) and the output check of both
commands. No torch here: the command line builds and checks a config, and refuses an output folder, before
``amp_hf.pruning`` and the model code load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .data_config import DataConfig
from .errors import ConfigError
from .files.model_reference import check_model_reference
from .files.outputs import expand_user, prepare_output
from .files.provenance import is_hub_id
from .reconstruct.config import ReconstructConfig
from .selection.config import OWN_WIDTH_METHODS, CriterionConfig, DGMRConfig, SearchConfig


@dataclass
class ScoringConfig:
    data: DataConfig = field(default_factory=DataConfig)
    max_batches: int | None = None
    scores_path: str | None = None  # reuse scores saved by `amp-hf score` instead of recomputing
    # autocast dtype of the Taylor passes (half-precision matmuls; the weights are not copied)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def __post_init__(self):
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"scoring.max_batches must be >= 1 (or null for every batch); got {self.max_batches}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"scoring.precision must be fp32, bf16 or fp16; got {self.precision!r}")


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
        own_width = self.method in OWN_WIDTH_METHODS
        if own_width and self.search.allocation != "adaptive" and not self.search.reconstruct:
            raise ValueError(f"method {self.method} has its own uniform width (dgmr.ratio / dgmr.width): drop "
                             "search.allocation (or set search.reconstruct=true to search its Gram-Schmidt prefixes)")
        if self.search.reconstruct and self.reconstruct.enabled and self.reconstruct.mode != "blockwise":
            raise ValueError("search.reconstruct=true already refits every layer inside the search (the saved "
                             "model is the searched one): drop reconstruct.enabled, or set reconstruct.mode=blockwise "
                             "to refine the searched widths afterwards")
        if self.search.reconstruct and self.reconstruct.objective == "residual":
            raise ValueError("search.reconstruct refits each candidate's own MLP output projection "
                             "(reconstruct.objective=mlp); the residual objective refits the sliced model: use "
                             "reconstruct.enabled=true with search.reconstruct=false")
        if self.search.reconstruct or self.reconstruct.enabled:
            self._check_calibration_batches()

    def _check_calibration_batches(self) -> None:
        """The refit holds whole batches out (``reconstruct.split_heldout``): at least 2 must come from the
        calibration samples, known from the config before anything is loaded."""
        data = self.reconstruct.calibration_data(self.scoring.data)
        if data.num_samples is None or data.num_samples // data.batch_size >= 2:
            return
        key = "reconstruct.num_samples" if self.reconstruct.num_samples is not None else (
            "reconstruct.data.num_samples" if self.reconstruct.data is not None else "scoring.data.num_samples")
        batch = "reconstruct.data.batch_size" if self.reconstruct.data is not None else "scoring.data.batch_size"
        raise ValueError(
            f"{key}={data.num_samples} gives {data.num_samples // data.batch_size} whole calibration batch(es) of "
            f"{data.batch_size}, but the reconstruction needs at least 2 (whole batches are held out): set {key} "
            f">= {2 * data.batch_size} or lower {batch}"
        )


OVERWRITE = "overwrite=true"  # how the prune/score commands ask to replace an output


def config_inputs(config: PruneConfig) -> list[str | None]:
    """Every local path the run reads: outputs may neither contain nor replace them."""
    data = [config.scoring.data, config.search_data, config.reconstruct.data]
    return [config.model, config.scoring.scores_path, *(d.source for d in data if d is not None)]


def prepare_prune_output(config: PruneConfig, output: str | None = None) -> Path:
    """The checked output folder of a prune run (``config.output``) or a score run (``output``): new, or
    amp-hf's own with ``overwrite=true``, and neither inside nor around an input (``files.outputs``)."""
    target = config.output if output is None else output
    if target is None:
        raise ConfigError("set output=PATH (where the pruned checkpoint goes)")
    check_model_reference(config.model)
    return prepare_output(target, overwrite=config.overwrite, inputs=config_inputs(config), flag=OVERWRITE)
