"""Grouped NDCG@k: the metric ``rankengine tune-fusion`` searches the fusion weights for.

NDCG@k of task t in request q: DCG = Σ_{r<k} gain_r / log2(r + 2) over the request's rows
sorted by descending score (ties keep the file order, NaN scores rank last), divided by the DCG
of the rows sorted by gain. The gain is the task's entire-space label (0/1 for binary tasks,
the value for regression tasks). The reported value is the mean over the requests that have at
least one positive (gain > 0) for that task; requests without one have no ideal ranking and are
left out.

:class:`GroupedNDCG` computes it for any score vector without a Python loop per request;
:func:`ndcg_reference` is the same definition as a plain loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

COMPARE_WIDTH = 64  # groups up to this size rank positives by comparison, larger ones sort


@dataclass(frozen=True)
class _Bucket:
    """Groups of similar size, padded to ``width`` columns with the sentinel row."""

    rows: Ints  # [G, W] row indices per group in file order (argsort path), else empty
    pos_group: Ints  # [P] bucket group of each row with a positive for some task
    pos_col: Ints  # [P] its column (position in file order within the group)
    pos_row: Ints  # [P] its row index
    pos_peers: Ints  # [W, P] the rows of its group (comparison path), else empty
    pos_earlier: NDArray[np.bool_]  # [W, P] the peer comes before it in the file
    weight: Floats  # [P, T] gain / ideal DCG of its group (0 where the gain is 0)


class GroupedNDCG:
    """NDCG@k of several gain columns for any score vector, without a Python loop per group.

    Setup sorts the rows by group once (stable: file order within a group) and buckets groups
    by size (powers of two) into padded ``[groups, width]`` index matrices. Only rows with a
    positive gain contribute to DCG, so an evaluation needs just their ranks within their
    group: for groups up to :data:`COMPARE_WIDTH` rows by counting the higher-scored rows (and
    equal-scored rows earlier in the file) in one vectorised comparison, for larger groups by
    one stable ``argsort`` along rows. Both equal a ``lexsort`` on (group, -score).
    """

    def __init__(self, groups: Ints, gains: Floats, k: int) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        groups = np.asarray(groups)
        gains = np.asarray(gains, dtype=np.float64)
        if gains.ndim == 1:
            gains = gains[:, None]
        n, tasks = gains.shape
        if len(groups) != n:
            raise ValueError("groups and gains differ in length")
        self.n, self.k = n, k
        # discount by rank, 0 from rank k on; indexed by ranks up to the largest group
        self.buckets: list[_Bucket] = []
        self.groups_total = 0
        self.groups_positive = np.zeros(tasks, dtype=np.int64)
        padded = np.vstack([gains, np.zeros((1, tasks))])  # row n: the padding sentinel
        span = min(k, max(n, 1))  # ranks past the largest group never count: k=10**20 works
        discount = 1.0 / np.log2(np.arange(span) + 2.0)
        widest = 1
        if n:
            order = np.argsort(groups, kind="stable")
            ordered = groups[order]
            starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            sizes = np.diff(np.r_[starts, n])
            self.groups_total = len(starts)
            widest = int(sizes.max())
            size_class = np.ceil(np.log2(sizes)).astype(np.int64)
            for c in np.unique(size_class):
                members = np.flatnonzero(size_class == c)
                width = int(sizes[members].max())
                offsets = np.arange(width)
                valid = offsets[None, :] < sizes[members][:, None]
                pos = np.minimum(starts[members][:, None] + offsets[None, :], n - 1)
                rows = np.where(valid, order[pos], n).astype(np.int64)
                g = padded[rows]  # [G, W, T]
                best = -np.sort(-g, axis=1)[:, :k, :]
                ideal = np.einsum("gkt,k->gt", best, discount[: best.shape[1]])
                positive = (g > 0).any(axis=1)  # [G, T]
                self.groups_positive += positive.sum(axis=0)
                pg, pc = np.nonzero((g > 0).any(axis=2))
                weight = np.divide(g[pg, pc], ideal[pg], out=np.zeros((len(pg), tasks)),
                                   where=g[pg, pc] > 0)
                small = width <= COMPARE_WIDTH
                none = np.empty((0, 0), np.int64)
                self.buckets.append(_Bucket(
                    rows=none if small else rows,
                    pos_group=pg.astype(np.int64), pos_col=pc.astype(np.int64),
                    pos_row=rows[pg, pc], weight=weight,
                    # transposed: reductions over a group's rows run along contiguous rows
                    pos_peers=np.ascontiguousarray(rows[pg].T) if small else none,
                    pos_earlier=(offsets[:, None] < pc[None, :]) if small
                    else none.astype(bool)))
        self.discount = np.zeros(max(widest, span))
        self.discount[:span] = discount

    def __call__(self, scores: Floats) -> Floats:
        """Mean NDCG@k per gain column over the groups with a positive (NaN where none has)."""
        s = np.empty(self.n + 1, dtype=np.float64)
        s[: self.n] = scores
        s[self.n] = -np.inf  # padding: never above a row, and placed after every real row
        s[np.isnan(s)] = -np.inf
        total = np.zeros(len(self.groups_positive))
        for b in self.buckets:
            if len(b.pos_peers):
                peers = s[b.pos_peers]  # [W, P]
                mine = s[b.pos_row]
                ahead = peers > mine  # a higher score, or an equal one earlier in the file
                ties = peers == mine
                ties &= b.pos_earlier
                ahead |= ties
                rank = ahead.view(np.int8).sum(axis=0, dtype=np.int16)
            elif len(b.pos_row):
                order = np.argsort(-s[b.rows], axis=1, kind="stable")
                ranks = np.empty_like(order)
                np.put_along_axis(ranks, order, np.arange(order.shape[1])[None, :], axis=1)
                rank = ranks[b.pos_group, b.pos_col]
            else:
                continue
            total += self.discount[rank] @ b.weight
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.groups_positive > 0, total / self.groups_positive, np.nan)


def ndcg_reference(groups: Sequence[Any], gains: Sequence[float], scores: Sequence[float],
                   k: int) -> float:
    """The same NDCG@k with a plain loop per group (for tests and as the definition)."""
    members: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    values = []
    for rows in members.values():
        key = [-math.inf if math.isnan(scores[i]) else scores[i] for i in rows]
        ranked = [rows[j] for j in sorted(range(len(rows)), key=lambda j: -key[j])]
        dcg = sum(gains[i] / math.log2(r + 2) for r, i in enumerate(ranked[:k]))
        best = sorted((gains[i] for i in rows), reverse=True)[:k]
        ideal = sum(g / math.log2(r + 2) for r, g in enumerate(best))
        if any(gains[i] > 0 for i in rows):
            values.append(dcg / ideal)
    return sum(values) / len(values) if values else math.nan
