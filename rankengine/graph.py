"""The declared task graph: a DAG of behaviours that drives heads, labels, losses and metrics.

A node happens only if its parent (``after``) happened; roots hang off the impression. A node may
name a *branch* sibling (``via``, ESM²): then p(node | parent) is composed by total probability
over the sibling. Entire-space labels are ``label AND parent label``; rows that contradict that
(child 1, parent 0) are inconsistent logs handled by a policy: error | fix | drop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rankengine.config import TaskSpec
from rankengine.errors import DataError, GraphError, suggest

InconsistentPolicy = Literal["error", "fix", "drop"]


@dataclass(frozen=True)
class TaskNode:
    name: str
    spec: TaskSpec
    parent: str | None
    via: str | None

    @property
    def type(self) -> Literal["binary", "regression"]:
        return self.spec.type


@dataclass
class LabelReport:
    """What label derivation found: inconsistent rows per node and what was done about them."""

    policy: InconsistentPolicy
    rows_in: int
    inconsistent: dict[str, int] = field(default_factory=dict)
    rows_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "rows_in": self.rows_in,
            "inconsistent": dict(self.inconsistent),
            "rows_dropped": self.rows_dropped,
        }


class TaskGraph:
    """A validated task DAG with nodes in topological order (parents and ``via`` first)."""

    def __init__(self, specs: Mapping[str, TaskSpec]) -> None:
        _validate(specs)
        order = _topological_order(specs)
        self.nodes: list[TaskNode] = [
            TaskNode(name, specs[name], specs[name].after, specs[name].via) for name in order
        ]
        self.names: list[str] = [n.name for n in self.nodes]
        self._index = {name: i for i, name in enumerate(self.names)}
        self.parent_index: list[int] = [
            self._index[n.parent] if n.parent is not None else -1 for n in self.nodes
        ]
        self.via_index: list[int] = [
            self._index[n.via] if n.via is not None else -1 for n in self.nodes
        ]
        self.regression_index: list[int] = [
            i for i, n in enumerate(self.nodes) if n.type == "regression"
        ]
        self.binary_index: list[int] = [i for i, n in enumerate(self.nodes) if n.type == "binary"]

    def __len__(self) -> int:
        return len(self.nodes)

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise GraphError(
                f"unknown task '{name}'; tasks: {', '.join(self.names)}{suggest(name, self.names)}"
            ) from None

    def node(self, name: str) -> TaskNode:
        return self.nodes[self.index(name)]

    def children(self, name: str) -> list[str]:
        return [n.name for n in self.nodes if n.parent == name]

    def ancestors(self, name: str) -> list[str]:
        out, parent = [], self.node(name).parent
        while parent is not None:
            out.append(parent)
            parent = self.node(parent).parent
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            n.name: {"type": n.type, "after": n.parent, "via": n.via, "label": n.spec.label_columns}
            for n in self.nodes
        }

    # -- labels ---------------------------------------------------------------------------

    def derive_labels(
        self,
        raw: Mapping[str, np.ndarray],
        policy: InconsistentPolicy,
        *,
        where: str = "data",
    ) -> tuple[np.ndarray, np.ndarray | None, LabelReport]:
        """Entire-space labels ``[N, T]`` (float32) from raw per-node labels.

        Returns ``(labels, keep, report)`` where ``keep`` is a boolean row mask when the policy
        is ``drop`` and rows were dropped (else None). Binary raw labels must be 0/1; regression
        values on parent-negative rows must be 0 (else they count as inconsistent) and are 0 in
        the output.
        """
        n = len(next(iter(raw.values()))) if raw else 0
        labels = np.zeros((n, len(self.nodes)), dtype=np.float32)
        report = LabelReport(policy=policy, rows_in=n)
        bad_rows = np.zeros(n, dtype=bool)
        for i, node in enumerate(self.nodes):
            values = np.asarray(raw[node.name], dtype=np.float64)
            if node.type == "binary":
                bad = ~np.isin(values, (0.0, 1.0))
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise DataError(
                        f"{where}: label of task '{node.name}' (column "
                        f"{'|'.join(node.spec.label_columns)}) must be 0 or 1; row {row} holds "
                        f"{float(values[row])!r}"
                    )
            elif np.isnan(values).any():
                row = int(np.flatnonzero(np.isnan(values))[0])
                raise DataError(
                    f"{where}: value of regression task '{node.name}' (column "
                    f"{node.spec.label_columns[0]}) is missing at row {row}; fill it or drop it"
                )
            parent = self.parent_index[i]
            if parent >= 0:
                parent_neg = labels[:, parent] == 0
                inconsistent = parent_neg & (values != 0)
                count = int(inconsistent.sum())
                if count:
                    report.inconsistent[node.name] = count
                    if policy == "error":
                        rows = ", ".join(str(r) for r in np.flatnonzero(inconsistent)[:5])
                        raise DataError(
                            f"{where}: {count} row(s) have task '{node.name}' set while its "
                            f"parent '{node.parent}' is 0 (first rows: {rows}); set "
                            f"[data] inconsistent = \"fix\" to clear the child or \"drop\" to "
                            f"drop those rows"
                        )
                    bad_rows |= inconsistent
                values = np.where(parent_neg, 0.0, values)
            labels[:, i] = values
        keep = None
        if policy == "drop" and bad_rows.any():
            keep = ~bad_rows
            report.rows_dropped = int(bad_rows.sum())
        return labels, keep, report


def _validate(specs: Mapping[str, TaskSpec]) -> None:
    if not specs:
        raise GraphError("the task graph is empty; declare at least one task under [tasks]")
    names = list(specs)
    for name, spec in specs.items():
        for attr in ("after", "via"):
            target = getattr(spec, attr)
            if target is None:
                continue
            if target == name:
                raise GraphError(f"task '{name}': {attr} = '{target}' names the task itself")
            if target not in specs:
                raise GraphError(
                    f"task '{name}': {attr} = '{target}' names no task; tasks: "
                    f"{', '.join(names)}{suggest(target, names)}"
                )
            if specs[target].type != "binary":
                raise GraphError(
                    f"task '{name}': {attr} = '{target}' is a regression task; only binary "
                    f"behaviours can be parents or branches"
                )
        if spec.via is not None:
            sibling = specs[spec.via]
            if sibling.after != spec.after:
                raise GraphError(
                    f"task '{name}': via = '{spec.via}' must name a sibling (a task with "
                    f"after = {spec.after!r}), but '{spec.via}' has after = {sibling.after!r}"
                )
            if spec.type != "binary":
                raise GraphError(f"task '{name}': via is only defined for binary tasks")
        if spec.type == "regression" and (len(spec.label_columns) != 1
                                          or not isinstance(spec.label, str)):
            raise GraphError(f"task '{name}': a regression task takes exactly one label column "
                             f"(its value), e.g. label = \"{spec.label_columns[0]}\"")


def _topological_order(specs: Mapping[str, TaskSpec]) -> list[str]:
    """Kahn's algorithm over after- and via-edges, keeping declaration order among ready nodes."""
    deps = {
        name: {d for d in (spec.after, spec.via) if d is not None} for name, spec in specs.items()
    }
    order: list[str] = []
    remaining = list(specs)
    while remaining:
        ready = [n for n in remaining if deps[n] <= set(order)]
        if not ready:
            raise GraphError(f"the task graph has a cycle: {_find_cycle(deps, remaining)}")
        order.append(ready[0])
        remaining.remove(ready[0])
    return order


def _find_cycle(deps: Mapping[str, set[str]], remaining: list[str]) -> str:
    path: list[str] = []
    node = remaining[0]
    while node not in path:
        path.append(node)
        node = sorted(d for d in deps[node] if d in remaining)[0]
    cycle = [*path[path.index(node) :], node]
    return " → ".join(reversed(cycle))
