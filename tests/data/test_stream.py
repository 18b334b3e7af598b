"""Streaming the training split from Parquet row groups: every row once per epoch, bounded
buffers, rank shards, and a model as good as the in-memory one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rankengine.config import load_config
from rankengine.data import stream
from rankengine.data.source import Fragment
from rankengine.data.stream import EncodeChunk, StreamingData, read_fragments, sample_fragments
from rankengine.errors import ConfigError, DataError
from rankengine.plan import make_plan
from rankengine.pluginmanager import Engine, load_engine
from rankengine.train import train

from ..conftest import tiny_config_text


def list_fragments(path: Path) -> list[Fragment]:
    return stream.list_fragments(path, load_engine().components.sources)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> Path:
    """The funnel's train split as 3 Parquet shards of 2,000-row row groups."""
    out = tmp_path_factory.mktemp("shards")
    table = pq.read_table(funnel_dir / "train.parquet")
    third = table.num_rows // 3
    for i in range(3):
        part = table.slice(i * third, third if i < 2 else table.num_rows - 2 * third)
        pq.write_table(part, out / f"part-{i}.parquet", row_group_size=2000)
    return out


def test_fragments_cover_every_row_once(shards: Path) -> None:
    fragments = list_fragments(shards)
    assert len(fragments) == 12 and sum(f.rows for f in fragments) == 24_000
    table = read_fragments(fragments[3:5], ["request_id"])
    assert table.num_rows == fragments[3].rows + fragments[4].rows
    sample = sample_fragments(fragments, 5000)
    assert 4000 <= sum(f.rows for f in sample) <= 8000
    assert len({f.path for f in sample}) == 3  # spread over the shards, not the first one
    with pytest.raises(DataError, match="no column 'colour'"):
        read_fragments(fragments[:1], ["colour"])


def test_streamed_epochs_see_every_row_once_in_bounded_chunks(
        shards: Path, funnel_dir: Path, engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir))
    config = load_config(path)
    plan = make_plan(config, engine)
    graph, pipeline = plan.graph, plan.pipeline
    fragments = list_fragments(shards)
    columns = [*{c for f in config.features for c in [f.source]},
               "click", "favorite", "order", "pay", "dwell_time", "request_id"]
    pipeline.fit(read_fragments(fragments[:2], columns))
    chunks: list[int] = []

    def encode(table, *, where):  # type: ignore[no-untyped-def]
        chunks.append(table.num_rows)
        return EncodeChunk(pipeline, graph, policy="error", group=None,
                           extras=["request_id"])(table, where=where)

    data = StreamingData(fragments, columns, encode, buffer_rows=5000)
    generator = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        seen = np.concatenate([b.extras["request_id"].numpy() for b in
                               data.batches(512, generator, keep_groups=False)])
        epochs.append(seen)
    expected = np.sort(np.asarray(pq.read_table(shards, columns=["request_id"])
                                  .column("request_id"), dtype=np.float32))
    for seen in epochs:
        assert np.array_equal(np.sort(seen), expected)
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    assert max(chunks) <= 5000 + 2000 - 1  # one buffer plus at most one row group


def test_streaming_trains_like_in_memory(shards: Path, funnel_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "engine.toml"
    text = tiny_config_text(funnel_dir)
    path.write_text(text)
    in_memory = train(load_config(path), progress=False).result.metrics["test"]
    path.write_text(text.replace(f'train = "{funnel_dir / "train.parquet"}"',
                                 f'train = "{shards}"\nstreaming = true\nbuffer_rows = 6000'))
    streamed = train(load_config(path), progress=False)
    metrics = streamed.result.metrics["test"]
    for task in ("click", "order"):
        assert metrics[task]["auc"] == pytest.approx(in_memory[task]["auc"], abs=0.03)
    assert streamed.result.rows["train"] == 24_000


def test_streaming_needs_a_valid_file_and_parquet(funnel_dir: Path, tmp_path: Path,
                                                  shards: Path) -> None:
    path = tmp_path / "engine.toml"
    text = tiny_config_text(funnel_dir)
    path.write_text(text.replace(f'valid = "{funnel_dir / "valid.parquet"}"\n', "")
                    .replace('group = "request_id"', 'group = "request_id"\nstreaming = true'))
    with pytest.raises(ConfigError, match=r"data\.valid"):
        train(load_config(path), progress=False)
    csv = tmp_path / "train.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"train\.csv: streaming and distributed training read "
                                        r"the data in fragments \(row groups\), which data "
                                        r"source 'csv' cannot list"):
        list_fragments(csv)


def test_shards_typing_a_column_differently_name_the_shard(tmp_path: Path) -> None:
    import pyarrow as pa

    pq.write_table(pa.table({"b": [1.5]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"b": ["x"]}), tmp_path / "b.parquet")
    fragments = list_fragments(tmp_path)
    with pytest.raises(DataError, match=r"b\.parquet: column 'b' is string here but double in "
                                        r".*a\.parquet"):
        read_fragments(fragments, ["b"])
