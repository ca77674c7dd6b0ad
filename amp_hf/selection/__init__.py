"""Which neurons to keep: criteria, Taylor scoring, data-free selection (DGMR), baselines, and allocation."""

from .baselines import global_widths, uniform_widths
from .cost import round_width, tower_cost
from .criteria import CRITERIA, CriterionConfig, build_criterion, similarity_entropy
from .dgmr import dgmr_scores, gram_schmidt_order, magnitude_scores, random_scores
from .evaluator import CriterionEvaluator
from .methods import SCORING_METHODS, DGMRConfig, ScoringInputs, ScoringMethod
from .search import (
    SearchConfig,
    SearchResult,
    accepts,
    adaptive_search,
    budget_search,
    check_budget_reachable,
)
from .taylor import NeuronScores, taylor_scores

__all__ = [
    "CRITERIA",
    "SCORING_METHODS",
    "CriterionConfig",
    "DGMRConfig",
    "CriterionEvaluator",
    "NeuronScores",
    "SearchConfig",
    "ScoringInputs",
    "ScoringMethod",
    "SearchResult",
    "accepts",
    "adaptive_search",
    "budget_search",
    "check_budget_reachable",
    "build_criterion",
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
