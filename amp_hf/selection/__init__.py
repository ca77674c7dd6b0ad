"""Which neurons to keep: criteria, Taylor scoring, data-free selection (DGMR), baselines, and allocation."""

from .criteria import CRITERIA, CriterionConfig, build_criterion, similarity_entropy
from .dgmr import dgmr_scores, gram_schmidt_order, magnitude_scores, random_scores
from .evaluator import CriterionEvaluator
from .search import (
    SearchConfig,
    SearchResult,
    accepts,
    adaptive_search,
    budget_search,
    check_budget_reachable,
    global_widths,
    plan_from_widths,
    round_width,
    tower_cost,
    uniform_widths,
)
from .taylor import NeuronScores, taylor_scores

# Scoring methods: name -> needs data (Taylor needs a criterion and batches; the others are data-free).
SCORING_METHODS = {"amp": True, "dgmr": False, "magnitude": False, "random": False}

__all__ = [
    "CRITERIA",
    "SCORING_METHODS",
    "CriterionConfig",
    "CriterionEvaluator",
    "NeuronScores",
    "SearchConfig",
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
    "plan_from_widths",
    "random_scores",
    "round_width",
    "similarity_entropy",
    "taylor_scores",
    "tower_cost",
    "uniform_widths",
]
