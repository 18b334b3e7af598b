"""The HTTP server: Open Inference Protocol v2, a ranking endpoint, health and metrics.

Inference runs in worker threads behind a fixed limiter, never on the event loop. Client
mistakes are 400 with the field named, a body over the size limit 413 (refused by its
Content-Length, or as soon as a streamed body passes the limit), candidates the model cannot
score (a prediction that is not a finite number) 422, unknown models 404, a model still
loading 503.

This module only assembles the server; each part lives in its own module:

- :mod:`~rankengine.serve.settings`: the limits (:class:`ServeSettings`);
- :mod:`~rankengine.serve.state`: one server's state, on ``app.state``, shared by the routes;
- :mod:`~rankengine.serve.bodies`: reading request bodies under the size limit, JSON parsing;
- :mod:`~rankengine.serve.responses`: the JSON answers and errors, the endpoint wrapper;
- :mod:`~rankengine.serve.oip`: the Open Inference Protocol v2 routes;
- :mod:`~rankengine.serve.rank`: ``POST /v1/rank``;
- :mod:`~rankengine.serve.metrics`: the Prometheus metrics, their middleware and ``/metrics``.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rankengine.serve import metrics, oip, rank
from rankengine.serve.bodies import REFUSED_BODY_GRACE
from rankengine.serve.holder import ModelHolder
from rankengine.serve.metrics import Metrics, RequestMetrics
from rankengine.serve.responses import (
    ENDPOINTS,
    HTTPError,
    JSONResponse,
    internal_error,
    routing_error,
    validation_error,
)
from rankengine.serve.settings import ServeSettings
from rankengine.serve.state import ServerState
from rankengine.version import __version__


def create_app(holder: ModelHolder, settings: ServeSettings | None = None,
               *, load_in_background: bool = True) -> FastAPI:
    settings = settings or ServeSettings()
    state = ServerState(holder, settings, Metrics(), anyio.CapacityLimiter(settings.threads))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        def first_load() -> None:
            try:
                holder.load()
            except Exception:
                return
        if load_in_background:
            threading.Thread(target=first_load, daemon=True).start()
        else:
            first_load()
        holder.start_polling(settings.poll_interval)
        yield
        holder.stop()

    app = FastAPI(title="rankengine", version=__version__, lifespan=lifespan)
    app.state.server = state
    app.add_middleware(RequestMetrics, metrics=state.metrics, names=ENDPOINTS)
    app.exception_handler(StarletteHTTPException)(routing_error)
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(Exception)(internal_error)
    for module in (oip, rank, metrics):  # in this order in the OpenAPI description
        app.include_router(module.router)
    return app


__all__ = ["REFUSED_BODY_GRACE", "HTTPError", "JSONResponse", "Metrics", "RequestMetrics",
           "ServeSettings", "ServerState", "create_app"]
