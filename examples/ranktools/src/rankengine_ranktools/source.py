"""The ``jsonl`` data source: JSON Lines files (one JSON object per line) or directories of them.

Rows are parsed by Arrow's JSON reader (:func:`pyarrow.json.read_json`): numbers become
``int64`` (``double`` as soon as one value has a fraction), strings ``string``, booleans
``bool``, arrays lists (a sequence feature can be a real list, which CSV cannot hold) and
objects structs; blank lines are skipped and ``.gz`` files are decompressed. JSON has no header,
so :meth:`JsonLinesSource.schema` parses the data (once per source object: the table is kept).

When Arrow refuses a file, the file is scanned line by line to name the first bad line and
what is wrong with it (a :class:`rankengine.DataError` on one line), e.g.::

    data/train.jsonl: line 7: expected a JSON object, found invalid JSON (character 31:
    Expecting ',' delimiter): {"click": 1, "device": "ios" "hour": 3}
    data/train.jsonl: line 12, column 'hour': expected a number (as on line 1), found a
    string: "21"
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from rankengine import DataError, DataSource

#: Largest line Arrow's reader accepts (a line must fit in one block).
BLOCK_BYTES = 1 << 24


class JsonLinesSource(DataSource):
    """JSON Lines files (``.jsonl``, ``.ndjson``, optionally ``.gz``), or a directory of them
    whose schemas are reconciled like the built-in sources' shards."""

    suffixes = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")

    @cached_property
    def table(self) -> pa.Table:
        """Every row of every file, parsed once."""
        files = self.files()
        tables = [self._read_file(file) for file in files]
        if len(tables) == 1:
            return tables[0]
        schema = self.unified_schema([(f, t.schema) for f, t in zip(files, tables, strict=True)])
        try:
            return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise self.read_error(exc) from None

    def schema(self) -> pa.Schema:
        return self.table.schema

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        if columns is None:
            return self.table
        self.missing_columns(columns, self.table.schema.names)
        return self.table.select(list(columns))

    def batches(self, columns: Sequence[str] | None = None,
                batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        yield from self.read(columns).to_batches(max_chunksize=batch_rows)

    def num_rows(self) -> int:
        return int(self.table.num_rows)

    def take(self, rows: Sequence[int] | pa.Array, columns: Sequence[str]) -> pa.Table:
        table = self.read(columns)
        try:
            return table.take(rows)
        except (pa.ArrowIndexError, IndexError):
            raise DataError(f"{self.path}: row index out of range: expected rows 0 to "
                            f"{table.num_rows - 1}, found {max(pa.array(rows).to_pylist())}"
                            ) from None

    # -- reading and diagnosing one file ----------------------------------------------------

    def _read_file(self, file: Path) -> pa.Table:
        try:
            table = pa_json.read_json(file, read_options=pa_json.ReadOptions(
                block_size=BLOCK_BYTES))
            table.validate(full=True)  # Arrow reads invalid UTF-8 into strings unchecked
        except (pa.ArrowInvalid, OSError) as exc:
            if str(exc).startswith("Empty JSON file"):
                raise DataError(f"{file}: the file is empty: expected one JSON object per "
                                f"line, found no line") from None
            raise first_bad_line(file) or self.read_error(exc) from None
        return table


def first_bad_line(file: Path) -> DataError | None:
    """The error for the first line of ``file`` that Arrow's JSON reader cannot take: not
    UTF-8, not JSON, not an object, or a value whose JSON type
    differs from the column's earlier values (null fits every column; integers and fractions
    are both numbers). ``None`` when every line looks right."""
    kinds: dict[str, tuple[str, int]] = {}  # column path -> (JSON type, first line with it)
    for number, raw in enumerate(_lines(file), start=1):
        if not raw.strip():
            continue
        where = f"{file}: line {number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return DataError(f"{where}: expected UTF-8 text, found byte "
                             f"{raw[exc.start:exc.start + 1]!r} at offset {exc.start}")
        try:
            row = json.loads(text)  # NaN and Infinity are allowed, as Arrow allows them
        except json.JSONDecodeError as exc:
            return DataError(f"{where}: expected a JSON object, found invalid JSON (character "
                             f"{exc.pos + 1}: {exc.msg}): {_excerpt(text.strip())}")
        if row is None:
            continue  # Arrow reads a null line as a row of nulls
        if not isinstance(row, dict):
            return DataError(f"{where}: expected a JSON object, found {_kind(row, True)}: "
                             f"{_excerpt(text.strip())}")
        conflict = _check_kinds(row, "", number, kinds)
        if conflict is not None:
            return DataError(f"{where}, {conflict}")
    return None


def _lines(file: Path) -> Iterator[bytes]:
    """The raw lines of ``file`` (decompressed if it ends in .gz)."""
    with gzip.open(file, "rb") if file.name.lower().endswith(".gz") else file.open("rb") as fh:
        yield from fh


def _kind(value: Any, article: bool = False) -> str:
    kind = ("a boolean" if isinstance(value, bool) else
            "a number" if isinstance(value, int | float) else
            "a string" if isinstance(value, str) else
            "an array" if isinstance(value, list) else
            "an object" if isinstance(value, dict) else "null")
    return kind if article else kind.split(" ", 1)[-1]


def _check_kinds(value: dict[str, Any], prefix: str, line: int,
                 kinds: dict[str, tuple[str, int]]) -> str | None:
    """The first value of this row whose JSON type conflicts with an earlier row's, as
    ``column 'a.b': expected ..., found ...``; objects and arrays are checked inside."""
    for key, item in value.items():
        path = f"{prefix}{key}"
        found = _check_value(item, path, line, kinds)
        if found is not None:
            return found
    return None


def _check_value(item: Any, path: str, line: int,
                 kinds: dict[str, tuple[str, int]]) -> str | None:
    if item is None:
        return None
    kind = _kind(item)
    first, first_line = kinds.setdefault(path, (kind, line))
    if kind != first:
        article = "an" if first[0] in "aeiou" else "a"
        return (f"column '{path}': expected {article} {first} (as on line {first_line}), "
                f"found {_kind(item, True)}: {_excerpt(json.dumps(item))}")
    if isinstance(item, dict):
        return _check_kinds(item, f"{path}.", line, kinds)
    if isinstance(item, list):
        for element in item:
            found = _check_value(element, f"{path}[]", line, kinds)
            if found is not None:
                return found
    return None


def _excerpt(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."
