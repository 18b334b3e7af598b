"""NDCG@k per request, vectorised with numpy."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MetricFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], float]


def ndcg_at(k: int) -> MetricFn:
    """``fn(labels, predictions, groups) -> float``: mean NDCG@k over the groups (requests).

    Gains are the labels (0/1 for binary tasks), discounts ``1 / log2(rank + 1)``. Candidates
    with tied predictions share their positions' discounts equally (the expected DCG under a
    random tie break), so the metric does not depend on row order. Groups without a positive
    have no ideal ranking and are left out; with none left the result is NaN.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")

    def ndcg(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None = None) -> float:
        if groups is None or len(y) == 0:
            return float("nan")
        y = np.asarray(y, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        groups = np.asarray(groups)
        n = len(y)
        # Ranked order within each group: by group, then prediction descending.
        order = np.lexsort((-p, groups))
        g, s, gain = groups[order], p[order], y[order]
        new_group = np.r_[True, g[1:] != g[:-1]]
        group_id = np.cumsum(new_group) - 1
        position = np.arange(n) - np.flatnonzero(new_group)[group_id]
        discount = np.where(position < k, 1.0 / np.log2(position + 2.0), 0.0)
        # Ties: each block of equal predictions gets its mean gain on every position it spans.
        new_tie = new_group | np.r_[True, s[1:] != s[:-1]]
        tie_id = np.cumsum(new_tie) - 1
        block_gain = np.bincount(tie_id, gain) / np.bincount(tie_id)
        block_discount = np.bincount(tie_id, discount)
        block_group = group_id[new_tie]
        dcg = np.bincount(block_group, block_gain * block_discount)
        # Ideal: the same positions with the labels sorted descending.
        ideal_gain = y[np.lexsort((-y, groups))]
        idcg = np.bincount(group_id, ideal_gain * discount)
        has_positive = idcg > 0
        if not has_positive.any():
            return float("nan")
        return float(np.mean(dcg[has_positive] / idcg[has_positive]))

    ndcg.__name__ = f"ndcg_{k}"
    return ndcg
