"""Fusion weight search behind ``rankengine tune-fusion`` (the command: rankengine.cli.tune).

The data is scored once with the model (per-task entire-space probabilities); every candidate
weight vector is then evaluated by building the version's own fusion with those weights (so the
scores are exactly what ``predict``, ``rank`` and ``serve`` would compute) and measuring NDCG@k
of each task's label within each request, vectorised over requests.

NDCG@k of task t in request q: DCG = Σ_{r<k} gain_r / log2(r + 2) over the request's rows
sorted by descending score (ties keep the file order, NaN scores rank last), divided by the DCG
of the rows sorted by gain. The gain is the task's entire-space label (0/1 for binary tasks,
the value for regression tasks). The reported value is the mean over the requests that have at
least one positive (gain > 0) for that task; requests without one have no ideal ranking and are
left out.

Methods (``--trials`` weight vectors in all, anchors included):

- anchors, always evaluated first: the version's current weights, equal weights and each
  searched task alone;
- ``grid``: every combination of log-spaced levels over [M/100, M] per task (M: the largest
  current weight), with as many levels as ``--trials`` allows;
- ``random``: log-uniform samples over the same range;
- ``bayes``: not a Gaussian process: a third of the budget random, then an evolutionary local
  search that perturbs the log-weights of randomly chosen Pareto-front points with Gaussian noise
  whose scale shrinks from 0.5 to 0.05 decades over the run.

When every task with a non-zero weight is searched, each candidate is rescaled so its largest
weight is M: weighted sums and products rank identically under a common rescaling.

Recommendation: the front point maximising the priority-weighted mean over tasks of
NDCG_t / best_t, where best_t is the best NDCG of task t among the evaluated points and the
priorities are 1 unless given with ``--priority task=w``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from rankengine.errors import DataError, suggest

if TYPE_CHECKING:
    from rankengine.bundle import ModelBundle

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

METHODS = ("grid", "random", "bayes")
LOG_SPAN = 2.0  # searched weights range over [M · 10^-2, M]
MAX_STORED_POINTS = 400  # points kept in the registry: the whole front, then the earliest others
MAX_TRIALS = 20_000


# -- NDCG@k over groups, vectorised -------------------------------------------------------------


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


# -- Pareto front and recommendation -----------------------------------------------------------


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


# -- the search ---------------------------------------------------------------------------------


@dataclass
class SearchSpace:
    """Which weights vary: ``tasks`` are searched, ``fixed`` keep their current weight."""

    names: list[str]  # every task in graph order
    tasks: list[str]
    fixed: dict[str, float]
    scale: float

    @property
    def normalise(self) -> bool:
        return not self.fixed

    def weights(self, raw: Floats) -> dict[str, float]:
        """Searched weights (in units of ``scale``) → the full weight dict, rounded."""
        raw = np.clip(np.asarray(raw, dtype=np.float64), 0.0, None)
        if self.normalise and raw.max() > 0:
            raw = raw / raw.max()
        searched = {t: float(f"{w * self.scale:.4g}") for t, w in zip(self.tasks, raw,
                                                                        strict=True)}
        merged = {**self.fixed, **searched}
        return {t: merged[t] for t in self.names if t in merged}


def _levels(tasks: int, budget: int) -> int:
    level = 2
    while (level + 1) ** tasks - level ** tasks <= budget and level < 50:
        level += 1
    return level


class Search:
    """Evaluates weight dicts (cached) and runs one of the methods within a trial budget."""

    def __init__(self, space: SearchSpace, evaluate: Callable[[dict[str, float]], Floats],
                 trials: int, seed: int) -> None:
        self.space, self.evaluate, self.trials = space, evaluate, trials
        self.rng = np.random.default_rng(seed)
        self.points: list[dict[str, float]] = []
        self.raw: list[Floats] = []
        self.values: list[Floats] = []
        self.front: list[int] = []  # kept up to date as points are added
        self._seen: set[tuple[float, ...]] = set()

    @property
    def full(self) -> bool:
        return len(self.points) >= self.trials

    def add(self, raw: Floats) -> None:
        if self.full:
            return
        weights = self.space.weights(raw)
        key = tuple(weights.values())
        if key in self._seen or not any(weights.values()):
            return
        self._seen.add(key)
        self.points.append(weights)
        self.raw.append(np.array([weights[t] / self.space.scale for t in self.space.tasks]))
        value = self.evaluate(weights)
        self.values.append(value)
        if self.front:
            others = np.array([self.values[i] for i in self.front])
            if ((others >= value).all(axis=1) & (others > value).any(axis=1)).any():
                return
            beaten = np.asarray((value >= others).all(axis=1) & (value > others).any(axis=1))
            self.front = [i for i, b in zip(self.front, beaten.tolist(), strict=True) if not b]
        self.front.append(len(self.values) - 1)

    def run(self, method: str, current: Floats) -> None:
        t = len(self.space.tasks)
        self.add(current)
        self.add(np.ones(t))
        for i in range(t):
            self.add(np.eye(t)[i])
        if method == "grid":
            self._grid()
        elif method == "random":
            self._random(self.trials)
        else:
            self._evolve()

    def _log_uniform(self) -> Floats:
        return np.asarray(10.0 ** self.rng.uniform(-LOG_SPAN, 0.0, len(self.space.tasks)))

    def _random(self, until: int) -> None:
        for _ in range(20 * self.trials):
            if len(self.points) >= until:
                return
            self.add(self._log_uniform())

    def _grid(self) -> None:
        t = len(self.space.tasks)
        budget = self.trials - len(self.points)
        levels = np.logspace(-LOG_SPAN, 0.0, _levels(t, budget))
        combos = [c for c in itertools.product(range(len(levels)), repeat=t)
                  if not self.space.normalise or max(c) == len(levels) - 1]
        if len(combos) > budget:  # only at 2 levels with many tasks: a seeded subset
            picked = self.rng.choice(len(combos), size=max(budget, 0), replace=False)
            combos = [combos[i] for i in sorted(picked)]
        for combo in combos:
            self.add(levels[list(combo)])

    def _evolve(self) -> None:
        start = len(self.points)
        self._random(max(start + 2 * len(self.space.tasks), self.trials // 3))
        begun = len(self.points)
        for _ in range(20 * self.trials):
            if self.full:
                return
            progress = (len(self.points) - begun) / max(1, self.trials - begun)
            sigma = 0.5 * (1.0 - progress) + 0.05 * progress
            parent = self.raw[int(self.rng.choice(self.front))]
            logs = np.log10(np.maximum(parent, 10.0 ** -LOG_SPAN))
            child = logs + self.rng.normal(0.0, sigma, len(logs))
            self.add(10.0 ** np.clip(child, -LOG_SPAN, 0.0))


@dataclass
class TuneResult:
    tasks: list[str]
    points: list[dict[str, float]]
    values: Floats  # [P, T]
    front: list[int]
    recommended: int
    rule: Floats  # the recommendation rule's value per point
    current: dict[str, float]
    current_values: Floats
    requests: dict[str, int]  # requests with a positive, per task
    requests_total: int
    rows: int
    score_seconds: float
    search_seconds: float

    def record(self, *, metric: str, data: str, group: str, method: str, seed: int,
               priority: Mapping[str, float]) -> dict[str, Any]:
        """The registry's ``fusion_search`` entry (the HTML report renders this shape)."""
        keep = list(self.front) + [i for i in range(len(self.points)) if i not in self.front]
        keep = sorted(keep[: max(MAX_STORED_POINTS, len(self.front))])
        points = [{"weights": self.points[i], "metrics": self._metrics(self.values[i])}
                  for i in keep]
        return {
            "metric": metric, "points": points, "recommended": keep.index(self.recommended),
            "current": {"weights": self.current, "metrics": self._metrics(self.current_values)},
            "data": data, "rows": self.rows, "group": group, "method": method, "seed": seed,
            "evaluated": len(self.points), "priority": dict(priority),
            "requests": {"total": self.requests_total, "with_positive": self.requests},
        }

    def _metrics(self, values: Floats) -> dict[str, float]:
        return {t: round(float(v), 6) for t, v in zip(self.tasks, values, strict=True)}


