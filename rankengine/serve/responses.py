"""What every answer looks like: JSON bodies, and every error as one line ``{"error": ...}``.

:func:`endpoint` wraps a route handler: its result becomes a JSON response and the errors it
raises (:class:`HTTPError`, the scorer's :class:`BadRequestError`) their status with the
message; it also names the endpoint for the request metrics (:data:`ENDPOINTS`). The exception
handlers give unknown paths, bad path parameters and bugs the same one-line shape.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rankengine.errors import RankEngineError
from rankengine.serve.scoring import BadRequestError

Handler = Callable[..., Awaitable[Any]]

#: handler → endpoint label of the request metrics (``rank``, ``infer``, ...), filled by
#: :func:`endpoint` as the route modules are imported
ENDPOINTS: dict[Any, str] = {}


class JSONResponse(Response):
    """orjson-encoded JSON (numpy-free, fast); FastAPI's own JSONResponse is deprecated."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class HTTPError(RankEngineError):
    """An answer other than 200 decided by the server itself (404 unknown model, 503 still
    loading, 413 body too large, 401/403 on the repository API), with its headers."""

    def __init__(self, status: int, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


def endpoint(name: str) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
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
        ENDPOINTS[handler] = name
        handler.__name__ = fn.__name__
        # FastAPI reads parameters from the signature; the result is always a Response. The
        # annotations are resolved here, in fn's module: FastAPI would look them up in this one.
        handler.__signature__ = inspect.signature(  # type: ignore[attr-defined]
            fn, eval_str=True).replace(return_annotation=Response)
        return handler
    return wrap


def shown(text: str, limit: int = 80) -> str:
    """A client's string quoted for an error message, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} chars)"


async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
    # an unknown path (404) or method (405): the same one-line JSON shape as every error
    where = f"{request.method} {shown(request.url.path)}"
    message = {404: f"no endpoint {where}; see /docs",
               405: f"{where}: method not allowed"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": message}, status_code=exc.status_code,
                        headers=exc.headers)


async def validation_error(_: Request, exc: RequestValidationError) -> Response:
    first: Mapping[str, Any] = next(iter(exc.errors()), {})
    where = ".".join(str(p) for p in first.get("loc", ()))
    return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"[:300]},
                        status_code=400)


async def internal_error(_: Request, exc: Exception) -> Response:
    # Starlette logs the traceback; the client gets the same JSON shape as other errors.
    return JSONResponse({"error": f"internal server error ({type(exc).__name__})"},
                        status_code=500)
