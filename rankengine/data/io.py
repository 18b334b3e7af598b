"""Read CSV or Parquet files, or directories of shards, into a pyarrow Table."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds

from rankengine.config import CsvOptions
from rankengine.errors import DataError, one_line, suggest

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".txt")


def detect_format(path: Path, declared: str = "auto") -> str:
    """``csv`` or ``parquet`` from the declared format or the file suffixes."""
    if declared != "auto":
        return declared
    files = shard_files(path) if path.is_dir() else [path]
    formats = {f.name.lower().endswith(PARQUET_SUFFIXES): f for f in files}
    if len(formats) > 1:
        raise DataError(f"{path}: the directory mixes Parquet ({formats[True].name}) and CSV "
                        f"({formats[False].name}) shards; keep one format per directory")
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
    file_format = "parquet" if fmt == "parquet" else _csv_format(csv or CsvOptions())
    try:
        dataset = ds.dataset(files, format=file_format)
        if len(files) > 1:
            # The dataset takes its schema from the first shard: a column missing from another
            # shard would read as nulls and a column typed differently would fail mid-read.
            shards = [(Path(f.path), f.physical_schema) for f in dataset.get_fragments()]
            dataset = ds.dataset(files, format=file_format, schema=_unified(path, shards))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {arrow_message(exc, fmt, path)}") from None
    return dataset


def _unified(path: Path, shards: Sequence[tuple[Path, pa.Schema]]) -> pa.Schema:
    """One schema for every shard (int and float columns widen to float); a column that
    some shards lack, or whose types cannot be reconciled, is an error naming two shards."""
    names = list(dict.fromkeys(name for _, schema in shards for name in schema.names))
    for name in names:
        having = [(p, schema.field(name).type) for p, schema in shards if name in schema.names]
        lacking = [p for p, schema in shards if name not in schema.names]
        if lacking:
            raise DataError(f"{path}: shard {lacking[0].name} has no column '{name}' but shard "
                            f"{having[0][0].name} has; every shard must hold the same columns")
        for p, data_type in having[1:]:
            try:
                pa.unify_schemas([pa.schema([(name, having[0][1])]),
                                  pa.schema([(name, data_type)])],
                                 promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                raise DataError(f"{path}: column '{name}' is {data_type} in shard {p.name} but "
                                f"{having[0][1]} in shard {having[0][0].name}; every shard must "
                                f"give a column the same type") from None
    return pa.unify_schemas([schema for _, schema in shards], promote_options="permissive")


def arrow_message(exc: BaseException, fmt: str = "csv", path: Path | None = None) -> str:
    """Arrow's error without its layers of context, with CSV rows as line numbers:
    ``b.csv: line 12: expected 6 fields, found 7: 2,0,0,0.0,cat0,11.00,9``."""
    text = one_line(str(exc))
    source = re.search(r"input source '([^']+)'", text)
    text = re.sub(r"^Error creating dataset\. Could not read schema from '[^']*'\. Is this a "
                  r"'\w+' file\?: ", "", text)
    text = re.sub(r"^Could not open \w+ input source '[^']*': ", "", text)
    text = re.sub(r"^(Invalid|IOError): ", "", text)
    text = text.removeprefix("CSV parse error: ")
    text = re.sub(r"Row #(\d+)", lambda m: f"line {m.group(1)}", text)
    text = re.sub(r"Expected (\d+) columns, got (\d+)", r"expected \1 fields, found \2", text)
    if "straddling object straddles" in text:
        text = ("a row is longer than 16 MiB (an unclosed quote, or a huge cell); close the "
                "quote or shorten the cell")
    if text.startswith("Empty CSV file"):
        text = "the file is empty (no header line)"
    if len(text) > 300:  # a bad cell can be megabytes long
        text = text[:300] + " ..."
    shard = Path(source.group(1)) if source and fmt == "csv" else None
    where = f"{shard.name}: " if shard and (path is None or shard != path) else ""
    return f"{where}{text}"


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
        raise DataError(f"{path}: cannot read as {fmt}: {arrow_message(exc, fmt, path)}") from None
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
