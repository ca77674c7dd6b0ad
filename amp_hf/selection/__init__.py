"""Which neurons to keep: criteria, Taylor scoring, data-free selection (DGMR), baselines, and allocation.

The package face is lazy (``amp_hf._lazy``): ``from amp_hf.selection import SearchConfig`` imports
``selection/config.py`` alone, without torch, so a prune config is checked before the model code loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

# Public name -> the module that defines it (imported on first access).
_LAZY_NAMES = {
    "CRITERIA": ".criteria",
    "CRITERION_NAMES": ".config",
    "CriterionConfig": ".config",
    "CriterionEvaluator": ".evaluator",
    "DGMRConfig": ".config",
    "NeuronScores": ".taylor",
    "OWN_WIDTH_METHODS": ".config",
    "SCORING_METHODS": ".methods",
    "SCORING_METHOD_NAMES": ".config",
    "ScoringInputs": ".methods",
    "ScoringMethod": ".methods",
    "SearchConfig": ".config",
    "SearchResult": ".search",
    "accepts": ".search",
    "adaptive_search": ".search",
    "budget_search": ".search",
    "build_criterion": ".criteria",
    "check_budget_reachable": ".search",
    "dgmr_scores": ".dgmr",
    "global_widths": ".baselines",
    "gram_schmidt_order": ".dgmr",
    "magnitude_scores": ".dgmr",
    "random_scores": ".dgmr",
    "round_width": ".cost",
    "similarity_entropy": ".criteria",
    "taylor_scores": ".taylor",
    "tower_cost": ".cost",
    "uniform_widths": ".baselines",
}

__all__ = [
    "CRITERIA",
    "CRITERION_NAMES",
    "CriterionConfig",
    "CriterionEvaluator",
    "DGMRConfig",
    "NeuronScores",
    "OWN_WIDTH_METHODS",
    "SCORING_METHODS",
    "SCORING_METHOD_NAMES",
    "ScoringInputs",
    "ScoringMethod",
    "SearchConfig",
    "SearchResult",
    "accepts",
    "adaptive_search",
    "budget_search",
    "build_criterion",
    "check_budget_reachable",
    "dgmr_scores",
    "global_widths",
    "gram_schmidt_order",
    "magnitude_scores",
    "random_scores",
    "round_width",
    "similarity_entropy",
    "taylor_scores",
    "tower_cost",
    "uniform_widths",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY_NAMES, __all__)

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .baselines import global_widths, uniform_widths
    from .config import (
        CRITERION_NAMES,
        OWN_WIDTH_METHODS,
        SCORING_METHOD_NAMES,
        CriterionConfig,
        DGMRConfig,
        SearchConfig,
    )
    from .cost import round_width, tower_cost
    from .criteria import CRITERIA, build_criterion, similarity_entropy
    from .dgmr import dgmr_scores, gram_schmidt_order, magnitude_scores, random_scores
    from .evaluator import CriterionEvaluator
    from .methods import SCORING_METHODS, ScoringInputs, ScoringMethod
    from .search import SearchResult, accepts, adaptive_search, budget_search, check_budget_reachable
    from .taylor import NeuronScores, taylor_scores
