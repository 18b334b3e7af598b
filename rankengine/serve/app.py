"""The HTTP server: Open Inference Protocol v2, a ranking endpoint, health and metrics.

Inference runs in worker threads behind a fixed limiter, never on the event loop. Client
mistakes are 400 with the field named, a body over the size limit 413 (refused by its
Content-Length, or as soon as a streamed body passes the limit), candidates the model cannot
score (a prediction that is not a finite number) 422, unknown models 404, a model still
loading 503.
"""

from __future__ import annotations

import hmac
import inspect
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
import orjson
import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rankengine.serve import tensors
from rankengine.serve.holder import ModelHolder, Served
from rankengine.serve.schema import INFER_REQUEST, INFER_RESPONSE, RANK_REQUEST, RANK_RESPONSE
from rankengine.serve.schema import body as body_schema
from rankengine.serve.scoring import BadRequestError, column, row_label, score
from rankengine.version import __version__

REFUSED_BODY_GRACE = 1 << 20  # bytes past --max-body-bytes read (and dropped) before closing
CLOSE = {"Connection": "close"}


@dataclass
class ServeSettings:
    """The serving limits (``rankengine serve`` checks the ranges of its flags; these checks
    catch what no server could run with). ``admin_token``, when set, is required as
    ``Authorization: Bearer <token>`` by ``POST /v2/repository/models/{name}/load``."""

    threads: int = 2
    max_candidates: int = 2000
    max_body_bytes: int = 8 << 20
    max_fusion_weight: float = 100.0
    poll_interval: float = 30.0
    admin_token: str | None = None

    def __post_init__(self) -> None:
        for name in ("threads", "max_candidates", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServeSettings.{name} must be a positive integer, found "
                                 f"{value!r}")
        for name in ("max_fusion_weight", "poll_interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"ServeSettings.{name} must be a positive finite number, "
                                 f"found {value!r}")
        if self.admin_token is not None and not self.admin_token:
            raise ValueError("ServeSettings.admin_token must not be empty (None: no token)")


