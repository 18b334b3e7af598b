from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

from rankengine.config import CsvOptions
from rankengine.data import io
from rankengine.data.source import open_source
from rankengine.errors import DataError
from rankengine.pluginmanager import load_engine

from ..conftest import REPO

SOURCES = load_engine().components.sources


def read_table(path: Path, columns: list[str] | None = None, **options: object) -> pa.Table:
    return io.read_table(path, columns, sources=SOURCES, **options)  # type: ignore[arg-type]


def test_parquet_file_and_directory_of_shards(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), shards / "part-0.parquet")
    pq.write_table(pa.table({"a": [3], "b": ["z"]}), shards / "part-1.parquet")
    table = read_table(shards, ["a"])
    assert table.column_names == ["a"] and sorted(table.column("a").to_pylist()) == [1, 2, 3]
    single = read_table(shards / "part-1.parquet")
    assert single.num_rows == 1


def test_csv_gz_without_header_and_strip(tmp_path: Path) -> None:
    census = REPO / "data/census-income-kdd/census_income_1994_1995_test.csv.gz"
    names = [f"c{i}" for i in range(42)]
    table = read_table(census, ["c0", "c7", "c41"],
                       csv=CsvOptions(header=False, column_names=names, strip=True,
                                      null_values=[]))
    assert table.num_rows == 99_762
    assert table.column("c0").type == pa.int64()
    assert " " not in table.column("c7")[0].as_py()[:1]
    assert set(table.column("c41").unique().to_pylist()) == {"- 50000.", "50000+."}


def test_missing_column_names_file_and_suggests(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("user_id,click\n1,0\n")
    with pytest.raises(DataError) as info:
        read_table(tmp_path / "d.csv", ["userid"])
    assert "d.csv" in str(info.value) and "did you mean 'user_id'?" in str(info.value)


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_table(tmp_path / "nope.parquet")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match=r"cannot tell the format"):
        read_table(tmp_path / "x.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: directory holds no data files any source reads; "
                                        r"sources: csv \(\.csv, .*\); parquet \(\.parquet, "
                                        r"\.pq\)$"):
        read_table(tmp_path / "empty")


def test_corrupt_parquet_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot read as parquet"):
        read_table(tmp_path / "bad.parquet")


def test_ali_ccp_sample_reads_with_expected_labels() -> None:
    table = read_table(REPO / "data/ali-ccp-sample/ali_ccp_train_sample.csv",
                       ["click", "purchase", "205"])
    assert table.num_rows == 100
    assert sum(table.column("click").to_pylist()) == 7


# -- hostile inputs (issue #13): one DataError naming the shard, the column or the line ----------


def test_a_ragged_csv_row_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,4,5\n")
    with pytest.raises(DataError, match=r"d\.csv: cannot read as csv: line 3: expected 2 "
                                        r"fields, found 3: 3,4,5$"):
        read_table(tmp_path / "d.csv")


def test_an_empty_csv_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"d\.csv: cannot read as csv: the file is empty"):
        read_table(tmp_path / "d.csv")


def test_a_csv_row_longer_than_a_block_names_the_likely_cause(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b\n1,x\n3," + "y" * (40 << 20) + "\n4,z\n")
    with pytest.raises(DataError, match=r"a row is longer than 16 MiB \(an unclosed quote"):
        read_table(tmp_path / "d.csv")


def test_a_huge_bad_cell_is_not_copied_into_the_message() -> None:
    # Arrow quotes the whole cell that failed to convert (a block after the one that typed
    # the column); the message keeps the line and a bounded excerpt
    exc = pa.ArrowInvalid("In CSV column #1: Row #3: CSV conversion error to int64: invalid "
                          "value '" + "y" * (1 << 20) + "'")
    message = open_source(REPO / "data/ali-ccp-sample/ali_ccp_train_sample.csv",
                          SOURCES).error_text(exc)
    assert message.startswith("In CSV column #1: line 3: CSV conversion error to int64")
    assert len(message) < 400


def test_a_directory_mixing_csv_and_parquet_shards_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a\n1\n")
    pq.write_table(pa.table({"a": [2]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"mixes csv \(a\.csv\) and parquet \(b\.parquet\) "
                                        r"shards; keep one format per directory"):
        read_table(tmp_path, ["a"])


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_a_shard_without_a_column_is_refused_not_read_as_nulls(tmp_path: Path,
                                                              suffix: str) -> None:
    first, second = pa.table({"a": [1], "b": [1.5]}), pa.table({"a": [2]})
    for name, table in (("part-0", first), ("part-1", second)):
        if suffix == "csv":
            pa.csv.write_csv(table, tmp_path / f"{name}.csv")
        else:
            pq.write_table(table, tmp_path / f"{name}.parquet")
    with pytest.raises(DataError, match=rf"shard part-1\.{suffix} has no column 'b' but shard "
                                        rf"part-0\.{suffix} has"):
        read_table(tmp_path, ["a", "b"])


def test_shards_typing_a_column_differently_name_both(tmp_path: Path) -> None:
    pq.write_table(pa.table({"b": [1.5]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"b": ["x"]}), tmp_path / "part-1.parquet")
    with pytest.raises(DataError, match=r"column 'b' is string in shard part-1\.parquet but "
                                        r"double in shard part-0\.parquet"):
        read_table(tmp_path, ["b"])


def test_csv_shards_with_int_and_float_values_widen_to_float(tmp_path: Path) -> None:
    (tmp_path / "part-0.csv").write_text("b\n1\n2\n")
    (tmp_path / "part-1.csv").write_text("b\n1.5\n")
    table = read_table(tmp_path, ["b"])
    assert table.column("b").type == pa.float64()
    assert sorted(table.column("b").to_pylist()) == [1.0, 1.5, 2.0]
