"""Data sources: the built-in csv and parquet sources, and a third-party JSON Lines source
registered in-process that the core picks by ``[data] format`` and by suffix, streams, counts
and fingerprints (the encoding cache's key) without any change to the core."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from rankengine import DataError, DataSource, PluginError, Register, hookimpl
from rankengine.components import ComponentTable
from rankengine.config import CsvOptions, load_config
from rankengine.data import cache
from rankengine.data.io import read_table
from rankengine.data.source import open_source
from rankengine.data.stream import list_fragments, read_fragments
from rankengine.pluginmanager import load_engine

from ..conftest import tiny_config_text


class JsonLinesSource(DataSource):
    """One JSON object per line; a directory of ``.jsonl`` shards; keyed by content."""

    suffixes = (".jsonl", ".ndjson")

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        try:
            table = pa.concat_tables([pa_json.read_json(f) for f in self.files()],
                                     promote_options="permissive")
        except pa.ArrowInvalid as exc:
            raise self.read_error(exc) from None
        if columns:
            self.missing_columns(columns, table.column_names)
            table = table.select(list(columns))
        return table

    def schema(self) -> pa.Schema:
        return self.read().schema

    def fingerprint(self) -> str:  # content, not mtime: touching a file keeps the cache
        digest = hashlib.sha256()
        for file in self.files():
            digest.update(file.read_bytes())
        return digest.hexdigest()


class JsonLinesPlugin:
    @hookimpl
    def rankengine_register_sources(self, register: Register[Any]) -> None:
        register("jsonl", JsonLinesSource, help="JSON Lines files (.jsonl, .ndjson)")


@pytest.fixture(scope="module")
def sources() -> ComponentTable[Any]:
    return load_engine(extra=[("jsonl", JsonLinesPlugin())]).components.sources


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(f"{json.dumps(r)}\n" for r in rows))
    return path


ROWS = [{"user": f"u{i}", "click": i % 2, "price": i * 1.5} for i in range(5)]


def test_builtins_are_registered_as_sources() -> None:
    table = load_engine().components.sources
    assert table.names() == ["csv", "parquet"]
    assert {c.plugin for c in table} == {"sources"}


def test_a_third_party_source_is_picked_by_suffix_and_by_format(
        sources: ComponentTable[Any], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "events.jsonl", ROWS)
    table = read_table(path, ["click", "user"], sources=sources)
    assert table.column_names == ["click", "user"] and table.num_rows == 5
    # a name no source accepts: only [data] format can pick it
    other = write_jsonl(tmp_path / "events.log", ROWS)
    with pytest.raises(DataError, match=r"events\.log: cannot tell the format from the name; no "
                                        r"data source accepts it \(sources: csv \(.*\); jsonl "
                                        r"\(\.jsonl, \.ndjson\); parquet \(\.parquet, \.pq\)\); "
                                        r"rename it or set \[data\] format = one of csv, jsonl, "
                                        r"parquet$"):
        read_table(other, sources=sources)
    assert read_table(other, sources=sources, format="jsonl").num_rows == 5
    # the source's own errors keep the file, column and what exists
    with pytest.raises(DataError, match=r"events\.log: column 'clik' is required by the "
                                        r"configuration .*did you mean 'click'\?"):
        read_table(other, ["clik"], sources=sources, format="jsonl")


def test_format_is_a_config_key_and_an_unknown_one_names_the_sources(
        sources: ComponentTable[Any], tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text(tiny_config_text(tmp_path).replace('group = "request_id"',
                                                          'group = "request_id"\nformat = "jsonl"'))
    assert load_config(config).data.format == "jsonl"
    path = write_jsonl(tmp_path / "events.jsonl", ROWS)
    with pytest.raises(DataError, match=r"events\.jsonl: unknown data format 'jsonn' \(\[data\] "
                                        r"format\); did you mean 'jsonl'\?; available sources: "
                                        r"csv, jsonl, parquet$"):
        read_table(path, sources=sources, format="jsonn")
    # without the plugin the format is unknown, and the message says what is there
    with pytest.raises(DataError, match=r"unknown data format 'jsonl'.*available sources: csv, "
                                        r"parquet$"):
        read_table(path, sources=load_engine().components.sources, format="jsonl")


def test_a_third_party_source_streams_counts_and_shards(sources: ComponentTable[Any],
                                                         tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-0.jsonl", ROWS[:3])
    write_jsonl(shards / "part-1.ndjson", ROWS[3:])
    (shards / "_SUCCESS").write_text("")  # not a shard
    source = open_source(shards, sources)
    assert isinstance(source, JsonLinesSource) and source.name == "jsonl"
    assert [f.name for f in source.files()] == ["part-0.jsonl", "part-1.ndjson"]
    assert source.num_rows() == 5
    batches = list(source.batches(["user"], batch_rows=2))
    assert max(b.num_rows for b in batches) <= 2 and sum(b.num_rows for b in batches) == 5
    assert [u for b in batches for u in b.column(0).to_pylist()] == [r["user"] for r in ROWS]
    assert source.take([0, 4], ["price"]).column("price").to_pylist() == [0.0, 6.0]
    # streaming training needs fragments; a source that has none says so, naming itself
    with pytest.raises(DataError, match=r"shards: streaming and distributed training read the "
                                        r"data in fragments .* data source 'jsonl' cannot list"):
        list_fragments(shards, sources)


def test_the_fingerprint_keys_the_encoding_cache(sources: ComponentTable[Any],
                                                 tmp_path: Path) -> None:
    for split in ("train", "valid", "test"):
        write_jsonl(tmp_path / f"{split}.jsonl", ROWS)
    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(tmp_path).replace(".parquet", ".jsonl"))
    config = load_config(path)
    key = cache.cache_key(config, {}, [], sources)
    # content-keyed: a touched file is the same data (the default fingerprint uses mtime)
    os.utime(tmp_path / "train.jsonl", ns=(1, 1))
    assert cache.cache_key(config, {}, [], sources) == key
    write_jsonl(tmp_path / "train.jsonl", ROWS[:4])
    assert cache.cache_key(config, {}, [], sources) != key


def test_parquet_lists_row_groups_and_streams(tmp_path: Path) -> None:
    sources = load_engine().components.sources
    pq.write_table(pa.table({"a": list(range(10))}), tmp_path / "d.parquet", row_group_size=4)
    source = open_source(tmp_path / "d.parquet", sources)
    assert source.num_rows() == 10 and source.schema().names == ["a"]
    fragments = list_fragments(tmp_path / "d.parquet", sources)
    assert [(f.index, f.rows) for f in fragments] == [(0, 4), (1, 4), (2, 2)]
    assert read_fragments(fragments[1:], ["a"]).column("a").to_pylist() == [4, 5, 6, 7, 8, 9]
    assert sum(b.num_rows for b in source.batches(["a"], batch_rows=3)) == 10
    before = source.fingerprint()
    pq.write_table(pa.table({"a": [1]}), tmp_path / "d.parquet")
    assert open_source(tmp_path / "d.parquet", sources).fingerprint() != before


def test_csv_options_reach_the_csv_source(tmp_path: Path) -> None:
    sources = load_engine().components.sources
    (tmp_path / "d.tsv").write_text("a;b\n1; x \n2;y\n")
    options = CsvOptions(delimiter=";", strip=True)
    table = read_table(tmp_path / "d.tsv", sources=sources, csv=options)
    assert table.column("b").to_pylist() == ["x", "y"]
    streamed = open_source(tmp_path / "d.tsv", sources, csv=options).batches(["b"])
    assert [v for b in streamed for v in b.column(0).to_pylist()] == ["x", "y"]
    with pytest.raises(DataError, match=r"d\.tsv: \[data\.csv\] delimiter: String should have "
                                        r"at most 1 character"):
        read_table(tmp_path / "d.tsv", sources=sources, csv={"delimiter": ";;"})


def test_a_source_that_is_not_a_data_source_is_a_plugin_error(tmp_path: Path) -> None:
    class Bad:
        @hookimpl
        def rankengine_register_sources(self, register: Register[Any]) -> None:
            register("bad", lambda path, params: path)

    sources = load_engine([], extra=[("bad", Bad())]).components.sources
    (tmp_path / "d.csv").write_text("a\n1\n")
    with pytest.raises(PluginError, match=r"data source 'bad' of plugin 'bad' is .*; expected a "
                                          r"subclass of rankengine\.DataSource"):
        read_table(tmp_path / "d.csv", sources=sources)
