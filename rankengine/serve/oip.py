"""Open Inference Protocol v2: server and model metadata, health, inference (with the binary
tensor data extension) and the repository's load endpoint behind the admin token."""

from __future__ import annotations

import hmac
from typing import Any

import anyio
import orjson
import pyarrow as pa
from fastapi import APIRouter, Request
from fastapi.responses import Response

from rankengine.serve import tensors
from rankengine.serve.bodies import infer_body
from rankengine.serve.holder import Served
from rankengine.serve.responses import HTTPError, JSONResponse, endpoint, shown
from rankengine.serve.schema import INFER_REQUEST, INFER_RESPONSE
from rankengine.serve.schema import body as body_schema
from rankengine.serve.scoring import BadRequestError, column
from rankengine.serve.settings import ServeSettings
from rankengine.serve.state import ServerState, server_state
from rankengine.version import __version__

router = APIRouter()


@router.get("/v2")
async def server_metadata() -> Response:
    return JSONResponse({"name": "rankengine", "version": __version__,
                         "extensions": ["ranking", tensors.EXTENSION]})


@router.get("/v2/health/live")
async def live() -> Response:
    return JSONResponse({"live": True})


@router.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    ok = server_state(request).holder.current is not None
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/v2/models/{name}")
@endpoint("metadata")
async def model_metadata(name: str, request: Request) -> Any:
    return _metadata(server_state(request).served(name))


@router.get("/v2/models/{name}/versions/{version}")
@endpoint("metadata")
async def version_metadata(name: str, version: str, request: Request) -> Any:
    return _metadata(server_state(request).served(name, version))


@router.get("/v2/models/{name}/ready")
@endpoint("ready")
async def model_ready(name: str, request: Request) -> Any:
    return {"name": name, "ready": server_state(request).served(name) is not None}


@router.get("/v2/models/{name}/versions/{version}/ready")
@endpoint("ready")
async def version_ready(name: str, version: str, request: Request) -> Any:
    return {"name": name, "ready": server_state(request).served(name, version) is not None}


INFER_SCHEMA = body_schema(INFER_REQUEST, INFER_RESPONSE, binary=True)


@router.post("/v2/models/{name}/infer", openapi_extra=INFER_SCHEMA)
@endpoint("infer")
async def infer(name: str, request: Request) -> Any:
    state = server_state(request)
    model = state.served(name)
    return await _infer(state, model,
                        *await infer_body(request, state.settings.max_body_bytes))


@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=INFER_SCHEMA)
@endpoint("infer")
async def infer_version(name: str, version: str, request: Request) -> Any:
    state = server_state(request)
    model = state.served(name, version)
    return await _infer(state, model,
                        *await infer_body(request, state.settings.max_body_bytes))


def authorize(request: Request, settings: ServeSettings) -> None:
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


@router.post("/v2/repository/models/{name}/load")
@endpoint("load")
async def load(name: str, request: Request) -> Any:
    state = server_state(request)
    holder = state.holder
    authorize(request, state.settings)
    if name != holder.name:
        raise HTTPError(404, f"unknown model {shown(name)}; this server serves "
                             f"'{holder.name}'")
    try:
        current = await anyio.to_thread.run_sync(holder.load)
    except Exception as exc:
        kept = holder.current.version if holder.current else None
        raise HTTPError(409, f"loading failed, still serving version {kept}: {exc}") \
            from None
    return {"name": current.name, "version": current.version}


async def _infer(state: ServerState, model: Served, payload: Any, blob: bytes) -> Any:
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise BadRequestError("expected a JSON object with an 'inputs' list")
    if payload.get("parameters") is not None and not isinstance(payload["parameters"], dict):
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
            raise BadRequestError(f"inputs[{i}]: input {shown(tname)} is given twice")
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
            data: Any = tensors.decode(tname, datatype, shape[0], blob[offset:offset + size])
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
    state.check_size(n)
    out = await state.score(model, {}, columns, n, None)
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
            raise BadRequestError(f"unknown output {shown(unknown[0])}; outputs: "
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
