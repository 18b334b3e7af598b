"""One server's state, shared by its routes: the model holder, the limits, the metrics and the
limiter of the inference threads. ``create_app`` stores it on ``app.state``; a route finds it
with :func:`server_state`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import numpy as np
import pyarrow as pa
from fastapi import Request

from rankengine.serve.holder import ModelHolder, Served
from rankengine.serve.responses import HTTPError, shown
from rankengine.serve.scoring import BadRequestError, row_label, score
from rankengine.serve.settings import ServeSettings

if TYPE_CHECKING:  # metrics.py's /metrics route reads this state
    from rankengine.serve.metrics import Metrics


@dataclass
class ServerState:
    holder: ModelHolder
    settings: ServeSettings
    metrics: Metrics
    limiter: anyio.CapacityLimiter  # inference runs in worker threads, never on the event loop

    def served(self, name: str, version: str | None = None) -> Served:
        """The model being served under ``name`` (and ``version``, when given): 404 for
        another model or version, 503 while none is loaded."""
        holder = self.holder
        if name != holder.name:
            raise HTTPError(404, f"unknown model {shown(name)}; this server serves "
                                 f"'{holder.name}'")
        current = holder.current
        if current is None:
            detail = f": {holder.last_error}" if holder.last_error else ""
            raise HTTPError(503, f"model '{name}' is not loaded yet{detail}")
        if version is not None and version != str(current.version):
            raise HTTPError(404, f"version {shown(version)} of '{name}' is not loaded; "
                                 f"serving version {current.version}")
        return current

    def check_size(self, n: int) -> None:
        if n > self.settings.max_candidates:
            raise BadRequestError(f"{n} rows to score; the limit is "
                                  f"{self.settings.max_candidates}")

    async def score(self, model: Served, ctx: dict[str, pa.Array], items: dict[str, pa.Array],
                    n: int, weights: dict[str, float] | None,
                    timings: dict[str, float] | None = None,
                    label: Callable[[int], str] = row_label) -> dict[str, np.ndarray]:
        """:func:`~rankengine.serve.scoring.score` in a worker thread, counted."""
        out = await anyio.to_thread.run_sync(score, model, ctx, items, n, weights, timings,
                                             label, limiter=self.limiter)
        self.metrics.candidates.inc(n)
        return out


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state
