"""Request payloads → encoded arrays → predictions, with errors that name the field."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from rankengine.serve.holder import Served


class BadRequestError(Exception):
    """A client mistake: answered with ``status`` (400) and this message."""

    status = 400


class UnscorableError(BadRequestError):
    """A well-formed request the model cannot score: some prediction or the fused score of a
    candidate is not a finite number (extreme feature values). Answered with 422."""

    status = 422


def row_label(i: int) -> str:
    return f"row {i}"


def check_finite(out: Mapping[str, np.ndarray], label: Callable[[int], str] = row_label,
                 error: type[Exception] = UnscorableError) -> None:
    """Raise ``error`` naming the first row (by ``label``) whose outputs are not all finite,
    and the output: a NaN score sorts nowhere and is written as null in JSON."""
    if not out:
        return
    finite = np.ones(len(next(iter(out.values()))), dtype=bool)
    for values in out.values():
        finite &= np.isfinite(values)
    if finite.all():
        return
    row = int(np.flatnonzero(~finite)[0])
    name = next(k for k, v in out.items() if not np.isfinite(v[row]))
    raise error(f"{label(row)}: its {name} is {float(out[name][row])}, not a finite number; "
                f"check its feature values for extreme numbers")


DATATYPES = {
    "BOOL": pa.bool_(), "INT8": pa.int64(), "INT16": pa.int64(), "INT32": pa.int64(),
    "INT64": pa.int64(), "UINT8": pa.int64(), "UINT16": pa.int64(), "UINT32": pa.int64(),
    "UINT64": pa.int64(), "FP16": pa.float64(), "FP32": pa.float64(), "FP64": pa.float64(),
    "BYTES": pa.string(),
}


def column(name: str, values: Sequence[Any], datatype: str | None = None) -> pa.Array:
    """A request column as pyarrow, checked column-wise (no per-value Python on the happy path):
    nested values, mixed types, NaN and infinity are refused."""
    if datatype is not None and datatype not in DATATYPES:
        raise BadRequestError(f"{name}: unknown datatype '{datatype}'; expected one of "
                              f"{', '.join(DATATYPES)}")
    try:
        array = pa.array(values, type=DATATYPES[datatype] if datatype else None)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        expected = datatype or "one type for every value"
        raise BadRequestError(f"{name}: values do not match {expected}: {exc}") from None
    kind = array.type
    if pa.types.is_nested(kind) or pa.types.is_struct(kind):
        row = next(i for i, v in enumerate(values) if isinstance(v, dict | list))
        raise BadRequestError(f"{name}[{row}]: expected a scalar, found "
                              f"{type(values[row]).__name__}")
    if pa.types.is_floating(kind):
        bad = np.flatnonzero(~np.isfinite(array.to_numpy(zero_copy_only=False)) &
                             ~np.asarray(array.is_null().to_numpy(zero_copy_only=False)))
        if len(bad):
            raise BadRequestError(f"{name}[{bad[0]}]: {values[bad[0]]} is not a finite number")
    return array


def score(served: Served, context: Mapping[str, pa.Array], items: Mapping[str, pa.Array],
          n: int, weights: Mapping[str, float] | None = None,
          timings: dict[str, float] | None = None,
          label: Callable[[int], str] = row_label) -> dict[str, np.ndarray]:
    """Encode the context once (1 row) and the items (n rows), broadcast, predict, fuse.

    ``timings`` (if given) receives the seconds spent encoding and in the model. A row whose
    predictions or fused score are not all finite is an :class:`UnscorableError` naming it
    by ``label`` (whatever the back end).
    """
    started = time.perf_counter()
    loaded = served.loaded
    features = loaded.config.features
    expected = {f.source for f in features}
    given = set(context) | set(items)
    unknown = sorted(given - expected)
    if unknown:
        raise BadRequestError(f"unknown feature '{unknown[0]}'; the model takes: "
                         f"{', '.join(sorted(expected))}")
    bias_only = set(loaded.config.model.bias_only_features(features))
    optional = {f.source for f in features if f.name in bias_only}
    missing = sorted(expected - given - optional)
    if missing:
        raise BadRequestError(f"missing required feature '{missing[0]}'")
    pipeline = loaded.pipeline
    try:
        encoded = {f.name: pipeline.placeholder(f.name) for f in features
                   if f.name in bias_only and f.source not in given}
        if context:
            encoded.update(pipeline.encode(pa.table(dict(context)),
                                           [f.name for f in features if f.source in context],
                                           where="context"))
        if items:
            encoded.update(pipeline.encode(pa.table(dict(items)),
                                           [f.name for f in features if f.source in items],
                                           where="candidates"))
    except Exception as exc:  # encoders raise DataError naming the feature
        raise BadRequestError(str(exc)) from None
    categorical, dense, sequences = pipeline.assemble(encoded, n)
    encoded_at = time.perf_counter()
    entire, conditional = served.predict(categorical, dense, sequences)
    fusion = loaded.fusion
    if weights:
        fusion = type(fusion)(loaded.graph.names,
                              fusion.params.model_copy(update={"weights": dict(weights)}))
    with torch.inference_mode():
        fused = fusion(torch.from_numpy(entire)).numpy()
    out = {f"p_{name}": entire[:, i] for i, name in enumerate(loaded.graph.names)}
    for i, name in enumerate(loaded.graph.names):
        if loaded.graph.parent_index[i] >= 0:
            out[f"pc_{name}"] = conditional[:, i]
    out["score"] = fused
    check_finite(out, label)
    if timings is not None:
        timings["encode"] = encoded_at - started
        timings["model"] = time.perf_counter() - encoded_at
    return out
