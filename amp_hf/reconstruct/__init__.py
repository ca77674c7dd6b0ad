"""Training-free recovery of a pruned model's MLP output projections: ``config`` (the ``reconstruct:`` section),
``gram`` (streamed Gram matrices and the damped least-squares solve), ``layers`` (what both uses share: layer
statistics, held-out split), ``posthoc`` (``reconstruct``: refit every layer after slicing), ``residual`` (the
residual-stream objective's per-writer statistics), ``blockwise`` (``mode: blockwise``: Adam refinement per
block after the closed form) and ``in_search`` (``SearchRefit``: the refit inside AMP's
width search).

The package face is lazy (``amp_hf._lazy``): ``ReconstructConfig`` imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

# Public name -> the module that defines it (imported on first access).
_LAZY_NAMES = {
    "LayerReport": ".posthoc",
    "ReconstructConfig": ".config",
    "ReconstructionReport": ".posthoc",
    "SearchRefit": ".in_search",
    "check_residual_writers": ".residual",
    "install_search_refit": ".in_search",
    "projection_grams": ".layers",
    "reconstruct": ".posthoc",
    "reconstruct_stack": ".posthoc",
    "reconstruction_is_closer": ".posthoc",
    "search_refit_summary": ".in_search",
    "split_heldout": ".layers",
}

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

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, __all__)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .config import ReconstructConfig
    from .in_search import SearchRefit, install_search_refit, search_refit_summary
    from .layers import projection_grams, split_heldout
    from .posthoc import LayerReport, ReconstructionReport, reconstruct, reconstruct_stack, reconstruction_is_closer
    from .residual import check_residual_writers
