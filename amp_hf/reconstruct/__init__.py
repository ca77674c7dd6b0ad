"""Training-free recovery of a pruned model's MLP output projections: ``gram`` (streamed Gram matrices and
the damped least-squares solve), ``layers`` (what both uses share: config, layer statistics, held-out split),
``posthoc`` (``reconstruct``: refit every layer after slicing), ``residual`` (the residual-stream
objective's per-writer statistics) and ``in_search`` (``SearchRefit``: the refit
inside AMP's width search)."""

from .in_search import SearchRefit, install_search_refit, search_refit_summary
from .layers import ReconstructConfig, projection_grams, split_heldout
from .posthoc import LayerReport, ReconstructionReport, reconstruct, reconstruct_stack, reconstruction_is_closer
from .residual import check_residual_writers

__all__ = [
    "LayerReport",
    "ReconstructConfig",
    "ReconstructionReport",
    "SearchRefit",
    "check_residual_writers",
    "install_search_refit",
    "projection_grams",
    "reconstruct",
    "reconstruct_stack",
    "reconstruction_is_closer",
    "search_refit_summary",
    "split_heldout",
]
