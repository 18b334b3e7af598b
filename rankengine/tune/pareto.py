"""The Pareto front of the evaluated weightings and the recommended point.

Recommendation: the front point maximising the priority-weighted mean over tasks of
NDCG_t / best_t, where best_t is the best NDCG of task t among the evaluated points and the
priorities are 1 unless given with ``--priority task=w``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]

def pareto_front(values: Floats) -> list[int]:
    """Indices of the points (rows) no other point beats on every column (higher is better)."""
    values = np.asarray(values, dtype=np.float64)
    front = []
    for i in range(len(values)):
        ge = (values >= values[i]).all(axis=1)
        gt = (values > values[i]).any(axis=1)
        if not (ge & gt).any():
            front.append(i)
    return front


def rule_values(values: Floats, best: Floats, priority: Floats) -> Floats:
    """The recommendation rule: the priority-weighted mean of each task's metric relative to
    the best value on the front."""
    scale = np.where(best > 0, best, 1.0)
    priority = priority / priority.max()  # 1e308 priorities would overflow the sum to inf
    return np.asarray((values / scale) @ priority / priority.sum(), dtype=np.float64)


def recommend(values: Floats, front: Sequence[int], priority: Floats) -> tuple[int, Floats]:
    """(index of the recommended front point, the rule's value for every point)."""
    score = rule_values(values, values[list(front)].max(axis=0), priority)
    chosen = max(front, key=lambda i: (score[i], -i))
    return int(chosen), score
