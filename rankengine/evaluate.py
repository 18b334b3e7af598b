"""Predictions and per-node metrics derived from the task graph.

For every binary node: the metrics on the entire space (e.g. CTR / CTCVR AUC) and, for nodes
with a parent, the same metrics on the parent-positive subspace with the conditional prediction
(suffix ``_cond``: the ESMM paper's "CVR AUC on clicked impressions"). Oracle columns, when
configured, add the AUC of the true probabilities next to the model's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from rankengine.components import Component, ComponentTable
from rankengine.data.dataset import EncodedData
from rankengine.graph import TaskGraph
from rankengine.interfaces import Metric

#: task → metric → value (NaN where undefined), plus ``"undefined"``: metric → reason
Metrics = dict[str, dict[str, Any]]


def select_metrics(
    table: ComponentTable[Metric], names: Sequence[str] | None
) -> list[Component[Metric]]:
    return [table.get(n) for n in names] if names is not None else list(table)


def node_metrics(
    graph: TaskGraph,
    data: EncodedData,
    entire: np.ndarray,
    conditional: np.ndarray,
    metrics: Sequence[Component[Metric]],
) -> Metrics:
    """Per node: entire-space metrics, ``_cond`` metrics on the parent subspace, oracles.

    A metric that does not exist on the rows (AUC without a positive, anything on no rows) is
    NaN (``null`` in JSON) and its reason goes in the node's ``"undefined"`` entry, e.g.
    ``{"auc_cond": "no rows with click = 1"}``; it never raises.
    """
    out: Metrics = {}
    labels = data.labels.astype(np.float64)
    for i, node in enumerate(graph.nodes):
        parent = graph.parent_index[i]
        sub = labels[:, parent] == 1 if parent >= 0 else np.ones(len(labels), dtype=bool)
        given = f"with {graph.names[parent]} = 1" if parent >= 0 else ""
        y = labels[:, i]
        result: dict[str, Any] = {"rows": float(len(y))}
        why: dict[str, str] = {}
        everything = np.ones(len(y), dtype=bool)
        if node.type == "binary":
            result["positives"] = float(y.sum())
            _run(result, why, "", everything, "", y, entire[:, i], "binary", data, metrics)
            if parent >= 0:
                result["rows_cond"] = float(sub.sum())
                _run(result, why, "_cond", sub, given, y, conditional[:, i], "binary", data,
                     metrics)
        else:
            _run(result, why, "", sub, given, y, conditional[:, i], "regression", data, metrics)
            _run(result, why, "_entire", everything, "", y, entire[:, i], "regression", data,
                 metrics)
        _oracle(node.spec.oracle, data, y, sub, given, conditional[:, i], metrics, result, why)
        if why:
            result[UNDEFINED] = why
        out[node.name] = result
    return out


#: The key of a node's metrics that maps each undefined metric to why it is undefined.
UNDEFINED = "undefined"


def undefined_summary(metrics: Metrics) -> dict[str, str]:
    """Per task with undefined metrics, one line grouping them by reason:
    ``{"order": "auc, gauc (no positive labels); auc_cond (no rows with click = 1)"}``."""
    out = {}
    for task, values in metrics.items():
        reasons = values.get(UNDEFINED) if isinstance(values, dict) else None
        if not isinstance(reasons, dict) or not reasons:
            continue
        by_reason: dict[str, list[str]] = {}
        for metric, why in reasons.items():
            by_reason.setdefault(str(why), []).append(str(metric))
        out[task] = "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
    return out


def undefined_reason(metrics: Metrics, task: str, metric: str) -> str | None:
    """Why ``task.metric`` has no value (None when it has one or was never computed)."""
    values = metrics.get(task) or {}
    reasons = values.get(UNDEFINED) or {}
    if metric in reasons:
        return str(reasons[metric])
    value = values.get(metric)
    if metric in values and not (isinstance(value, int | float) and math.isfinite(value)):
        return "not a finite number"
    return None


def _run(result: dict[str, Any], why: dict[str, str], suffix: str, rows: np.ndarray,
         given: str, truth: np.ndarray, pred: np.ndarray, kind: str, data: EncodedData,
         metrics: Sequence[Component[Metric]]) -> None:
    groups = data.groups[rows] if data.groups is not None else None
    for m in metrics:
        if m.factory.task_type != kind or (m.factory.needs_group and groups is None):
            continue
        _record(result, why, m.name + suffix, rows, given,
                partial(m.factory.fn, truth[rows], pred[rows], groups))


def _record(result: dict[str, Any], why: dict[str, str], key: str, rows: np.ndarray,
            given: str, compute: Callable[[], float]) -> None:
    """``result[key]`` from ``compute()``, or NaN with the reason in ``why[key]``."""
    if not rows.any():  # no metric exists on no rows: the metric is not even called
        result[key] = math.nan
        why[key] = f"no rows {given}".strip()
        return
    try:
        value = compute()
    except Exception as exc:  # a plugin's metric must not lose a finished run
        result[key] = math.nan
        why[key] = f"the metric failed: {type(exc).__name__}: {exc}"
        return
    if value is not None and isinstance(value, int | float | np.floating) \
            and math.isfinite(value):
        result[key] = float(value)
        return
    result[key] = math.nan
    why[key] = getattr(value, "reason", None) or f"not a finite number ({value})"


def _oracle(oracle: Any, data: EncodedData, y: np.ndarray, sub: np.ndarray, given: str,
            pred_cond: np.ndarray, metrics: Sequence[Component[Metric]],
            result: dict[str, Any], why: dict[str, str]) -> None:
    if oracle is None:
        return
    # Every per-row binary metric is also computed for the simulator's oracle, side by side.
    for metric in metrics:
        if metric.factory.task_type == "binary" and not metric.factory.needs_group:
            _oracle_metric(metric.name, metric.factory.fn, oracle, data, y, sub, given,
                           pred_cond, result, why)


def _oracle_metric(name: str, fn: Callable[[np.ndarray, np.ndarray, None], float],
                   oracle: Any, data: EncodedData, y: np.ndarray, sub: np.ndarray, given: str,
                   pred_cond: np.ndarray, result: dict[str, Any], why: dict[str, str]) -> None:
    every = np.ones(len(y), dtype=bool)
    if oracle.p:
        _record(result, why, f"oracle_{name}", every, "",
                lambda: fn(y, data.extras[oracle.p], None))
    if oracle.p_cond and sub.any():
        _record(result, why, f"oracle_{name}_cond", sub, given,
                lambda: fn(y[sub], data.extras[oracle.p_cond][sub], None))
    if oracle.label_cond:
        # Counterfactual labels exist for every impression (simulated data), so the
        # conditional model can be judged on the entire space: the selection-bias test.
        cf = data.extras[oracle.label_cond]
        _record(result, why, f"{name}_cond_entire", every, "", lambda: fn(cf, pred_cond, None))
        if oracle.p_cond:
            _record(result, why, f"oracle_{name}_cond_entire", every, "",
                    lambda: fn(cf, data.extras[oracle.p_cond], None))
