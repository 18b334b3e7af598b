"""Read CSV or Parquet files, or directories of shards, into a pyarrow Table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds

from rankengine.config import CsvOptions
from rankengine.errors import DataError, suggest

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".txt")


def detect_format(path: Path, declared: str = "auto") -> str:
    """``csv`` or ``parquet`` from the declared format or the file suffixes."""
    if declared != "auto":
        return declared
    files = shard_files(path) if path.is_dir() else [path]
    name = files[0].name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    raise DataError(
        f"{path}: cannot tell the format from the name; use a .parquet or .csv suffix or set "
        f"[data] format = \"csv\" | \"parquet\""
    )


def shard_files(directory: Path) -> list[Path]:
    files = sorted(
        p for p in directory.iterdir()
        if p.is_file() and p.name.lower().endswith(PARQUET_SUFFIXES + CSV_SUFFIXES)
    )
    if not files:
        raise DataError(f"{directory}: directory holds no .parquet or .csv files")
    return files


def open_dataset(path: str | Path, *, format: str = "auto",
                 csv: CsvOptions | None = None) -> ds.Dataset:
    """A pyarrow dataset over a file or a directory of shards (nothing is read yet)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file or directory not found")
    fmt = detect_format(path, format)
    files = [str(p) for p in (shard_files(path) if path.is_dir() else [path])]
    try:
        if fmt == "parquet":
            return ds.dataset(files, format="parquet")
        return ds.dataset(files, format=_csv_format(csv or CsvOptions()))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from exc


def read_table(
    path: str | Path,
    columns: Sequence[str] | None = None,
    *,
    format: str = "auto",
    csv: CsvOptions | None = None,
) -> pa.Table:
    """Read ``path`` (a file or a directory of shards), keeping only ``columns`` if given.

    A missing column is an error naming the file, the column and the columns that exist.
    """
    path = Path(path)
    dataset = open_dataset(path, format=format, csv=csv)
    fmt = detect_format(path, format)
    csv = csv or CsvOptions()
    available = dataset.schema.names
    if columns is not None:
        missing = [c for c in dict.fromkeys(columns) if c not in available]
        if missing:
            col = missing[0]
            raise DataError(
                f"{path}: column '{col}' is required by the configuration but the data has "
                f"no such column{suggest(col, available)}; columns present: "
                f"{', '.join(available[:40])}{' ...' if len(available) > 40 else ''}"
            )
    try:
        table = dataset.to_table(columns=list(dict.fromkeys(columns)) if columns else None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from exc
    if fmt == "csv":
        _check_utf8(table, path, csv.header and not path.is_dir())
        if csv.strip:
            table = _strip_strings(table)
    return table


def _check_utf8(table: pa.Table, path: Path, header: bool) -> None:
    """Arrow reads a CSV column with invalid UTF-8 as raw bytes; name its first bad row."""
    for field in table.schema:
        if not (pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)):
            continue
        for row, value in enumerate(table.column(field.name).to_pylist()):
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = f" (line {row + 1 + header})" if header or not path.is_dir() else ""
                raise DataError(
                    f"{path}: column '{field.name}' row {row}{line}: not UTF-8 text (byte "
                    f"{value[exc.start:exc.start + 1]!r} at offset {exc.start}); CSV files "
                    f"must be UTF-8") from None


def _csv_format(csv: CsvOptions) -> ds.CsvFileFormat:
    block = 1 << 24
    if csv.header:
        read = pa_csv.ReadOptions(block_size=block)
    elif csv.column_names:
        read = pa_csv.ReadOptions(column_names=csv.column_names, block_size=block)
    else:
        read = pa_csv.ReadOptions(autogenerate_column_names=True, block_size=block)
    parse = pa_csv.ParseOptions(delimiter=csv.delimiter)
    convert = pa_csv.ConvertOptions(null_values=list(csv.null_values), strings_can_be_null=True)
    return ds.CsvFileFormat(read_options=read, parse_options=parse, convert_options=convert)


def _strip_strings(table: pa.Table) -> pa.Table:
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            table = table.set_column(i, field.name, pc.utf8_trim_whitespace(table.column(i)))
    return table
