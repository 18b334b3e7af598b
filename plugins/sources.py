"""Built-in data sources: CSV (also gzip / bzip2 compressed, TSV) and Parquet.

Both read through ``pyarrow.dataset``: a file or a directory of shards whose schemas are
reconciled up front (a column missing from a shard, or typed differently, is an error naming
both shards). Parquet also lists its row groups, so it can be streamed and shared out between
ranks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import Field

from rankengine import DataError, DataSource, Params, Register, hookimpl


@hookimpl
def rankengine_register_sources(register: Register[type[DataSource]]) -> None:
    register("csv", CsvSource, params=CsvParams,
             help="CSV files or directories of CSV shards (.csv, .csv.gz, .csv.bz2, .tsv, .txt); "
                  "options in [data.csv]")
    register("parquet", ParquetSource,
             help="Parquet files or directories of Parquet shards; streams by row group")


class ArrowDatasetSource(DataSource):
    """A source over ``pyarrow.dataset`` with a given file format."""

    def file_format(self) -> ds.FileFormat:
        raise NotImplementedError

    @cached_property
    def dataset(self) -> ds.Dataset:
        files = [str(p) for p in self.files()]
        file_format = self.file_format()
        try:
            dataset = ds.dataset(files, format=file_format)
            if len(files) > 1:
                # The dataset takes its schema from the first shard: a column missing from
                # another shard would read as nulls and a column typed differently would
                # fail mid-read.
                shards = [(Path(f.path), f.physical_schema) for f in dataset.get_fragments()]
                dataset = ds.dataset(files, format=file_format,
                                     schema=self.unified_schema(shards))
        except (pa.ArrowInvalid, OSError) as exc:
            raise self.read_error(exc) from None
        return dataset

    def schema(self) -> pa.Schema:
        return self.dataset.schema

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        try:
            return self.dataset.to_table(columns=list(columns) if columns else None)
        except (pa.ArrowInvalid, OSError) as exc:
            raise self.read_error(exc) from None

    def batches(self, columns: Sequence[str] | None = None,
                batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        try:
            yield from self.dataset.to_batches(columns=list(columns) if columns else None,
                                               batch_size=batch_rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise self.read_error(exc) from None

    def num_rows(self) -> int:
        try:
            return int(self.dataset.count_rows())
        except (pa.ArrowInvalid, OSError) as exc:
            raise self.read_error(exc) from None

    def take(self, rows: Sequence[int] | pa.Array, columns: Sequence[str]) -> pa.Table:
        try:
            return self.dataset.take(pa.array(rows), columns=list(columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise self.read_error(exc) from None


# -- Parquet ---------------------------------------------------------------------------------


class ParquetSource(ArrowDatasetSource):
    suffixes = (".parquet", ".pq")

    def file_format(self) -> ds.FileFormat:
        return ds.ParquetFileFormat()

    def fragments(self) -> list[DataSource.Fragment]:
        out = []
        for file in self.files():
            try:
                meta = pq.ParquetFile(file).metadata
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"{file}: cannot read Parquet metadata: {exc}") from exc
            out += [self.Fragment(str(file), g, meta.row_group(g).num_rows, self)
                    for g in range(meta.num_row_groups)]
        return out

    def read_fragment(self, fragment: DataSource.Fragment, columns: Sequence[str]) -> pa.Table:
        try:
            parquet = pq.ParquetFile(fragment.path)
            available = parquet.schema_arrow.names
            missing = [c for c in columns if c not in available]
            if missing:
                raise DataError(f"{fragment.path}: no column '{missing[0]}'; columns: "
                                f"{', '.join(available)}")
            return parquet.read_row_group(fragment.index, columns=list(columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{fragment.path}: cannot read row group {fragment.index}: "
                            f"{exc}") from exc


# -- CSV -------------------------------------------------------------------------------------


class CsvParams(Params):
    """``[data.csv]``."""

    delimiter: str = Field(default=",", min_length=1, max_length=1)
    header: bool = True
    column_names: list[str] | None = None
    null_values: list[str] = Field(default_factory=lambda: [""])
    strip: bool = False


class CsvSource(ArrowDatasetSource):
    suffixes = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".txt")
    params: CsvParams

    def file_format(self) -> ds.FileFormat:
        csv = self.params
        block = 1 << 24
        if csv.header:
            read = pa_csv.ReadOptions(block_size=block)
        elif csv.column_names:
            read = pa_csv.ReadOptions(column_names=csv.column_names, block_size=block)
        else:
            read = pa_csv.ReadOptions(autogenerate_column_names=True, block_size=block)
        parse = pa_csv.ParseOptions(delimiter=csv.delimiter)
        convert = pa_csv.ConvertOptions(null_values=list(csv.null_values),
                                        strings_can_be_null=True)
        return ds.CsvFileFormat(read_options=read, parse_options=parse, convert_options=convert)

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        return self._clean(super().read(columns))

    def batches(self, columns: Sequence[str] | None = None,
                batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        for batch in super().batches(columns, batch_rows):
            yield from self._clean(pa.Table.from_batches([batch])).to_batches()

    def take(self, rows: Sequence[int] | pa.Array, columns: Sequence[str]) -> pa.Table:
        return self._clean(super().take(rows, columns))

    def _clean(self, table: pa.Table) -> pa.Table:
        self._check_utf8(table)
        if self.params.strip:
            for i, field in enumerate(table.schema):
                if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                    table = table.set_column(i, field.name,
                                             pc.utf8_trim_whitespace(table.column(i)))
        return table

    def _check_utf8(self, table: pa.Table) -> None:
        """Arrow reads a CSV column with invalid UTF-8 as raw bytes; name its first bad row."""
        header = self.params.header and not self.path.is_dir()
        for field in table.schema:
            if not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
                continue
            for row, value in enumerate(table.column(field.name).to_pylist()):
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError as exc:
                    line = f" (line {row + 1 + header})" if header or not self.path.is_dir() \
                        else ""
                    raise DataError(
                        f"{self.path}: column '{field.name}' row {row}{line}: not UTF-8 text "
                        f"(byte {value[exc.start:exc.start + 1]!r} at offset {exc.start}); CSV "
                        f"files must be UTF-8") from None

    def error_text(self, exc: BaseException) -> str:
        """Arrow's error with CSV rows as line numbers and the shard named:
        ``b.csv: line 12: expected 6 fields, found 7: 2,0,0,0.0,cat0,11.00,9``."""
        source = re.search(r"input source '([^']+)'", str(exc))
        text = super().error_text(exc).removesuffix(" ...")
        text = text.removeprefix("CSV parse error: ")
        text = re.sub(r"Row #(\d+)", lambda m: f"line {m.group(1)}", text)
        text = re.sub(r"Expected (\d+) columns, got (\d+)", r"expected \1 fields, found \2",
                      text)
        if "straddling object straddles" in text:
            text = ("a row is longer than 16 MiB (an unclosed quote, or a huge cell); close the "
                    "quote or shorten the cell")
        if text.startswith("Empty CSV file"):
            text = "the file is empty (no header line)"
        if len(text) > 300:
            text = text[:300] + " ..."
        shard = Path(source.group(1)) if source else None
        return f"{shard.name}: {text}" if shard and shard != self.path else text
