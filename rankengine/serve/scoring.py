"""Request payloads → encoded arrays → predictions, with errors that name the field.

The predictions become outputs through :func:`rankengine.scoring.named_outputs`, as in every
other command."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

# BadRequestError / UnscorableError: imported from here by the server's routes
from rankengine.errors import BadRequestError as BadRequestError
from rankengine.errors import DataError, one_line
from rankengine.errors import UnscorableError as UnscorableError
from rankengine.scoring import named_outputs
from rankengine.serve.holder import Served


def row_label(i: int) -> str:
    return f"row {i}"


DATATYPES = {
    "BOOL": pa.bool_(), "INT8": pa.int64(), "INT16": pa.int64(), "INT32": pa.int64(),
    "INT64": pa.int64(), "UINT8": pa.int64(), "UINT16": pa.int64(), "UINT32": pa.int64(),
    "UINT64": pa.int64(), "FP16": pa.float64(), "FP32": pa.float64(), "FP64": pa.float64(),
    "BYTES": pa.string(),
}


INTEGERS = {name: np.iinfo(name.lower()) for name in
            ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")}
FLOATS: dict[str, float] = {"FP16": float(np.finfo(np.float16).max),
                           "FP32": float(np.finfo(np.float32).max)}


def column(name: str, values: Sequence[Any], datatype: str | None = None) -> pa.Array:
    """A request column as pyarrow, checked column-wise (no per-value Python on the happy path):
    nested values, mixed types, NaN and infinity are refused, and so are values the declared
    ``datatype`` cannot hold (300 as INT8, 1.5 as INT64, -1 as UINT64, 1e10 as FP16)."""
    if datatype is not None and datatype not in DATATYPES:
        raise BadRequestError(f"{name}: unknown datatype '{datatype}'; expected one of "
                              f"{', '.join(DATATYPES)}")
    try:
        # integers are inferred first: pyarrow would truncate 16.5 to 16 if asked for int64
        array = pa.array(values, type=DATATYPES[datatype] if datatype and datatype not in
                         INTEGERS else None)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        expected = datatype or "one type for every value"
        if datatype in INTEGERS:
            row = next((i for i, v in enumerate(values)
                        if isinstance(v, int) and not -2**63 <= v < 2**63), None)
            if row is not None:
                raise BadRequestError(f"{name}[{row}]: {values[row]} does not fit in "
                                      f"{datatype} (feature columns are int64)") from None
        raise BadRequestError(f"{name}: values do not match {expected}: {exc}"[:300]) from None
    kind = array.type
    if (pa.types.is_floating(kind) or pa.types.is_integer(kind)) and len(array) and \
            any(type(v) is bool for v in values):
        row = next(i for i, v in enumerate(values) if type(v) is bool)
        raise BadRequestError(f"{name}[{row}]: expected a number, found "
                              f"{str(values[row]).lower()}")
    if datatype in INTEGERS:
        array = _integers(name, values, array, datatype)
        kind = array.type
    elif datatype in FLOATS and pa.types.is_floating(kind):
        limit = FLOATS[datatype]
        numbers = array.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(np.isfinite(numbers) & (np.abs(numbers) > limit))
        if len(bad):
            raise BadRequestError(f"{name}[{bad[0]}]: {values[bad[0]]} does not fit in "
                                  f"{datatype} (largest finite value {limit:g})")
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


def list_column(name: str, values: Sequence[Any]) -> pa.Array:
    """A request column of lists (a behaviour sequence: ids, or numbers such as time gaps),
    each a list of strings or numbers; a row's list may be empty. A string joined by the
    feature's separator is accepted as it is. Nested values, nulls, booleans and non-finite
    numbers are refused naming the row and element."""
    if all(isinstance(v, str) for v in values):
        return pa.array(values, pa.string())
    for row, value in enumerate(values):
        if not isinstance(value, list):
            raise BadRequestError(f"{name}[{row}]: expected a list of ids, found "
                                  f"{'null' if value is None else type(value).__name__}")
        for i, element in enumerate(value):
            if element is None or isinstance(element, bool | dict | list) or \
                    not isinstance(element, str | int | float):
                found = "null" if element is None else type(element).__name__
                raise BadRequestError(f"{name}[{row}][{i}]: expected a string or a number, "
                                      f"found {found}")
            if isinstance(element, float) and not np.isfinite(element):
                raise BadRequestError(f"{name}[{row}][{i}]: {element} is not a finite number")
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise BadRequestError(f"{name}: expected lists of one type (all strings or all "
                              f"numbers): {exc}"[:300]) from None


def _integers(name: str, values: Sequence[Any], array: pa.Array, datatype: str) -> pa.Array:
    """``array`` (inferred from ``values``) as int64, refusing what ``datatype`` cannot hold."""
    kind = array.type
    if pa.types.is_null(kind):
        return array.cast(pa.int64())
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        row = next((i for i, v in enumerate(values)
                    if v is not None and not isinstance(v, int | float)), 0)
        raise BadRequestError(f"{name}[{row}]: {values[row]!r}"[:200] +
                              f" is not an integer (datatype {datatype})")
    numbers = array.to_numpy(zero_copy_only=False)
    info = INTEGERS[datatype]
    valid = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    if pa.types.is_floating(kind):
        with np.errstate(invalid="ignore"):
            valid_numbers = np.where(valid, numbers, 0)
            bad = np.flatnonzero(valid & ((valid_numbers != np.floor(valid_numbers)) |
                                          ~np.isfinite(valid_numbers)))
        if len(bad):
            raise BadRequestError(f"{name}[{bad[0]}]: {values[bad[0]]} is not a whole number; "
                                  f"datatype {datatype} holds integers")
    lo, hi = int(info.min), min(int(info.max), 2**63 - 1)  # feature columns are int64
    if numbers.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            out = (numbers < lo) | (numbers >= 2.0**63) | (numbers > hi)
    else:
        own = np.iinfo(numbers.dtype)
        out = np.zeros(len(numbers), dtype=bool)
        if lo > own.min:
            out |= numbers < lo
        if hi < own.max:
            out |= numbers > hi
    bad = np.flatnonzero(valid & out)
    if len(bad):
        raise BadRequestError(f"{name}[{bad[0]}]: {values[bad[0]]} does not fit in {datatype} "
                              f"({lo}..{hi})")
    try:
        return array.cast(pa.int64())
    except (pa.ArrowInvalid, OverflowError) as exc:
        raise BadRequestError(f"{name}: values do not fit in int64: {exc}"[:300]) from None


#: Raw datatypes of numbers: booleans sent for such a feature are refused, not read as 0/1.
NUMBER_DATATYPES = frozenset({"FP32", "FP64", "INT64", "INT32"})


def _name_failure(pipeline: Any, table: pa.Table, names: Sequence[str], where: str,
                  exc: Exception) -> str:
    """The message of an encoder failure that does not say which feature failed: each feature
    is encoded alone (this runs on the error path only) until one fails."""
    for feature in names:
        try:
            pipeline.encode(table, [feature], where=where)
        except Exception as own:
            return f"{where}: feature '{feature}' cannot be encoded: {own}"[:500]
    return f"{where}: the features cannot be encoded: {exc}"[:500]


def score(served: Served, context: Mapping[str, pa.Array], items: Mapping[str, pa.Array],
          n: int, weights: Mapping[str, float] | None = None,
          timings: dict[str, float] | None = None,
          label: Callable[[int], str] = row_label) -> dict[str, np.ndarray]:
    """Encode the context once (1 row) and the items (n rows), predict, fuse. Context
    sequences stay one row: the model pools and encodes them once for all candidates.

    ``timings`` (if given) receives the seconds spent encoding the context (``context``), the
    candidates (``candidates``) and in the model (``model``). A row whose
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
    numbers = [f for f, encoder in zip(loaded.pipeline.features, loaded.pipeline.encoders,
                                       strict=True) if encoder.raw_datatype in NUMBER_DATATYPES]
    for where, columns in (("context", context), ("candidates", items)):
        for f in numbers:
            if f.source in columns and pa.types.is_boolean(columns[f.source].type):
                raise BadRequestError(f"{where}.{f.source}: expected numbers for {f.kind} "
                                      f"feature '{f.name}', found booleans")
    pipeline = loaded.pipeline
    encoded = {f.name: pipeline.placeholder(f.name) for f in features
               if f.name in bias_only and f.source not in given}
    stage_started = started
    for where, columns in (("context", context), ("candidates", items)):
        if not columns:
            continue
        names = [f.name for f in features if f.source in columns]
        table = pa.table(dict(columns))
        try:
            encoded.update(pipeline.encode(table, names, where=where))
        except DataError as exc:  # names the feature
            raise BadRequestError(str(exc)) from None
        except Exception as exc:  # an encoder's own failure: find the feature it concerns
            raise BadRequestError(_name_failure(pipeline, table, names, where, exc)) from None
        if timings is not None:  # the context is encoded once, on its one row
            now = time.perf_counter()
            timings[where] = now - stage_started
            stage_started = now
    categorical, dense, sequences = pipeline.assemble(encoded, n)
    encoded_at = time.perf_counter()
    entire, conditional = served.predict(categorical, dense, sequences)
    fusion = loaded.fusion
    if weights:
        try:
            fusion = fusion.with_weights(weights)
        except ValueError as exc:  # checked by the request parser; a plugin may refuse more
            raise BadRequestError(f"fusion_weights: {one_line(str(exc))}") from None
    # a NaN score sorts nowhere: such a candidate is a 422 naming it
    out = named_outputs(loaded.graph, fusion, entire, conditional, label=label,
                        error=UnscorableError)
    if timings is not None:
        timings.setdefault("context", 0.0)
        timings["candidates"] = timings.get("candidates", 0.0) + encoded_at - stage_started
        timings["model"] = time.perf_counter() - encoded_at
    return out

