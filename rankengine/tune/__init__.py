"""Fusion weight search behind ``rankengine tune-fusion`` (the command: rankengine.cli.tune).

The data is scored once with the model; every candidate weight vector is then evaluated by
building the version's own fusion with those weights (so the scores are exactly what
``predict``, ``rank`` and ``serve`` would compute) and measuring NDCG@k of each task's label
within each request. The point recommended is on the Pareto front of the per-task NDCGs.

One module per responsibility:

- :mod:`~rankengine.tune.ndcg`: NDCG@k per task over requests (:class:`GroupedNDCG`,
  vectorised; :func:`ndcg_reference`, the definition as a plain loop);
- :mod:`~rankengine.tune.pareto`: the Pareto front and the recommendation rule;
- :mod:`~rankengine.tune.search`: the search space and the methods (``grid``, ``random``,
  ``bayes``) within a trial budget;
- :mod:`~rankengine.tune.run`: :func:`run_search`, which reads and scores the data and drives
  the search, and its :class:`TuneResult`.
"""

from rankengine.tune.ndcg import COMPARE_WIDTH, Floats, GroupedNDCG, Ints, ndcg_reference
from rankengine.tune.pareto import pareto_front, recommend, rule_values
from rankengine.tune.run import MAX_STORED_POINTS, TuneResult, run_search
from rankengine.tune.search import LOG_SPAN, MAX_TRIALS, METHODS, Search, SearchSpace

__all__ = ["COMPARE_WIDTH", "LOG_SPAN", "MAX_STORED_POINTS", "MAX_TRIALS", "METHODS", "Floats",
           "GroupedNDCG", "Ints", "Search", "SearchSpace", "TuneResult", "ndcg_reference",
           "pareto_front", "recommend", "rule_values", "run_search"]
