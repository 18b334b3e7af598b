"""Request bodies: read under the size limit, then parsed as JSON (and binary tensor data)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.requests import ClientDisconnect

from rankengine.serve import tensors
from rankengine.serve.responses import HTTPError

REFUSED_BODY_GRACE = 1 << 20  # bytes past --max-body-bytes read (and dropped) before closing
CLOSE = {"Connection": "close"}


async def raw_body(request: Request, limit: int) -> bytes:
    """The body, never more than ``limit`` (``--max-body-bytes``) of it held: refused with 413
    by its Content-Length before any of it is read, or as soon as a body sent without one
    (chunked) passes the limit.

    Clients that send the whole body before reading the answer (most libraries) would see
    a connection reset instead of the 413 if the connection closed with their body unread,
    so up to :data:`REFUSED_BODY_GRACE` bytes past the limit are read and dropped (by
    uvicorn, once the answer is sent, when the length was declared); beyond that the
    answer says ``Connection: close`` and the rest is never read.
    """
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


async def body(request: Request, limit: int) -> Any:
    """The body as JSON."""
    return parse_json(await raw_body(request, limit))


async def infer_body(request: Request, limit: int) -> tuple[Any, bytes]:
    """The JSON header and the binary tensor data after it (binary data extension)."""
    text, blob = tensors.split_body(await raw_body(request, limit),
                                    request.headers.get(tensors.HEADER))
    return parse_json(text), blob
