"""Data sources: the formats (files, directories of shards) rankengine reads.

A source is a :class:`DataSource` subclass registered by a plugin through
``rankengine_register_sources``; the built-in ones read CSV and Parquet. The core never names a
format: :func:`open_source` picks the source ``[data] format`` names, else the first one whose
:meth:`DataSource.accepts` is true for the path, and every read, row count, streamed fragment and
cache key goes through the source's methods.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ValidationError

from rankengine.components import Component, ComponentTable, Params
from rankengine.errors import DataError, PluginError, one_line, suggest

#: ``[data] format`` of configs written before sources were plugins: the same as no format.
LEGACY_AUTO = "auto"


class DataSource(ABC):
    """One data set (a file, or a directory of shards) in one format.

    What the core asks of a source:

    * ``suffixes`` / :meth:`accepts`: which paths it reads when ``[data] format`` names none
      (by default a file with one of ``suffixes``, or a directory holding such files);
    * ``Source(path, params)``: ``params`` is an instance of the ``params`` model it was
      registered with (the core passes the ``[data.NAME]`` options, e.g. ``[data.csv]``);
    * :meth:`schema`: column names and types, without reading the rows;
    * :meth:`read`: the whole table (only ``columns`` if given);
    * :meth:`batches`: the same rows as a stream of record batches (bounded memory);
    * :meth:`num_rows`, :meth:`take`: the row count and a row sample (reports);
    * :meth:`fingerprint`: a string that changes when the data changes (the encoding cache's
      key; by default the resolved path, size and modification time of every file);
    * :meth:`fragments` / :meth:`read_fragment`: independently readable parts with known row
      counts, for ``[data] streaming`` and distributed training (optional).

    Errors are :class:`rankengine.DataError` on one line naming the file (the shard), the row
    or column, what was expected and what was found.
    """

    @dataclass(frozen=True)
    class Fragment:
        """A part of a source that can be read on its own (a Parquet row group): the unit the
        streaming trainer shuffles and shares out between ranks. ``index`` means what the
        source says (row group number, byte range, ...); ``rows`` is known without reading
        the rows; ``source`` reads it back (:meth:`DataSource.read_fragment`)."""

        path: str
        index: int
        rows: int
        source: DataSource = field(compare=False, repr=False)

    #: file name endings (lower case) this source reads, e.g. ``(".parquet", ".pq")``
    suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, params: Params) -> None:
        self.path = Path(path)
        self.params = params
        #: the name the source is registered under (set by the core; used in messages)
        self.name = type(self).__name__

    @classmethod
    def accepts(cls, path: Path) -> bool:
        """Whether this source reads ``path``: a file with one of :attr:`suffixes`, or a
        directory holding at least one such file."""
        if path.is_dir():
            return any(p.is_file() and cls.accepts(p) for p in path.iterdir())
        return bool(cls.suffixes) and path.name.lower().endswith(cls.suffixes)

    def files(self) -> list[Path]:
        """The files read: the path itself, or the directory's accepted files (its shards)."""
        if not self.path.is_dir():
            return [self.path]
        files = sorted(p for p in self.path.iterdir() if p.is_file() and type(self).accepts(p))
        if not files:
            raise DataError(f"{self.path}: directory holds no {' or '.join(self.suffixes)} "
                            f"files for data source '{self.name}'")
        return files

    @abstractmethod
    def schema(self) -> pa.Schema:
        """Column names and types, without reading the rows."""

    @abstractmethod
    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row (only ``columns``, in that order, if given)."""

    def batches(self, columns: Sequence[str] | None = None,
                batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """The rows as record batches of at most ``batch_rows`` rows; sources that can
        stream override this (the default reads the table)."""
        yield from self.read(columns).to_batches(max_chunksize=batch_rows)

    def num_rows(self) -> int:
        return sum(batch.num_rows for batch in self.batches())

    def take(self, rows: Sequence[int] | pa.Array, columns: Sequence[str]) -> pa.Table:
        """The rows at the given positions (sorted), only ``columns``."""
        return self.read(columns).take(rows)

    def fingerprint(self) -> str:
        """Changes whenever the data may have: resolved path, size and mtime of every file."""
        stats = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
                 for p in self.files()]
        return hashlib.sha256(json.dumps(stats).encode()).hexdigest()

    def fragments(self) -> list[DataSource.Fragment]:
        """Every independently readable part with its row count (metadata only)."""
        raise DataError(f"{self.path}: streaming and distributed training read the data in "
                        f"fragments (row groups), which data source '{self.name}' cannot list; "
                        f"convert the data to a format that has them")

    def read_fragment(self, fragment: DataSource.Fragment, columns: Sequence[str]) -> pa.Table:
        """The rows of one of :meth:`fragments`, only ``columns``."""
        raise DataError(f"{fragment.path}: data source '{self.name}' cannot read fragments")

    # -- helpers for sources built on pyarrow --------------------------------------------------

    def missing_columns(self, columns: Sequence[str], available: Sequence[str]) -> None:
        """The error for a column the configuration needs and the data lacks."""
        missing = [c for c in dict.fromkeys(columns) if c not in available]
        if missing:
            col = missing[0]
            raise DataError(
                f"{self.path}: column '{col}' is required by the configuration but the data "
                f"has no such column{suggest(col, list(available))}; columns present: "
                f"{', '.join(available[:40])}{' ...' if len(available) > 40 else ''}"
            )

    def error_text(self, exc: BaseException) -> str:
        """Arrow's error without its layers of context, at most ~300 characters."""
        text = one_line(str(exc))
        text = re.sub(r"^Error creating dataset\. Could not read schema from '[^']*'\. Is this "
                      r"a '\w+' file\?: ", "", text)
        text = re.sub(r"^Could not open \w+ input source '[^']*': ", "", text)
        text = re.sub(r"^(Invalid|IOError): ", "", text)
        if len(text) > 300:  # a bad cell can be megabytes long
            text = text[:300] + " ..."
        return text

    def read_error(self, exc: BaseException) -> DataError:
        return DataError(f"{self.path}: cannot read as {self.name}: {self.error_text(exc)}")

    def unified_schema(self, shards: Sequence[tuple[Path, pa.Schema]]) -> pa.Schema:
        """One schema for every shard (int and float columns widen to float); a column that
        some shards lack, or whose types cannot be reconciled, is an error naming two shards."""
        names = list(dict.fromkeys(name for _, schema in shards for name in schema.names))
        for name in names:
            having = [(p, schema.field(name).type) for p, schema in shards
                      if name in schema.names]
            lacking = [p for p, schema in shards if name not in schema.names]
            if lacking:
                raise DataError(f"{self.path}: shard {lacking[0].name} has no column '{name}' "
                                f"but shard {having[0][0].name} has; every shard must hold the "
                                f"same columns")
            for p, data_type in having[1:]:
                try:
                    pa.unify_schemas([pa.schema([(name, having[0][1])]),
                                      pa.schema([(name, data_type)])],
                                     promote_options="permissive")
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                    raise DataError(f"{self.path}: column '{name}' is {data_type} in shard "
                                    f"{p.name} but {having[0][1]} in shard {having[0][0].name}; "
                                    f"every shard must give a column the same type") from None
        return pa.unify_schemas([schema for _, schema in shards], promote_options="permissive")


