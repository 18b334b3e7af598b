"""Early stopping on the total validation loss, on one task's metric in its direction, or on a
weighted combination of several."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rankengine.components import Component
from rankengine.config import EngineConfig
from rankengine.errors import ConfigError
from rankengine.evaluate import Metrics, undefined_reason
from rankengine.graph import TaskGraph
from rankengine.interfaces import Metric


@dataclass(frozen=True)
class Term:
    """One tracked ``<metric>:<task>`` with its weight and the metric that judges it."""

    metric: str
    task: str
    weight: float
    judge: Metric


class EarlyStopper:
    """Tracks ``loss`` (total validation loss), ``<metric>:<task>``, or ``combined``: a
    weighted sum of several such terms, each as its metric's badness (its direction)."""

    def __init__(self, config: EngineConfig, graph: TaskGraph,
                 metrics: list[Component[Metric]]) -> None:
        self.spec = config.train.early_stopping
        self.best = math.inf
        self.bad_epochs = 0
        self.terms: list[Term] = []
        if self.spec is None or self.spec.metric == "loss":
            if self.spec is not None and self.spec.weights:
                raise ConfigError("weights are for metric = \"combined\"; found metric = "
                                  "\"loss\"", source=config.source,
                                  key="train.early_stopping.weights")
            return
        key = "train.early_stopping.metric"
        if self.spec.metric == COMBINED:
            if not self.spec.weights:
                raise ConfigError("metric = \"combined\" needs weights, e.g. { \"auc:click\" = "
                                  "1.0, \"auc:order\" = 2.0 }", source=config.source,
                                  key="train.early_stopping.weights")
            key = "train.early_stopping.weights"
            weighted = dict(self.spec.weights)
        elif self.spec.weights:
            raise ConfigError(f"weights are for metric = \"combined\"; found metric = "
                              f"{self.spec.metric!r}", source=config.source,
                              key="train.early_stopping.weights")
        else:
            weighted = {self.spec.metric: 1.0}
        for term, weight in weighted.items():
            if not math.isfinite(weight) or weight <= 0:
                raise ConfigError(f"the weight of {term!r} must be a number > 0, found "
                                  f"{weight}", source=config.source, key=key)
            self.terms.append(_term(term, weight, config, graph, metrics, key))

    @property
    def metric(self) -> str | None:
        """The one tracked ``<metric>`` (None: the loss, or a combination)."""
        return self.terms[0].metric if len(self.terms) == 1 else None

    @property
    def task(self) -> str | None:
        return self.terms[0].task if len(self.terms) == 1 else None

    def value(self, loss: dict[str, float], metrics: Metrics) -> float:
        """The tracked quantity, lower is better; NaN where it is undefined this epoch."""
        if not self.terms:
            return float(loss.get("total", math.nan))
        total = 0.0
        for term in self.terms:
            found = (metrics.get(term.task) or {}).get(term.metric)
            if not isinstance(found, int | float) or not math.isfinite(found):
                return math.nan
            total += term.weight * term.judge.badness(float(found))
        return total

    def undefined(self, loss: dict[str, float], metrics: Metrics) -> str | None:
        """Why the tracked metric has no value this epoch (None when it has one)."""
        if math.isfinite(self.value(loss, metrics)):
            return None
        if not self.terms:
            return "no validation rows"
        for term in self.terms:
            found = (metrics.get(term.task) or {}).get(term.metric)
            if not isinstance(found, int | float) or not math.isfinite(found):
                why = undefined_reason(metrics, term.task, term.metric) or "not computed"
                return why if len(self.terms) == 1 else f"{term.metric}:{term.task}: {why}"
        return "not computed"

    def update(self, epoch: int, loss: dict[str, float], metrics: Metrics) -> tuple[bool, bool]:
        """Returns (improved, stop).

        An epoch whose tracked metric is undefined (e.g. AUC on a split without positives) is
        not judged: it neither improves nor counts towards the patience, except that until a
        defined value has been seen the latest epoch is kept, as without early stopping.
        """
        value = self.value(loss, metrics)
        if not math.isfinite(value):
            return self.best == math.inf, False
        min_delta = self.spec.min_delta if self.spec else 0.0
        if value < self.best - min_delta:
            self.best = value
            self.bad_epochs = 0
            return True, False
        self.bad_epochs += 1
        return False, self.spec is not None and self.bad_epochs >= self.spec.patience


COMBINED = "combined"


def _term(text: str, weight: float, config: EngineConfig, graph: TaskGraph,
          metrics: list[Component[Metric]], key: str) -> Term:
    """``<metric>:<task>`` checked against the metrics and the graph."""
    name, _, task = text.partition(":")
    base = name.removesuffix("_cond")
    known = {m.name: m for m in metrics}
    if base not in known or not task:
        raise ConfigError(
            f"expected 'loss', 'combined' or '<metric>:<task>' (e.g. 'auc:{graph.names[-1]}') "
            f"with a metric among {', '.join(sorted(known))}; found {text!r}",
            source=config.source, key=key)
    if task not in graph.names:
        raise ConfigError(f"task '{task}' is not in the graph ({', '.join(graph.names)})",
                          source=config.source, key=key)
    node = graph.node(task)
    judge = known[base].factory
    if judge.task_type != node.type:  # never computed: never judged
        fitting = sorted(m for m, c in known.items() if c.factory.task_type == node.type)
        raise ConfigError(f"metric '{base}' is computed for {judge.task_type} tasks, but "
                          f"'{task}' is a {node.type} task; its metrics: "
                          f"{', '.join(fitting) or '(none)'}", source=config.source, key=key)
    if judge.needs_group and not config.data.group:
        raise ConfigError(f"metric '{base}' is computed per request group; set [data] group",
                          source=config.source, key=key)
    if name.endswith("_cond") and node.parent is None:
        raise ConfigError(f"'{name}' is measured on the parent-positive rows, but task "
                          f"'{task}' has no parent (after); use '{base}:{task}'",
                          source=config.source, key=key)
    return Term(name, task, weight, judge)
