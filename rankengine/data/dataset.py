"""Turn a raw table into the columnar arrays training and evaluation run on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankengine.config import LabelRule, TaskSpec
from rankengine.data.pipeline import FeaturePipeline
from rankengine.errors import DataError
from rankengine.graph import InconsistentPolicy, LabelReport, TaskGraph


@dataclass
class EncodedData:
    """Encoded rows: every array has the same first dimension N."""

    categorical: np.ndarray  # int64 [N, C]
    dense: np.ndarray  # float32 [N, D]
    sequences: list[np.ndarray]  # int64 [N, L_i]
    labels: np.ndarray  # float32 [N, T] entire-space labels
    groups: np.ndarray | None = None  # int64 [N]
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # float64 [N] named columns
    report: LabelReport | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: np.ndarray) -> EncodedData:
        return EncodedData(
            self.categorical[rows], self.dense[rows], [s[rows] for s in self.sequences],
            self.labels[rows], None if self.groups is None else self.groups[rows],
            {k: v[rows] for k, v in self.extras.items()}, self.report,
        )


def label_columns(graph: TaskGraph) -> list[str]:
    return [c for node in graph.nodes for c in node.spec.label_columns]


def oracle_columns(graph: TaskGraph) -> list[str]:
    cols: list[str] = []
    for node in graph.nodes:
        oracle = node.spec.oracle
        if oracle is not None:
            cols += [c for c in (oracle.p, oracle.p_cond, oracle.label_cond) if c]
    return cols


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    """A column with dictionary encoding undone (Parquet writers dictionary-encode freely)."""
    data = table.column(name)
    return pc.cast(data, data.type.value_type) if pa.types.is_dictionary(data.type) else data


def _is_number(data_type: pa.DataType) -> bool:
    """Whether a column of this type casts to float64 value for value."""
    return bool(pa.types.is_integer(data_type) or pa.types.is_floating(data_type)
                or pa.types.is_boolean(data_type) or pa.types.is_decimal(data_type))


def raw_label(table: pa.Table, name: str, spec: TaskSpec, where: str) -> np.ndarray:
    """One node's raw label as float64: 0/1 for binary nodes (OR of columns), values else."""
    if isinstance(spec.label, LabelRule):
        column = _column(table, spec.label.column)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            wanted = pa.array([str(v) for v in spec.label.equals])
        elif pa.types.is_null(column.type):  # every value missing: no row matches
            return np.zeros(len(column), dtype=np.float64)
        elif _is_number(column.type):
            wanted = pa.array([v for v in spec.label.equals if not isinstance(v, str)],
                              type=pa.float64())
            column = pc.cast(column, pa.float64())
        else:
            raise DataError(
                f"{where}: label column '{spec.label.column}' of task '{name}' must hold "
                f"strings or numbers to match equals = {list(spec.label.equals)!r}, found type "
                f"{column.type}")
        hit = pc.fill_null(pc.is_in(column, value_set=wanted), False)
        return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=np.float64)
    values = [_numeric_label(table, col, name, where) for col in spec.label_columns]
    if spec.type == "regression":
        return values[0]
    out = values[0]
    for more in values[1:]:
        out = np.maximum(out, more)
    return out


def _numeric_label(table: pa.Table, column: str, task: str, where: str) -> np.ndarray:
    data = _column(table, column)
    if pa.types.is_null(data.type) and len(data) == 0:  # a header-only CSV file: no rows
        return np.zeros(0, dtype=np.float64)
    if pa.types.is_boolean(data.type):
        data = pc.cast(data, pa.int8())
    if not (pa.types.is_integer(data.type) or pa.types.is_floating(data.type)
            or pa.types.is_null(data.type)):
        sample = data.drop_null()[0].as_py() if len(data.drop_null()) else None
        raise DataError(
            f"{where}: label column '{column}' of task '{task}' must be numeric (0/1 or a "
            f"value), found type {data.type} (e.g. {sample!r}); use label = {{ column = "
            f"'{column}', equals = [...] }} for a categorical label"
        )
    if data.null_count:
        row = int(np.flatnonzero(data.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: label column '{column}' of task '{task}' is empty at row {row}")
    values = np.asarray(data.to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):  # one inf label turns the loss, and every weight after it, into NaN
        raise DataError(f"{where}: label column '{column}' of task '{task}' is {values[bad[0]]} "
                        f"at row {int(bad[0])}; labels must be finite numbers")
    return values


def group_ids(table: pa.Table, column: str, where: str = "data") -> np.ndarray:
    """Dense int64 ids of the ``[data] group`` column's values (first seen, first id).

    A missing value is an error naming the row: it belongs to no request, and null ids
    would silently become one garbage group.
    """
    data = _column(table, column)
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    if pa.types.is_nested(data.type):
        raise DataError(f"{where}: group column '{column}' ([data] group) must hold one id per "
                        f"row (a string or a number), found type {data.type}")
    missing = data.is_null(nan_is_null=True)
    if pc.any(missing).as_py():
        row = int(np.flatnonzero(missing.to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: group column '{column}' ([data] group) is empty at row "
                        f"{row}; every row needs a request / user id")
    encoded = pc.dictionary_encode(data).combine_chunks()
    return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)


def extra_column(table: pa.Table, name: str, where: str) -> np.ndarray:
    """A numeric column the configuration reads besides labels and features (oracle
    probabilities, sample weights) as float64; anything else is an error naming it."""
    data = _column(table, name)
    if pa.types.is_null(data.type):
        return np.full(len(data), np.nan)
    if not _is_number(data.type):
        sample = data.drop_null()[0].as_py() if len(data.drop_null()) else None
        raise DataError(f"{where}: column '{name}' must be numeric, found type {data.type} "
                        f"(e.g. {sample!r})")
    return np.array(pc.cast(data, pa.float64()).to_numpy(zero_copy_only=False),
                    dtype=np.float64)


def encode_table(
    table: pa.Table,
    pipeline: FeaturePipeline,
    graph: TaskGraph,
    *,
    policy: InconsistentPolicy,
    group: str | None = None,
    extras: Sequence[str] = (),
    where: str = "data",
) -> EncodedData:
    """Labels (with the inconsistency policy applied), features, groups and extra columns."""
    raw = {node.name: raw_label(table, node.name, node.spec, where) for node in graph.nodes}
    labels, keep, report = graph.derive_labels(raw, policy, where=where)
    if keep is not None:
        table = table.filter(pa.array(keep))
        labels = labels[keep]
    categorical, dense, sequences = pipeline.transform(table, where=where)
    extra = {name: extra_column(table, name, where) for name in dict.fromkeys(extras)}
    return EncodedData(
        categorical, dense, sequences, labels,
        group_ids(table, group, where) if group else None, extra, report,
    )
