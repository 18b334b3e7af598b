"""Feature encoders: categorical (vocabulary or hash buckets), numeric, bucketize, sequence.

All transforms are vectorised with pyarrow compute / numpy; values unseen in training go to an
out-of-vocabulary id (0 for categorical, 1 for sequences, where 0 is padding).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from rankengine import (
    DataError,
    EncoderFactory,
    FeatureEncoder,
    FeatureSpec,
    Params,
    Register,
    hookimpl,
)


@hookimpl
def rankengine_register_encoders(
    register: Register[EncoderFactory],
) -> None:
    register("categorical", CategoricalEncoder, params=CategoricalParams,
             help="vocabulary with min_count and an OOV id, or hash_buckets")
    register("numeric", NumericEncoder, params=NumericParams,
             help="float input: standardize / log1p / none, missing values imputed or refused")
    register("bucketize", BucketizeEncoder, params=BucketizeParams,
             help="numeric value → quantile bucket id (embedded like a categorical)")
    register("sequence", SequenceEncoder, params=SequenceParams,
             help="list (or delimited string) of ids → padded ids, pooled in the model or "
                  "read by an interaction; share_with reuses an ids feature's table")
    register("sequence_bucketize", SequenceBucketizeEncoder, params=SequenceBucketizeParams,
             help="list of numbers (time since each behaviour) → bucket ids, aligned with a "
                  "behaviour sequence")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def decoded(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as a chunked array of plain values: a dictionary-encoded column (pandas
    categoricals in Parquet) is decoded, a column of Arrow type ``null`` (an all-empty CSV
    column, a header-only file) is all missing."""
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    if pa.types.is_dictionary(values.type):
        values = pc.cast(values, values.type.value_type)
    return values


def is_scalar(data_type: pa.DataType) -> bool:
    """A type one value of which is one category / number (not a list, struct, map ...)."""
    if pa.types.is_dictionary(data_type):
        return is_scalar(data_type.value_type)
    return not (pa.types.is_nested(data_type) or isinstance(data_type, pa.ExtensionType))