# -- scoring a file and searching -------------------------------------------------------------


def _effective_weights(loaded: ModelBundle) -> dict[str, float]:
    raw = dict(getattr(loaded.fusion.params, "weights", {}) or {})
    names = loaded.graph.names
    default = 0.0 if raw else 1.0  # the built-in weighted fusions' convention
    return {t: float(raw.get(t, default)) for t in names}


def _read(loaded: ModelBundle, data: Path, group: str,
          tasks: list[str]) -> tuple[Any, Ints, Floats, int]:
    """(the table, group codes, gains [N, len(tasks)], rows read) with the label policy applied."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from rankengine.data.dataset import group_ids, raw_label
    from rankengine.data.io import open_source, read_table

    cfg, graph = loaded.config, loaded.graph
    available = open_source(data, loaded.engine.components.sources, format=cfg.data.format,
                            csv=cfg.data.csv).schema().names
    if group not in available:
        raise DataError(f"{data}: no group column '{group}' (--group) to compute NDCG per "
                        f"request{suggest(group, available)}; columns present: "
                        f"{', '.join(available[:40])}")
    needed = list(dict.fromkeys(a for t in tasks for a in [*graph.ancestors(t), t]))
    for name in needed:
        for col in graph.node(name).spec.label_columns:
            if col not in available:
                why = "" if name in tasks else " (the parent of a searched task)"
                raise DataError(f"{data}: no label column '{col}' for task '{name}'{why}; "
                                f"NDCG needs every searched task's label"
                                f"{suggest(col, available)}")
    label_cols = [c for n in needed for c in graph.node(n).spec.label_columns]
    table = read_table(data, list(dict.fromkeys([*loaded.pipeline.source_columns,
                                                 *label_cols, group])),
                       format=cfg.data.format, csv=cfg.data.csv,
                       sources=loaded.engine.components.sources)
    rows_read = table.num_rows
    zeros = np.zeros(table.num_rows)
    raw = {n.name: raw_label(table, n.name, n.spec, str(data)) if n.name in needed else zeros
           for n in graph.nodes}
    labels, keep, _ = graph.derive_labels(raw, cfg.data.inconsistent, where=str(data))
    if keep is not None:
        table = table.filter(pa.array(keep))
        labels = labels[keep]
    if table.num_rows == 0:
        why = " left after the label policy" if rows_read else ""
        raise DataError(f"{data}: no rows{why} to search the fusion weights on")
    nulls = table.column(group).null_count
    if nulls:
        first = int(pc.index(pc.is_null(table.column(group)), True).as_py())
        raise DataError(f"{data}: group column '{group}' is empty in {nulls} row(s) (first: row "
                        f"{first}); every row needs a request id")
    gains = labels[:, [graph.index(t) for t in tasks]].astype(np.float64)
    negative = np.flatnonzero((gains < 0).any(axis=1))
    if len(negative):
        raise DataError(f"{data}: row {int(negative[0])} has a negative label for a searched "
                        f"task; NDCG needs gains >= 0")
    return table, group_ids(table, group), gains, rows_read


def run_search(loaded: ModelBundle, data: Path, *, group: str, tasks: list[str], k: int,
               method: str, trials: int, seed: int, priority: dict[str, float],
               log: Callable[[str], None] = lambda _: None) -> TuneResult:
    """Score ``data`` once, then search the fusion weights of ``tasks``."""
    import torch

    from rankengine.predict import score_table

    names = loaded.graph.names
    current = _effective_weights(loaded)
    table, groups, gains, _ = _read(loaded, data, group, tasks)
    started = time.perf_counter()
    log(f"scoring {table.num_rows:,} rows of {data} …")
    scored = score_table(loaded, table, where=str(data))
    predictions = np.stack([scored[f"p_{t}"] for t in names], axis=1)
    score_seconds = time.perf_counter() - started
    del table, scored
    # Rows of requests without any positive change no metric: leave them out of every trial.
    engaged = np.zeros(groups.max() + 1 if len(groups) else 0, dtype=bool)
    engaged[groups[(gains > 0).any(axis=1)]] = True
    rows = engaged[groups] if len(groups) else np.zeros(0, dtype=bool)
    ndcg = GroupedNDCG(groups[rows], gains[rows], k)
    requests = {t: int(c) for t, c in zip(tasks, ndcg.groups_positive, strict=True)}
    empty = [t for t, c in requests.items() if c == 0]
    if empty:
        raise DataError(f"{data}: no request has a positive for task(s) {', '.join(empty)}; "
                        f"NDCG is undefined there (drop them with --tasks)")
    requests_total = int(groups.max()) + 1 if len(groups) else 0  # dense codes
    tensor = torch.from_numpy(np.ascontiguousarray(predictions[rows]))
    component = loaded.engine.components.fusions.get(loaded.config.fusion.kind)
    base_params = loaded.config.fusion.params

    def evaluate(weights: Mapping[str, float]) -> Floats:
        params = component.parse_params({**base_params, "weights": dict(weights)})
        fusion = component.factory(names, params)
        with torch.inference_mode():
            fused = fusion(tensor).double().numpy()
        return ndcg(fused)

    scale = max(current.values()) if any(v > 0 for v in current.values()) else 1.0
    space = SearchSpace(list(names), tasks, {t: w for t, w in current.items()
                                             if t not in tasks and w != 0}, scale)
    started = time.perf_counter()
    with torch.inference_mode():
        current_values = ndcg(loaded.fusion(tensor).double().numpy())
    search = Search(space, evaluate, trials, seed)
    search.run(method, np.array([current[t] / scale for t in tasks]))
    values = np.array(search.values)
    front = pareto_front(values)
    chosen, rule = recommend(values, front, np.array([priority[t] for t in tasks]))
    return TuneResult(tasks, search.points, values, front, chosen, rule,
                      {t: w for t, w in current.items() if w != 0 or t in tasks},
                      current_values, requests, requests_total, len(groups), score_seconds,
                      time.perf_counter() - started)