class JSONResponse(Response):
    """orjson-encoded JSON (numpy-free, fast); FastAPI's own JSONResponse is deprecated."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class HTTPError(Exception):
    def __init__(self, status: int, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


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


def create_app(holder: ModelHolder, settings: ServeSettings | None = None,
               *, load_in_background: bool = True) -> FastAPI:
    settings = settings or ServeSettings()
    metrics = Metrics()
    names: dict[Any, str] = {}  # handler -> endpoint label of the request metrics
    limiter = anyio.CapacityLimiter(settings.threads)

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
    app.add_middleware(RequestMetrics, metrics=metrics, names=names)

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        # an unknown path (404) or method (405): the same one-line JSON shape as every error
        where = f"{request.method} {_shown(request.url.path)}"
        message = {404: f"no endpoint {where}; see /docs",
                   405: f"{where}: method not allowed"}.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": message}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first: Mapping[str, Any] = next(iter(exc.errors()), {})
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"[:300]},
                            status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        # Starlette logs the traceback; the client gets the same JSON shape as other errors.
        return JSONResponse({"error": f"internal server error ({type(exc).__name__})"},
                            status_code=500)

    def served(name: str, version: str | None = None) -> Served:
        if name != holder.name:
            raise HTTPError(404, f"unknown model {_shown(name)}; this server serves "
                                 f"'{holder.name}'")
        current = holder.current
        if current is None:
            detail = f": {holder.last_error}" if holder.last_error else ""
            raise HTTPError(503, f"model '{name}' is not loaded yet{detail}")
        if version is not None and version != str(current.version):
            raise HTTPError(404, f"version {_shown(version)} of '{name}' is not loaded; "
                                 f"serving version {current.version}")
        return current

    async def raw_body(request: Request) -> bytes:
        """The body, never more than ``max_body_bytes`` of it held: refused with 413 by its
        Content-Length before any of it is read, or as soon as a body sent without one
        (chunked) passes the limit.

        Clients that send the whole body before reading the answer (most libraries) would see
        a connection reset instead of the 413 if the connection closed with their body unread,
        so up to :data:`REFUSED_BODY_GRACE` bytes past the limit are read and dropped (by
        uvicorn, once the answer is sent, when the length was declared); beyond that the
        answer says ``Connection: close`` and the rest is never read.
        """
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"request body is {int(declared):,} bytes; the limit is "
                                 f"{limit:,} (--max-body-bytes)",
                            None if int(declared) <= limit + REFUSED_BODY_GRACE else CLOSE)
        chunks, size = [], 0
        stream = request.stream()
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
            else:
                return b"".join(chunks)
            chunks.clear()
            too_large = f"request body is over the limit of {limit:,} bytes (--max-body-bytes)"
            async for chunk in stream:  # drop the rest, up to the grace
                size += len(chunk)
                if size > limit + REFUSED_BODY_GRACE:
                    raise HTTPError(413, too_large, CLOSE)
            raise HTTPError(413, too_large)
        except ClientDisconnect:
            raise HTTPError(400, "the client closed the connection before the body "
                                 "ended") from None

    def parse_json(raw: bytes) -> Any:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise HTTPError(400, f"malformed JSON: {exc}") from None

    async def body(request: Request) -> Any:
        return parse_json(await raw_body(request))

    async def infer_body(request: Request) -> tuple[Any, bytes]:
        """The JSON header and the binary tensor data after it (binary data extension)."""
        text, blob = tensors.split_body(await raw_body(request),
                                        request.headers.get(tensors.HEADER))
        return parse_json(text), blob

    def endpoint(name: str) -> Callable[[Callable[..., Awaitable[Any]]],
                                        Callable[..., Awaitable[Any]]]:
        def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def handler(*args: Any, **kwargs: Any) -> Any:
                # RequestMetrics counts the response, whatever produced it.
                try:
                    result = await fn(*args, **kwargs)
                    return result if isinstance(result, Response) else JSONResponse(result)
                except HTTPError as exc:
                    return JSONResponse({"error": exc.message}, status_code=exc.status,
                                        headers=exc.headers)
                except BadRequestError as exc:
                    return JSONResponse({"error": str(exc)}, status_code=exc.status)
            names[handler] = name
            handler.__name__ = fn.__name__
            # FastAPI reads parameters from the signature; the result is always a Response.
            handler.__signature__ = inspect.signature(fn).replace(  # type: ignore[attr-defined]
                return_annotation=Response)
            return handler
        return wrap

    # -- Open Inference Protocol v2 ----------------------------------------------------------

    @app.get("/v2")
    async def server_metadata() -> Response:
        return JSONResponse({"name": "rankengine", "version": __version__,
                             "extensions": ["ranking", tensors.EXTENSION]})

    @app.get("/v2/health/live")
    async def live() -> Response:
        return JSONResponse({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = holder.current is not None
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2/models/{name}")
    @endpoint("metadata")
    async def model_metadata(name: str) -> Any:
        return _metadata(served(name))

    @app.get("/v2/models/{name}/versions/{version}")
    @endpoint("metadata")
    async def version_metadata(name: str, version: str) -> Any:
        return _metadata(served(name, version))

    @app.get("/v2/models/{name}/ready")
    @endpoint("ready")
    async def model_ready(name: str) -> Any:
        return {"name": name, "ready": served(name) is not None}

    @app.get("/v2/models/{name}/versions/{version}/ready")
    @endpoint("ready")
    async def version_ready(name: str, version: str) -> Any:
        return {"name": name, "ready": served(name, version) is not None}

    infer_schema = body_schema(INFER_REQUEST, INFER_RESPONSE, binary=True)

    @app.post("/v2/models/{name}/infer", openapi_extra=infer_schema)
    @endpoint("infer")
    async def infer(name: str, request: Request) -> Any:
        return await _infer(served(name), *await infer_body(request))

    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=infer_schema)
    @endpoint("infer")
    async def infer_version(name: str, version: str, request: Request) -> Any:
        return await _infer(served(name, version), *await infer_body(request))

    def authorize(request: Request) -> None:
        """The admin token as ``Authorization: Bearer <token>``: 401 without one, 403 wrong.
        Compared in constant time, as bytes (a header may hold any latin-1 text)."""
        if settings.admin_token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPError(401, "this endpoint needs the admin token: send 'Authorization: "
                                 "Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                                   settings.admin_token.encode("utf-8", "surrogateescape")):
            raise HTTPError(403, "wrong admin token")

    @app.post("/v2/repository/models/{name}/load")
    @endpoint("load")
    async def load(name: str, request: Request) -> Any:
        authorize(request)
        if name != holder.name:
            raise HTTPError(404, f"unknown model {_shown(name)}; this server serves "
                                 f"'{holder.name}'")
        try:
            current = await anyio.to_thread.run_sync(holder.load)
        except Exception as exc:
            kept = holder.current.version if holder.current else None
            raise HTTPError(409, f"loading failed, still serving version {kept}: {exc}") \
                from None
        return {"name": current.name, "version": current.version}

    async def _infer(model: Served, payload: Any, blob: bytes) -> Any:
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise BadRequestError("expected a JSON object with an 'inputs' list")
        if payload.get("parameters") is not None and not isinstance(payload["parameters"],
                                                                     dict):
            raise BadRequestError("'parameters' must be an object")
        columns: dict[str, pa.Array] = {}
        n = None
        offset = 0  # into the binary tensor data
        for i, tensor in enumerate(payload["inputs"]):
            if not isinstance(tensor, dict):
                raise BadRequestError(f"inputs[{i}]: expected an object")
            tname, shape = tensor.get("name"), tensor.get("shape")
            if not isinstance(tname, str) or not isinstance(shape, list):
                raise BadRequestError(f"inputs[{i}]: needs 'name', 'shape', 'datatype' and 'data'")
            if tname in columns:
                raise BadRequestError(f"inputs[{i}]: input {_shown(tname)} is given twice")
            datatype = tensor.get("datatype")
            if datatype is not None and not isinstance(datatype, str):
                raise BadRequestError(f"input '{tname}': 'datatype' must be a string such as "
                                      f"'FP32' or 'BYTES', found {type(datatype).__name__} "
                                      f"{datatype!r}"[:300])
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or \
                    not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                            for d in shape):
                raise BadRequestError(f"input '{tname}': shape {shape}; expected [N] or [N, 1]")
            size = tensors.binary_size(tname, tensor)
            if size is not None:
                if offset + size > len(blob):
                    raise BadRequestError(f"input '{tname}': binary_data_size {size} runs past "
                                          f"the {len(blob)} bytes of binary data")
                data: Any = tensors.decode(tname, datatype, shape[0],
                                           blob[offset:offset + size])
                offset += size
            else:
                data = tensor.get("data")
                if not isinstance(data, list):
                    raise BadRequestError(f"input '{tname}': needs 'data' (or binary data)")
                if shape[0] != len(data):
                    raise BadRequestError(f"input '{tname}': shape {shape} does not match "
                                          f"{len(data)} values; expected [N] or [N, 1]")
            if n is not None and len(data) != n:
                raise BadRequestError(f"input '{tname}': {len(data)} rows, other inputs have {n}")
            n = len(data)
            columns[tname] = column(tname, data, datatype)
        request_id = payload.get("id", "")
        if not isinstance(request_id, str):
            raise BadRequestError(f"'id' must be a string, found {type(request_id).__name__}")
        if offset != len(blob):
            raise BadRequestError(f"{len(blob) - offset} bytes of binary data belong to no "
                                  f"input (binary_data_size of the inputs add up to {offset})")
        if not n:
            raise BadRequestError("no rows to score")
        _check_size(n)
        out = await _score(model, {}, columns, n, None)
        requested = payload.get("outputs")
        if requested is None:
            selected: list[tuple[str, dict[str, Any] | None]] = [(k, None) for k in out]
        else:
            if not isinstance(requested, list) or not all(
                    isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested):
                raise BadRequestError("'outputs' must be a list of objects with a 'name'")
            for j, o in enumerate(requested):
                if o.get("parameters") is not None and not isinstance(o["parameters"], dict):
                    raise BadRequestError(f"outputs[{j}].parameters must be an object")
            unknown = [o["name"] for o in requested if o["name"] not in out]
            if unknown:
                raise BadRequestError(f"unknown output {_shown(unknown[0])}; outputs: "
                                      f"{', '.join(out)}")
            selected = [(o["name"], o) for o in requested]
        outputs, chunks = [], []
        for oname, spec in selected:
            values = out[oname].astype("<f4")
            entry: dict[str, Any] = {"name": oname, "shape": [n], "datatype": "FP32"}
            if tensors.wants_binary(payload, spec):
                chunks.append(values.tobytes())
                entry["parameters"] = {"binary_data_size": len(chunks[-1])}
            else:
                entry["data"] = values.tolist()
            outputs.append(entry)
        header = {"model_name": model.name, "model_version": str(model.version),
                  "id": request_id, "outputs": outputs}
        if not chunks:
            return header
        text = orjson.dumps(header)
        return Response(text + b"".join(chunks), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(text))})

    # -- ranking ----------------------------------------------------------------------------

    @app.post("/v1/rank", openapi_extra=body_schema(RANK_REQUEST, RANK_RESPONSE))
    @endpoint("rank")
    async def rank(request: Request) -> Any:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        model = served(holder.name)
        payload = await body(request)
        if not isinstance(payload, dict):
            raise BadRequestError("expected a JSON object with 'context' and 'candidates'")
        context = payload.get("context", {})
        candidates = payload.get("candidates")
        if not isinstance(context, dict):
            raise BadRequestError("'context' must be an object of feature values")
        sides = {f.source: f.side for f in model.loaded.config.features}
        for key, value in context.items():
            if key not in sides:
                raise BadRequestError(f"context.{_field(key)}: unknown feature; the model "
                                      f"takes: {', '.join(sorted(sides))}")
            if value is None:
                raise BadRequestError(f"context.{_field(key)}: expected a value, found null "
                                      f"(leave a feature out rather than send null)")
        item_cols, ids = _candidate_columns(candidates, sides)
        n = len(ids)
        _check_size(n)
        top_k = payload.get("top_k", n)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise BadRequestError(f"'top_k' must be a positive integer, found {top_k!r}")
        layout = payload.get("format", "rows")
        if layout not in ("rows", "columns"):
            raise BadRequestError(f"'format' must be 'rows' or 'columns', found {layout!r}")
        weights = _weights(model, payload.get("fusion_weights"))
        for key in context:
            if sides.get(key) == "item":
                raise BadRequestError(f"context.{key}: '{key}' is an item feature; send it with "
                                      f"each candidate")
        ctx = {k: column(f"context.{k}", [v]) for k, v in context.items()}
        items = {k: column(f"candidates.{k}", v) for k, v in item_cols.items()}
        timings["parse"] = time.perf_counter() - started

        def candidate(i: int) -> str:
            return f"candidates[{i}]" + ("" if ids[i] is None else f" (id {ids[i]!r})")

        out = await _score(model, ctx, items, n, weights, timings, candidate)
        respond_at = time.perf_counter()
        order = np.argsort(-out["score"], kind="stable")[:top_k]
        names = model.loaded.graph.names
        if layout == "columns":  # arrays straight to JSON: no per-candidate Python objects
            content = orjson.dumps({
                "model": model.name, "version": model.version, "index": order,
                "id": [ids[i] for i in order.tolist()], "score": out["score"][order],
                "p": {t: out[f"p_{t}"][order] for t in names},
            }, option=orjson.OPT_SERIALIZE_NUMPY)
        else:
            probs = np.stack([out[f"p_{t}"] for t in names], axis=1)[order].tolist()
            scores = out["score"][order].tolist()
            content = orjson.dumps({
                "model": model.name, "version": model.version,
                "ranked": [{"index": i, "id": ids[i], "score": s,
                            "p": dict(zip(names, p, strict=True))}
                           for i, s, p in zip(order.tolist(), scores, probs, strict=True)],
            })
        timings["respond"] = time.perf_counter() - respond_at
        timings["total"] = time.perf_counter() - started
        for stage in ("parse", "encode", "model", "respond"):
            metrics.stages.labels(stage).observe(timings[stage])
        return Response(content, media_type="application/json",
                        headers={"Server-Timing": _server_timing(timings)})

    def _check_size(n: int) -> None:
        if n > settings.max_candidates:
            raise BadRequestError(f"{n} rows to score; the limit is {settings.max_candidates}")

    def _weights(model: Served, raw: Any) -> dict[str, float] | None:
        if raw is None:
            return None
        if model.loaded.fusion.weights() is None:
            raise BadRequestError(f"fusion '{model.loaded.config.fusion.kind}' takes no weights")
        if not isinstance(raw, dict):
            raise BadRequestError("'fusion_weights' must be an object of task → weight")
        names = model.loaded.graph.names
        for task, w in raw.items():
            if task not in names:
                raise BadRequestError(f"fusion_weights.{task}: unknown task; tasks: "
                                 f"{', '.join(names)}")
            if isinstance(w, bool) or not isinstance(w, int | float) or \
                    not 0 <= w <= settings.max_fusion_weight:
                raise BadRequestError(f"fusion_weights.{task}: expected a number in "
                                 f"[0, {settings.max_fusion_weight}], found {w!r}")
        return {k: float(v) for k, v in raw.items()}

    async def _score(model: Served, ctx: dict[str, pa.Array], items: dict[str, pa.Array],
                     n: int, weights: dict[str, float] | None,
                     timings: dict[str, float] | None = None,
                     label: Callable[[int], str] = row_label) -> dict[str, np.ndarray]:
        out = await anyio.to_thread.run_sync(score, model, ctx, items, n, weights, timings,
                                             label, limiter=limiter)
        metrics.candidates.inc(n)
        return out

    @app.get("/metrics")
    async def prometheus() -> Response:
        if holder.current is not None:
            metrics.version.labels(holder.current.name).set(holder.current.version)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _server_timing(timings: dict[str, float]) -> str:
    """W3C Server-Timing: where the server spent a request, in milliseconds."""
    return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in timings.items())


def _candidate_columns(candidates: Any, sides: Mapping[str, str]
                       ) -> tuple[dict[str, list[Any]], list[Any]]:
    """Candidates as feature columns plus their ids (``None`` where a candidate has none).

    Accepts a list of objects or an object of equally long columns; the common case (every
    candidate has the same keys) is one pass per key, no per-candidate checks in Python.
    """
    if isinstance(candidates, dict):
        columns = dict(candidates)
        lengths = {len(v) for v in columns.values() if isinstance(v, list)}
        if not columns or len(lengths) != 1 or \
                not all(isinstance(v, list) for v in columns.values()):
            raise BadRequestError("columnar 'candidates' must map every feature to a list, all "
                                  "of the same length")
        n = lengths.pop()
        if not n:
            raise BadRequestError("'candidates' is empty")
        ids = columns.pop("id", [None] * n)
    elif isinstance(candidates, list) and candidates:
        first = candidates[0]
        if not isinstance(first, dict):
            raise BadRequestError("candidates[0]: expected an object")
        keys = first.keys()
        if all(isinstance(c, dict) and c.keys() == keys for c in candidates):
            columns = {k: [c[k] for c in candidates] for k in keys}
        else:
            _explain_ragged(candidates, keys, sides)  # raises unless only some ids are absent
            columns = {k: [c.get(k) for c in candidates] for k in {*keys, "id"}}
        ids = columns.pop("id", None) or [None] * len(candidates)
    else:
        raise BadRequestError("'candidates' must be a non-empty list of objects (or an object "
                              "of equally long columns)")
    nested = next((i for i, x in enumerate(ids) if isinstance(x, dict | list | bool)), None)
    if nested is not None:
        raise BadRequestError(f"candidates[{nested}].id: expected a string or a number, found "
                              f"{type(ids[nested]).__name__}")
    for key, values in columns.items():
        if key not in sides:
            raise BadRequestError(f"candidates.{_field(key)}: unknown feature; the model takes: "
                                  f"{', '.join(sorted(sides))}")
        if sides.get(key) == "context":
            raise BadRequestError(f"candidates.{key}: '{key}' is a context feature; send it "
                                  f"once in 'context'")
        if None in values:
            raise BadRequestError(f"candidates[{values.index(None)}]: missing feature '{key}'")
    return columns, ids


def _explain_ragged(candidates: list[Any], keys: Any, sides: Mapping[str, str]) -> None:
    """Name the first candidate that is not an object, has a feature the model does not take
    or lacks a feature another one has."""
    for i, cand in enumerate(candidates):
        if not isinstance(cand, dict):
            raise BadRequestError(f"candidates[{i}]: expected an object")
        unknown = next((k for k in cand if k != "id" and k not in sides), None)
        if unknown is not None:
            raise BadRequestError(f"candidates[{i}].{_field(unknown)}: unknown feature; the "
                                  f"model takes: {', '.join(sorted(sides))}")
    features = set(keys) | {k for c in candidates for k in c}
    features.discard("id")
    for i, cand in enumerate(candidates):
        absent = sorted(features - set(cand))
        if absent:
            raise BadRequestError(f"candidates[{i}]: missing feature '{absent[0]}'")


def _shown(text: str, limit: int = 80) -> str:
    """A client's string quoted for an error message, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} chars)"


def _field(key: str, limit: int = 80) -> str:
    """A client's key in a field path of an error message, cut to ``limit`` characters."""
    return key if len(key) <= limit else f"{key[:limit]}... ({len(key):,} chars)"


def _metadata(model: Served) -> dict[str, Any]:
    graph = model.loaded.graph
    pipeline = model.loaded.pipeline  # each input's datatype is its encoder's to say
    return {
        "name": model.name, "versions": [str(model.version)], "platform": "rankengine",
        "inputs": [{"name": f.source, "shape": [-1], "datatype": encoder.raw_datatype,
                    "parameters": {"side": f.side, "kind": f.kind}}
                   for f, encoder in zip(pipeline.features, pipeline.encoders, strict=True)],
        "outputs": [{"name": f"p_{t}", "shape": [-1], "datatype": "FP32"} for t in graph.names]
        + [{"name": "score", "shape": [-1], "datatype": "FP32"}],
    }