def as_strings(values: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Values as strings, so vocabularies do not depend on int vs string typing of a column."""
    values = decoded(values)
    if pa.types.is_string(values.type):
        return values
    if not is_scalar(values.type):
        hint = "; use kind = \"sequence\" for a list column" if pa.types.is_list(
            values.type) or pa.types.is_large_list(values.type) else ""
        raise DataError(f"expected one value per row (a string or a number), found type "
                        f"{values.type}{hint}")
    if pa.types.is_null(values.type):
        return pc.cast(values, pa.string())
    if pa.types.is_floating(values.type):
        # 3.0 and 3 must be the same category: integral floats are written without ".0".
        as_int = pc.cast(values, pa.int64(), safe=False)
        integral = pc.equal(pc.cast(as_int, pa.float64()), values)
        return pc.if_else(integral, pc.cast(as_int, pa.string()), pc.cast(values, pa.string()))
    return pc.cast(values, pa.string())


def fit_vocabulary(values: pa.ChunkedArray, min_count: int, max_vocab: int | None) -> list[str]:
    """Values seen at least ``min_count`` times, most frequent first (ties by value)."""
    counted = pc.value_counts(as_strings(values).drop_null())
    table = pa.table({"value": counted.field("values"), "count": counted.field("counts")})
    table = table.filter(pc.greater_equal(table["count"], min_count))
    table = table.sort_by([("count", "descending"), ("value", "ascending")])
    vocab: list[str] = table["value"].to_pylist()
    return vocab[:max_vocab] if max_vocab is not None else vocab


def lookup(values: pa.ChunkedArray, vocabulary: pa.Array, first_id: int,
           integers: pa.Array | None = None) -> np.ndarray:
    """Vocabulary position + ``first_id``; unknown or missing values → ``first_id - 1``.

    ``integers`` is the same vocabulary as int64 where every entry is an integer: integer
    columns are then looked up as they are, without formatting each value as a string.
    """
    if integers is not None and pa.types.is_integer(values.type):
        index = pc.index_in(values, value_set=integers)
    else:
        index = pc.index_in(as_strings(values), value_set=vocabulary)
    if index.null_count:  # unknown values: fill_null costs as much as the lookup itself
        index = pc.fill_null(index, -1)
    return np.asarray(index.to_numpy(), dtype=np.int64) + first_id


def integer_vocabulary(vocabulary: pa.Array) -> pa.Array | None:
    """The vocabulary as int64 when every entry is an integer written canonically ("7", not
    "07", "+7" or "7.0"), else None. Vectorised: vocabularies of millions load fast."""
    try:
        integers = pc.cast(vocabulary, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    canonical = pc.all(pc.equal(pc.cast(integers, pa.string()), vocabulary)).as_py()
    return integers if canonical is not False else None


def state_number(state: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    """``state[key]`` as a finite float (a fitted state read back from an artifact)."""
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) \
            or (positive and value <= 0):
        expected = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"'{key}' must be {expected}, found {value!r}")
    return float(value)


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def to_float(column: pa.ChunkedArray) -> np.ndarray:
    """Column as float64 with NaN for missing; a non-numeric value is an error naming the row."""
    column = decoded(column)
    if pa.types.is_null(column.type):  # every value missing
        return np.full(len(column), np.nan)
    if pa.types.is_boolean(column.type) or pa.types.is_integer(column.type) or \
            pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
        return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False),
                          dtype=np.float64)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            return np.asarray(pc.cast(pc.utf8_trim_whitespace(column), pa.float64())
                              .to_numpy(zero_copy_only=False), dtype=np.float64)
        except pa.ArrowInvalid:
            for row, value in enumerate(column.to_pylist()):  # error path only
                try:
                    float(value) if value is not None else None
                except ValueError:
                    raise DataError(
                        f"expected numbers, but row {row} holds {value!r} (a string); "
                        f"fix the data or declare the feature as kind = \"categorical\""
                    ) from None
            raise
    raise DataError(f"expected a numeric column, found type {column.type}")


# --------------------------------------------------------------------------------------------
# categorical
# --------------------------------------------------------------------------------------------


class CategoricalParams(Params):
    min_count: int = Field(default=1, ge=1)
    max_vocab: int | None = Field(default=None, ge=1)
    hash_buckets: int | None = Field(default=None, ge=1, le=50_000_000)


class VocabularyEncoder(FeatureEncoder):
    """Shared by encoders whose fitted state is a vocabulary of strings."""

    def __init__(self, feature: FeatureSpec, params: Any) -> None:
        super().__init__(feature, params)
        self.set_vocabulary([])

    def set_vocabulary(self, vocabulary: list[str]) -> None:
        self.vocabulary = vocabulary
        self._vocab_array = pa.array(vocabulary, pa.string())
        self._vocab_integers = integer_vocabulary(self._vocab_array)

    def state(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary}

    def load_state(self, state: Mapping[str, Any]) -> None:
        vocabulary = state["vocabulary"]
        if not isinstance(vocabulary, list) or not all(isinstance(v, str) for v in vocabulary):
            bad = vocabulary if not isinstance(vocabulary, list) else next(
                v for v in vocabulary if not isinstance(v, str))
            raise ValueError(f"'vocabulary' must be a list of strings, found {bad!r}")
        self.set_vocabulary(vocabulary)


class CategoricalEncoder(VocabularyEncoder):
    """Id 0 is the OOV / missing bucket; known values get 1..V (or hash buckets 1..H)."""

    output = "ids"
    params: CategoricalParams

    def fit(self, column: pa.ChunkedArray) -> None:
        if self.params.hash_buckets is None:
            self.set_vocabulary(
                fit_vocabulary(column, self.params.min_count, self.params.max_vocab))

    def transform(self, column: pa.ChunkedArray) -> np.ndarray:
        buckets = self.params.hash_buckets
        if buckets is None:
            return lookup(column, self._vocab_array, 1, self._vocab_integers)
        encoded = pc.dictionary_encode(as_strings(column)).combine_chunks()
        # Hash each distinct value once, then broadcast through the dictionary indices.
        uniques = encoded.dictionary.to_pylist()
        bucket_of = np.array([1 + stable_hash(v) % buckets for v in uniques] or [0], np.int64)
        indices = np.asarray(pc.fill_null(encoded.indices, -1).to_numpy(), dtype=np.int64)
        return np.where(indices < 0, 0, bucket_of[np.maximum(indices, 0)])

    @property
    def cardinality(self) -> int:
        if self.params.hash_buckets is not None:
            return self.params.hash_buckets + 1
        return len(self.vocabulary) + 1


# --------------------------------------------------------------------------------------------
# numeric
# --------------------------------------------------------------------------------------------


class NumericParams(Params):
    transform: Literal["standardize", "log1p", "log1p_standardize", "none"] = "standardize"
    missing: Literal["impute", "error"] = "impute"
    missing_indicator: bool = False


class NumericEncoder(FeatureEncoder):
    """NaN / null are missing: imputed with the training mean (0 after standardising) or an
    error; ``missing_indicator`` adds a 0/1 column. Infinite values are always an error."""

    output = "dense"
    raw_datatype = "FP32"
    params: NumericParams

    def __init__(self, feature: FeatureSpec, params: NumericParams) -> None:
        super().__init__(feature, params)
        self.mean, self.std, self.fill = 0.0, 1.0, 0.0

    def _prepare(self, column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        x = to_float(column)
        missing = np.isnan(x)
        if np.isinf(x).any():
            row = int(np.flatnonzero(np.isinf(x))[0])
            raise DataError(f"row {row} holds an infinite value ({x[row]})")
        if missing.any() and self.params.missing == "error":
            row = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"row {row} is missing (null or NaN); set missing = \"impute\" on the feature "
                f"to fill it with the training mean"
            )
        if self.params.transform.startswith("log1p"):
            x = np.sign(x) * np.log1p(np.abs(x))
        return x, missing

    def fit(self, column: pa.ChunkedArray) -> None:
        x, missing = self._prepare(column)
        seen = x[~missing]
        if self.params.transform.endswith("standardize") and len(seen):
            self.mean = float(seen.mean())
            self.std = float(seen.std()) or 1.0
        self.fill = float(seen.mean()) if len(seen) else 0.0
        if not all(np.isfinite(v) for v in (self.mean, self.std, self.fill)):
            raise DataError(f"values up to {np.abs(seen).max():.3g} overflow the mean and "
                            f"standard deviation; use transform = \"log1p_standardize\"")

    def transform(self, column: pa.ChunkedArray) -> np.ndarray:
        x, missing = self._prepare(column)
        x = np.where(missing, self.fill, x)
        if self.params.transform.endswith("standardize"):
            x = (x - self.mean) / self.std
        with np.errstate(over="ignore"):
            x32 = x.astype(np.float32)
        if not np.isfinite(x32).all():  # finite in float64, beyond float32 once scaled
            row = int(np.flatnonzero(~np.isfinite(x32))[0])
            raise DataError(f"row {row}: {to_float(column)[row]:.3g} is out of range for this "
                            f"feature (fitted mean {self.mean:.3g}, std {self.std:.3g}: it "
                            f"becomes {x[row]:.3g}, beyond float32)")
        cols = [x32]
        if self.params.missing_indicator:
            cols.append(missing.astype(np.float32))
        return np.stack(cols, axis=1)

    @property
    def width(self) -> int:
        return 2 if self.params.missing_indicator else 1

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "fill": self.fill}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.mean, self.std, self.fill = (state_number(state, "mean"),
                                          state_number(state, "std", positive=True),
                                          state_number(state, "fill"))


# --------------------------------------------------------------------------------------------
# bucketize
# --------------------------------------------------------------------------------------------


class BucketizeParams(Params):
    buckets: int = Field(default=10, ge=2, le=100_000)
    boundaries: list[float] | None = None

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, boundaries: list[float] | None) -> list[float] | None:
        return None if boundaries is None else _strictly_increasing(boundaries)


def _strictly_increasing(boundaries: list[float]) -> list[float]:
    # np.searchsorted on unsorted boundaries returns meaningless bucket ids, silently
    for i, (a, b) in enumerate(pairwise(boundaries)):
        if not a < b:
            raise ValueError(f"boundaries must be strictly increasing; found {a!r} then "
                             f"{b!r} at positions {i} and {i + 1}")
    return boundaries


def quantile_boundaries(x: np.ndarray, buckets: int) -> list[float]:
    """Equal-frequency boundaries that give every heavy value a bucket of its own.

    Plain quantiles collapse on zero-inflated columns (capital gains: ~90 % zeros → a single
    boundary). Values holding more than 1/buckets of the rows become their own buckets and the
    remaining buckets split the other values by quantile.
    """
    if not len(x):
        return []
    values, counts = np.unique(x, return_counts=True)
    heavy = values[counts > len(x) / buckets]
    rest = x[~np.isin(x, heavy)]
    k = buckets - len(heavy)
    cuts = np.quantile(rest, np.linspace(0, 1, k + 1)[1:-1]) if len(rest) and k > 1 else []
    edges = np.concatenate([heavy, np.nextafter(heavy, np.inf), cuts])
    return [float(v) for v in np.unique(edges)]


class BucketizeEncoder(FeatureEncoder):
    """Id 0 = missing; ids 1..K+1 by training quantiles (or the given boundaries)."""

    output = "ids"
    raw_datatype = "FP32"
    params: BucketizeParams

    def __init__(self, feature: FeatureSpec, params: BucketizeParams) -> None:
        super().__init__(feature, params)
        self.boundaries = list(params.boundaries or [])

    def fit(self, column: pa.ChunkedArray) -> None:
        if self.params.boundaries is not None:
            return
        x = to_float(column)
        self.boundaries = quantile_boundaries(x[np.isfinite(x)], self.params.buckets)

    def transform(self, column: pa.ChunkedArray) -> np.ndarray:
        x = to_float(column)
        ids = np.searchsorted(np.asarray(self.boundaries), x, side="right") + 1
        return np.where(np.isnan(x), 0, ids).astype(np.int64)

    @property
    def cardinality(self) -> int:
        return len(self.boundaries) + 2

    def state(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries}

    def load_state(self, state: Mapping[str, Any]) -> None:
        boundaries = state["boundaries"]
        if not isinstance(boundaries, list):
            raise ValueError(f"'boundaries' must be a list of numbers, found {boundaries!r}")
        numbers = [state_number({"boundaries": b}, "boundaries") for b in boundaries]
        if any(not a < b for a, b in pairwise(numbers)):
            raise ValueError("'boundaries' must be strictly increasing")
        self.boundaries = numbers


# --------------------------------------------------------------------------------------------
# sequence / multi-hot
# --------------------------------------------------------------------------------------------


class SequenceParams(Params):
    max_len: int = Field(default=20, ge=1, le=4096)
    separator: str = Field(default="|", min_length=1)
    min_count: int = Field(default=1, ge=1)
    max_vocab: int | None = Field(default=None, ge=1)
    pooling: Literal["mean", "sum", "max"] = "mean"
    #: which max_len elements a longer list keeps: "first" (lists written most recent first,
    #: as behaviour logs usually are) or "last" (lists written oldest first)
    keep: Literal["first", "last"] = "first"
    #: a list longer than this is an error rather than truncated (guards serving against
    #: oversized requests); None: any length, truncated to max_len
    limit: int | None = Field(default=None, ge=1)
    #: a null list: "empty" (no elements) or "error" (a behaviour log should send [])
    null: Literal["empty", "error"] = "empty"
    #: an ``ids`` feature whose ids and embedding table this sequence shares (the candidate's
    #: own ``item_id`` for a sequence of item ids): no vocabulary of its own
    share_with: str | None = Field(default=None, min_length=1)


class SequenceEncoder(VocabularyEncoder):
    """A list column (or a string split on ``separator``) → ``[N, max_len]`` ids, 0 = padding,
    1 = OOV; ``keep`` says which ``max_len`` elements of a longer row are kept. With
    ``share_with`` the elements are encoded by that feature's encoder (its id + 1)."""

    output = "id_list"
    params: SequenceParams

    def __init__(self, feature: FeatureSpec, params: Any) -> None:
        super().__init__(feature, params)
        self._shared: FeatureEncoder | None = None

    @property
    def length(self) -> int:
        return int(self.params.max_len)

    @property
    def pooling(self) -> str:
        return str(self.params.pooling)

    @property
    def shares_with(self) -> str | None:
        return self.params.share_with

    def share(self, encoder: FeatureEncoder) -> None:
        self._shared = encoder

    def _lists(self, column: pa.ChunkedArray) -> pa.ListArray:
        column = decoded(column)
        if pa.types.is_null(column.type):  # every row missing: no elements
            column = pc.cast(column, pa.list_(pa.string()))
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.split_pattern(column, self.params.separator)
        if pa.types.is_fixed_size_list(column.type):
            column = pc.cast(column, pa.list_(column.type.value_type))
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            raise DataError(
                f"expected a list column or a string joined by {self.params.separator!r}, "
                f"found type {column.type}"
            )
        if not is_scalar(column.type.value_type):
            raise DataError(f"expected a list of ids (strings or numbers), found type "
                            f"{column.type}")
        lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if self.params.null == "error" and lists.null_count:
            row = int(np.flatnonzero(lists.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"row {row}: expected a list (an empty one for no elements), "
                            f"found null")
        if self.params.limit is not None:
            over = np.flatnonzero(self._row_lengths(lists) > self.params.limit)
            if len(over):
                raise DataError(f"row {over[0]}: {self._row_lengths(lists)[over[0]]} elements, "
                                f"more than the limit of {self.params.limit}")
        return lists

    @staticmethod
    def _row_lengths(lists: pa.Array) -> np.ndarray:
        return np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(
            zero_copy_only=False), dtype=np.int64)

    def lengths(self, column: pa.ChunkedArray) -> np.ndarray:
        """Elements per row before truncation (a null list has 0)."""
        return self._row_lengths(self._lists(column))

    def fit(self, column: pa.ChunkedArray) -> None:
        values = pc.list_flatten(self._lists(column))
        if self._shared is None:
            self.set_vocabulary(fit_vocabulary(
                pa.chunked_array([values]), self.params.min_count, self.params.max_vocab))

    def element_ids(self, values: pa.Array) -> np.ndarray:
        """The id of each element (≥ 1; 1 = unknown)."""
        if self._shared is not None:  # its ids from 0 (0 = unknown) moved past the padding
            return np.asarray(self._shared.transform(pa.chunked_array([values])),
                              dtype=np.int64) + 1
        return lookup(pa.chunked_array([values]), self._vocab_array, 2, self._vocab_integers)

    def transform(self, column: pa.ChunkedArray) -> np.ndarray:
        lists = self._lists(column)
        values = pc.list_flatten(lists)
        rows = np.asarray(pc.list_parent_indices(lists).to_numpy(), dtype=np.int64)
        ids = self.element_ids(values)
        # Position of each element inside its row: index minus the row's first element index.
        first = np.searchsorted(rows, rows, side="left")
        position = np.arange(len(rows)) - first
        if self.params.keep == "last":  # the row's last max_len elements, in their order
            count = self._row_lengths(lists)[rows]
            position = position - np.maximum(count - self.params.max_len, 0)
            keep = position >= 0
        else:
            keep = position < self.params.max_len
        out = np.zeros((len(lists), self.params.max_len), dtype=np.int64)
        out[rows[keep], position[keep]] = ids[keep]
        return out

    def state(self) -> dict[str, Any]:
        if self._shared is not None:
            return {"share_with": self.params.share_with}
        return super().state()

    def load_state(self, state: Mapping[str, Any]) -> None:
        if self._shared is None:
            super().load_state(state)

    @property
    def cardinality(self) -> int:
        if self._shared is not None:
            return int(self._shared.cardinality) + 1
        return len(self.vocabulary) + 2


class SequenceBucketizeParams(SequenceParams):
    #: bucket edges of the numeric elements (a time gap in hours: [1, 6, 24, 168])
    boundaries: list[float] = Field(min_length=1)

    @field_validator("boundaries")
    @classmethod
    def _increasing(cls, boundaries: list[float]) -> list[float]:
        return _strictly_increasing(boundaries)


class SequenceBucketizeEncoder(SequenceEncoder):
    """A list of numbers (the hours since each behaviour) → bucket ids: 2 + the number of
    ``boundaries`` ≤ the value; 1 for a missing element. Fits nothing."""

    raw_datatype = "FP32"
    params: SequenceBucketizeParams

    def fit(self, column: pa.ChunkedArray) -> None:
        self._lists(column)  # the same checks as encoding

    def element_ids(self, values: pa.Array) -> np.ndarray:
        x = to_float(pa.chunked_array([values]))
        ids = np.searchsorted(np.asarray(self.params.boundaries), x, side="right") + 2
        return np.where(np.isnan(x), 1, ids).astype(np.int64)

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        return None

    @property
    def cardinality(self) -> int:
        return len(self.params.boundaries) + 3