Fragment = DataSource.Fragment
SourceTable = ComponentTable[type[DataSource]]


def _describe(sources: SourceTable) -> str:
    return "; ".join(f"{c.name} ({', '.join(getattr(c.factory, 'suffixes', ()) or ['-'])})"
                     for c in sources) or "none (no enabled plugin registers a data source)"


def source_class(component: Component[Any]) -> type[DataSource]:
    """The registered factory, checked to be a :class:`DataSource` subclass."""
    factory = component.factory
    if not (isinstance(factory, type) and issubclass(factory, DataSource)):
        raise PluginError(f"data source '{component.name}' of plugin '{component.plugin}' is "
                          f"{factory!r}; expected a subclass of rankengine.DataSource")
    return factory


def _first_file(component: Component[Any], directory: Path) -> str:
    accepts = source_class(component).accepts
    return next((p.name for p in sorted(directory.iterdir()) if p.is_file() and accepts(p)), "?")


def source_component(path: Path, sources: SourceTable,
                     format: str | None = None) -> Component[Any]:
    """The registered source for ``path``: the one ``format`` names, else the first whose
    ``accepts(path)`` is true (a directory accepted by several is refused as mixed)."""
    if format is not None and format != LEGACY_AUTO:
        if format not in sources:
            raise DataError(f"{path}: unknown data format '{format}' ([data] format)"
                            f"{suggest(format, sources.names())}; available sources: "
                            f"{', '.join(sources.names()) or '(none)'}")
        return sources.get(format)
    accepting = [c for c in sources if source_class(c).accepts(path)]
    if path.is_dir() and len(accepting) > 1:
        first, second = accepting[:2]
        raise DataError(f"{path}: the directory mixes {first.name} ({_first_file(first, path)}) "
                        f"and {second.name} ({_first_file(second, path)}) shards; keep one "
                        f"format per directory")
    if accepting:
        return accepting[0]
    if path.is_dir():
        raise DataError(f"{path}: directory holds no data files any source reads; sources: "
                        f"{_describe(sources)}")
    raise DataError(f"{path}: cannot tell the format from the name; no data source accepts it "
                    f"(sources: {_describe(sources)}); rename it or set [data] format = one of "
                    f"{', '.join(sources.names()) or '(none)'}")


def open_source(path: str | Path, sources: SourceTable, *, format: str | None = None,
                **options: BaseModel | Mapping[str, Any] | None) -> DataSource:
    """The :class:`DataSource` reading ``path``; ``options`` are per-source parameters keyed by
    source name (``csv=config.data.csv`` reaches the source registered as that name)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file or directory not found")
    component = source_component(path, sources, format)
    raw = options.get(component.name)
    if isinstance(raw, BaseModel):
        raw = raw.model_dump()
    try:
        params = component.parse_params(raw or {})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise DataError(f"{path}: [data.{component.name}] {where}: {error['msg']}") from None
    source = source_class(component)(path, params)
    source.name = component.name
    return source
