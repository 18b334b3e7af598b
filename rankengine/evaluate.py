"""Predictions and per-node metrics derived from the task graph.

For every binary node: the metrics on the entire space (e.g. CTR / CTCVR AUC) and, for nodes
with a parent, the same metrics on the parent-positive subspace with the conditional prediction
(suffix ``_cond``: the ESMM paper's "CVR AUC on clicked impressions"). Oracle columns, when
configured, add the AUC of the true probabilities next to the model's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rankengine.components import Component, ComponentTable, Metric
from rankengine.data.batching import TensorData, iterate_batches
from rankengine.data.dataset import EncodedData
from rankengine.graph import TaskGraph
from rankengine.model.assembly import RankingModel

Metrics = dict[str, dict[str, float]]


@torch.inference_mode()
def predict_arrays(
    model: RankingModel, data: TensorData, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Entire-space and conditional predictions ``[N, T]`` (float64) for every row."""
    model.eval()
    graph = model.graph
    entire, conditional = [], []
    for batch in iterate_batches(data, batch_size, shuffle=False):
        out = model(batch)
        entire.append(out.entire(graph))
        conditional.append(out.conditional(graph))
    t = len(graph)
    if not entire:
        return np.zeros((0, t)), np.zeros((0, t))
    return (torch.cat(entire).double().numpy(), torch.cat(conditional).double().numpy())


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
    """Per node: entire-space metrics, ``_cond`` metrics on the parent subspace, oracles."""
    out: Metrics = {}
    labels = data.labels.astype(np.float64)
    for i, node in enumerate(graph.nodes):
        parent = graph.parent_index[i]
        sub = labels[:, parent] == 1 if parent >= 0 else np.ones(len(labels), dtype=bool)
        y = labels[:, i]
        result: dict[str, float] = {"rows": float(len(y))}
        everything = np.ones(len(y), dtype=bool)
        if node.type == "binary":
            result["positives"] = float(y.sum())
            _run(result, "", everything, y, entire[:, i], "binary", data, metrics)
            if parent >= 0:
                result["rows_cond"] = float(sub.sum())
                _run(result, "_cond", sub, y, conditional[:, i], "binary", data, metrics)
        else:
            _run(result, "", sub, y, conditional[:, i], "regression", data, metrics)
            _run(result, "_entire", everything, y, entire[:, i], "regression", data, metrics)
        _oracle(node.spec.oracle, data, y, sub, conditional[:, i], metrics, result)
        out[node.name] = result
    return out


def _run(result: dict[str, float], suffix: str, rows: np.ndarray, truth: np.ndarray,
         pred: np.ndarray, kind: str, data: EncodedData,
         metrics: Sequence[Component[Metric]]) -> None:
    groups = data.groups[rows] if data.groups is not None else None
    for m in metrics:
        if m.factory.task_type != kind or (m.factory.needs_group and groups is None):
            continue
        result[m.name + suffix] = _clean(m.factory.fn(truth[rows], pred[rows], groups))


def _oracle(oracle: Any, data: EncodedData, y: np.ndarray, sub: np.ndarray,
            pred_cond: np.ndarray, metrics: Sequence[Component[Metric]],
            result: dict[str, float]) -> None:
    if oracle is None:
        return
    auc = next((m.factory.fn for m in metrics if m.name == "auc"), None)
    if auc is None:
        return
    if oracle.p:
        result["oracle_auc"] = _clean(auc(y, data.extras[oracle.p], None))
    if oracle.p_cond and sub.any():
        result["oracle_auc_cond"] = _clean(auc(y[sub], data.extras[oracle.p_cond][sub], None))
    if oracle.label_cond:
        # Counterfactual labels exist for every impression (simulated data), so the conditional
        # model can be judged on the entire space: the sample-selection-bias test.
        cf = data.extras[oracle.label_cond]
        result["auc_cond_entire"] = _clean(auc(cf, pred_cond, None))
        if oracle.p_cond:
            result["oracle_auc_cond_entire"] = _clean(auc(cf, data.extras[oracle.p_cond], None))


def _clean(value: float) -> float:
    return float(value) if value is not None and math.isfinite(value) else float("nan")
