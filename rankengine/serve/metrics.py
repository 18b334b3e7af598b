"""Prometheus metrics: what they count, the middleware that counts requests, and ``/metrics``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rankengine.serve.state import server_state

router = APIRouter()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rankengine_requests_total", "HTTP requests",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("rankengine_request_seconds", "request latency", ["endpoint"],
                                 registry=r, buckets=(.001, .0025, .005, .01, .025, .05, .1,
                                                      .25, .5, 1, 2.5))
        self.candidates = Counter("rankengine_candidates_scored_total", "rows scored",
                                  registry=r)
        self.errors = Counter("rankengine_errors_total", "failed requests", ["endpoint", "kind"],
                              registry=r)
        self.version = Gauge("rankengine_model_version", "version being served", ["model"],
                             registry=r)
        self.stages = Histogram("rankengine_rank_stage_seconds", "where /v1/rank spends its "
                                "time (the Server-Timing stages)", ["stage"], registry=r,
                                buckets=(.0001, .00025, .0005, .001, .0025, .005, .01, .025,
                                         .05, .1, .25))


class RequestMetrics:
    """ASGI middleware: counts every routed request by the status the server really sent.

    The label is the endpoint's name (``rank``, ``infer``, ...; ``names`` maps handlers to
    them) or, for other routes, the route's path template. A handler that raises before it
    answers is counted as the 500 it becomes; it used to be counted as a 200.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, names: Mapping[Any, str]) -> None:
        self.app, self.metrics, self.names = app, metrics, names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaping the app is a 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")  # set by the router once a route matched
            if route is not None:
                name = self.names.get(getattr(route, "endpoint", None)) or \
                    getattr(route, "path", "?")
                self.metrics.requests.labels(name, str(status)).inc()
                self.metrics.latency.labels(name).observe(time.perf_counter() - started)
                if status >= 400:
                    self.metrics.errors.labels(name, str(status)).inc()


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    state = server_state(request)
    holder, metrics = state.holder, state.metrics
    if holder.current is not None:
        metrics.version.labels(holder.current.name).set(holder.current.version)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
