"""The run behind ``rankengine tune-fusion``: read and score the data, search, recommend.

The data is scored once with the model (per-task entire-space probabilities); every candidate
weight vector is then evaluated by building the version's own fusion with those weights (so the
scores are exactly what ``predict``, ``rank`` and ``serve`` would compute) and measuring NDCG@k
of each task's label within each request (:mod:`rankengine.tune.ndcg`), vectorised over
requests. The weights are searched by :mod:`rankengine.tune.search`; the Pareto front and the
recommended point come from :mod:`rankengine.tune.pareto`. :class:`TuneResult` holds the
outcome and the registry record of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rankengine.errors import DataError, suggest
from rankengine.tune.ndcg import Floats, GroupedNDCG, Ints
from rankengine.tune.pareto import pareto_front, recommend
from rankengine.tune.search import Search, SearchSpace

if TYPE_CHECKING:
    from rankengine.bundle import ModelBundle

MAX_STORED_POINTS = 400  # points kept in the registry: the whole front, then the earliest others


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
