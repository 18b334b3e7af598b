from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rankengine.config import CsvOptions
from rankengine.data.io import read_table
from rankengine.errors import DataError

from ..conftest import REPO


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
    with pytest.raises(DataError, match=r"holds no \.parquet or \.csv files"):
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
