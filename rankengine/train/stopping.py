"""Early stopping on the total validation loss or on one task's metric, in its direction."""

from __future__ import annotations

import math

from rankengine.components import Component
from rankengine.config import EngineConfig
from rankengine.errors import ConfigError
from rankengine.evaluate import Metrics, undefined_reason
from rankengine.graph import TaskGraph
from rankengine.interfaces import Metric


class EarlyStopper:
    """Tracks ``loss`` (total validation loss) or ``<metric>:<task>`` for early stopping."""

    def __init__(self, config: EngineConfig, graph: TaskGraph,
                 metrics: list[Component[Metric]]) -> None:
        self.spec = config.train.early_stopping
        self.best = math.inf
        self.bad_epochs = 0
        self.metric: str | None = None
        self.task: str | None = None
        self.judge: Metric | None = None
        if self.spec is None or self.spec.metric == "loss":
            return
        name, _, task = self.spec.metric.partition(":")
        base = name.removesuffix("_cond")
        known = {m.name: m for m in metrics}
        if base not in known or not task:
            raise ConfigError(
                f"expected 'loss' or '<metric>:<task>' (e.g. 'auc:{graph.names[-1]}') with a "
                f"metric among {', '.join(sorted(known))}; found {self.spec.metric!r}",
                source=config.source, key="train.early_stopping.metric")
        if task not in graph.names:
            raise ConfigError(f"task '{task}' is not in the graph ({', '.join(graph.names)})",
                              source=config.source, key="train.early_stopping.metric")
        node = graph.node(task)
        if known[base].factory.task_type != node.type:  # never computed: never judged
            fitting = sorted(m for m, c in known.items() if c.factory.task_type == node.type)
            raise ConfigError(f"metric '{base}' is computed for {known[base].factory.task_type} "
                              f"tasks, but '{task}' is a {node.type} task; its metrics: "
                              f"{', '.join(fitting) or '(none)'}", source=config.source,
                              key="train.early_stopping.metric")
        if known[base].factory.needs_group and not config.data.group:
            raise ConfigError(f"metric '{base}' is computed per request group; set [data] group",
                              source=config.source, key="train.early_stopping.metric")
        if name.endswith("_cond") and node.parent is None:
            raise ConfigError(f"'{name}' is measured on the parent-positive rows, but task "
                              f"'{task}' has no parent (after); use '{base}:{task}'",
                              source=config.source, key="train.early_stopping.metric")
        self.metric, self.task = name, task
        self.judge = known[base].factory  # its direction: higher, lower or closest to a target

    def value(self, loss: dict[str, float], metrics: Metrics) -> float:
        """The tracked quantity, lower is better; NaN where it is undefined this epoch."""
        if self.metric is None:
            return float(loss.get("total", math.nan))
        assert self.task is not None
        found = (metrics.get(self.task) or {}).get(self.metric)
        if not isinstance(found, int | float) or not math.isfinite(found):
            return math.nan
        assert self.judge is not None
        return self.judge.badness(float(found))

    def undefined(self, loss: dict[str, float], metrics: Metrics) -> str | None:
        """Why the tracked metric has no value this epoch (None when it has one)."""
        if math.isfinite(self.value(loss, metrics)):
            return None
        if self.metric is None:
            return "no validation rows"
        assert self.task is not None
        return undefined_reason(metrics, self.task, self.metric) or "not computed"

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
