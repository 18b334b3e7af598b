"""``POST /v1/rank``: a context and its candidates in, the candidates ranked by the fused score
out (as rows or columns), with where the time went in ``Server-Timing``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from rankengine.serve.bodies import body
from rankengine.serve.holder import Served
from rankengine.serve.responses import endpoint
from rankengine.serve.schema import RANK_REQUEST, RANK_RESPONSE
from rankengine.serve.schema import body as body_schema
from rankengine.serve.scoring import BadRequestError, column, list_column
from rankengine.serve.settings import ServeSettings
from rankengine.serve.state import server_state

router = APIRouter()


@router.post("/v1/rank", openapi_extra=body_schema(RANK_REQUEST, RANK_RESPONSE))
@endpoint("rank")
async def rank(request: Request) -> Any:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    state = server_state(request)
    model = state.served(state.holder.name)
    payload = await body(request, state.settings.max_body_bytes)
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
    state.check_size(n)
    top_k = payload.get("top_k", n)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise BadRequestError(f"'top_k' must be a positive integer, found {top_k!r}")
    layout = payload.get("format", "rows")
    if layout not in ("rows", "columns"):
        raise BadRequestError(f"'format' must be 'rows' or 'columns', found {layout!r}")
    weights = _weights(model, payload.get("fusion_weights"), state.settings)
    for key in context:
        if sides.get(key) == "item":
            raise BadRequestError(f"context.{key}: '{key}' is an item feature; send it with "
                                  f"each candidate")
    lists = model.loaded.pipeline.list_sources

    def parsed(name: str, key: str, values: list[Any]) -> Any:
        return (list_column if key in lists else column)(f"{name}.{key}", values)

    ctx = {k: parsed("context", k, [v]) for k, v in context.items()}
    items = {k: parsed("candidates", k, v) for k, v in item_cols.items()}
    timings["parse"] = time.perf_counter() - started

    def candidate(i: int) -> str:
        return f"candidates[{i}]" + ("" if ids[i] is None else f" (id {ids[i]!r})")

    out = await state.score(model, ctx, items, n, weights, timings, candidate)
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
    for stage in ("parse", "context", "candidates", "model", "respond"):
        state.metrics.stages.labels(stage).observe(timings[stage])
    return Response(content, media_type="application/json",
                    headers={"Server-Timing": _server_timing(timings)})


def _weights(model: Served, raw: Any, settings: ServeSettings) -> dict[str, float] | None:
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


def _field(key: str, limit: int = 80) -> str:
    """A client's key in a field path of an error message, cut to ``limit`` characters."""
    return key if len(key) <= limit else f"{key[:limit]}... ({len(key):,} chars)"
