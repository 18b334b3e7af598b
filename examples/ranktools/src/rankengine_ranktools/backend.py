"""The ``torch_checked`` serving back end: the torch model, with every answer checked.

``rankengine serve NAME --backend torch_checked`` runs one forward pass of the torch model per
request, like the built-in ``torch`` back end, and refuses (with :class:`OutputCheckError`) any
answer that breaks the contract of a task graph:

- every prediction is a finite number;
- binary tasks' entire-space and conditional probabilities lie in [0, 1];
- a binary task never has a higher entire-space probability than its parent
  (p(order) <= p(click)), up to ``TOLERANCE``.

The server answers a refused request with a 422 naming the broken rule instead of a ranking
built on nonsense (an ``independent`` cascade with ``space = "entire"`` does not enforce the
third rule; a model whose weights were damaged breaks the first). The back end counts the
requests and rows it checked and refused (:meth:`CheckedTorchBackend.counts`) and writes them
to stderr when the server lets go of it (:meth:`close`).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence

import numpy as np

from rankengine import ServingBackend, UnscorableError

#: Slack allowed on p(child) <= p(parent) and on [0, 1] (float32 rounding).
TOLERANCE = 1e-6


class OutputCheckError(UnscorableError):
    """A model answer that breaks the task graph's contract; names the task, row and values.
    An UnscorableError: the server answers 422 with this message."""


class CheckedTorchBackend(ServingBackend):
    """The torch model's forward pass, its outputs checked before they are ranked."""

    def setup(self) -> None:
        self.graph = self.loaded.graph
        self.names = list(self.graph.names)
        self.binary = np.array([node.type == "binary" for node in self.graph.nodes])
        #: (child, parent) column pairs of binary children.
        self.edges = [(i, p) for i, p in enumerate(self.graph.parent_index)
                      if p >= 0 and self.binary[i]]
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "rows": 0, "refused": 0}

    def predict(self, ids: np.ndarray, dense: np.ndarray,
                id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        entire, conditional = self.run_torch(ids, dense, id_lists)  # the torch back end's answer
        problem = self.check(entire, conditional)
        with self._lock:
            self._counts["requests"] += 1
            self._counts["rows"] += len(entire)
            self._counts["refused"] += problem is not None
        if problem is not None:
            raise OutputCheckError(f"torch_checked: model {self.loaded.path}: {problem}")
        return entire, conditional

    def check(self, entire: np.ndarray, conditional: np.ndarray) -> str | None:
        """The first broken rule as ``task 'order' row 2: ...``, or ``None``."""
        for label, values in (("entire-space", entire), ("conditional", conditional)):
            bad = ~np.isfinite(values)
            if bad.any():
                row, col = np.argwhere(bad)[0]
                return (f"task '{self.names[col]}' row {row}: expected a finite {label} "
                        f"prediction, found {values[row, col]}")
            probabilities = values[:, self.binary]
            outside = (probabilities < -TOLERANCE) | (probabilities > 1.0 + TOLERANCE)
            if outside.any():
                row, col = np.argwhere(outside)[0]
                task = np.flatnonzero(self.binary)[col]
                return (f"task '{self.names[task]}' row {row}: expected a {label} probability "
                        f"in [0, 1], found {probabilities[row, col]:.6g}")
        for child, parent in self.edges:
            above = entire[:, child] > entire[:, parent] + TOLERANCE
            if above.any():
                row = int(np.flatnonzero(above)[0])
                return (f"task '{self.names[child]}' row {row}: expected p({self.names[child]})"
                        f" <= p({self.names[parent]}) = {entire[row, parent]:.6g}, found "
                        f"{entire[row, child]:.6g}")
        return None

    def counts(self) -> dict[str, int]:
        """Requests and rows checked so far, and requests refused."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        counts = self.counts()
        sys.stderr.write(f"torch_checked: model {self.loaded.path}: {counts['requests']} "
                         f"request(s), {counts['rows']} row(s) checked, {counts['refused']} "
                         f"refused\n")
        sys.stderr.flush()
