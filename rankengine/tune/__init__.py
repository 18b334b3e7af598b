"""Fusion weight search behind ``rankengine tune-fusion`` (the command: rankengine.cli.tune).

For now everything is in :mod:`~rankengine.tune.run`.
"""

from rankengine.tune.run import (
    COMPARE_WIDTH,
    LOG_SPAN,
    MAX_STORED_POINTS,
    MAX_TRIALS,
    METHODS,
    Floats,
    GroupedNDCG,
    Ints,
    Search,
    SearchSpace,
    TuneResult,
    ndcg_reference,
    pareto_front,
    recommend,
    rule_values,
    run_search,
)

__all__ = ["COMPARE_WIDTH", "LOG_SPAN", "MAX_STORED_POINTS", "MAX_TRIALS", "METHODS", "Floats",
           "GroupedNDCG", "Ints", "Search", "SearchSpace", "TuneResult", "ndcg_reference",
           "pareto_front", "recommend", "rule_values", "run_search"]
