"""Training data that does not fit in memory: fragments (Parquet row groups) streamed
through a buffer.

The training split is listed as *fragments* by its data source (one Parquet row group each)
without reading them. Each epoch visits the fragments in a seeded random order, reads about
``buffer_rows`` rows at a time, encodes them with the fitted pipeline and yields shuffled
mini-batches from the buffer, so memory stays flat whatever the number of rows. Under
``torchrun`` every rank takes every ``world_size``-th fragment: no rank reads the whole data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from pydantic import BaseModel

from rankengine.data.batching import Batch, TensorData, iterate_batches
from rankengine.data.dataset import EncodedData, encode_table
from rankengine.data.pipeline import FeaturePipeline
from rankengine.data.source import Fragment, SourceTable, open_source
from rankengine.errors import DataError
from rankengine.graph import TaskGraph


def list_fragments(path: str | Path, sources: SourceTable, *, format: str | None = None,
                   **options: BaseModel | Mapping[str, Any] | None) -> list[Fragment]:
    """Every fragment (a Parquet row group) of ``path``, a file or directory of shards, as its
    data source lists them (metadata only); ``format`` and ``options`` as for ``read_table``."""
    return open_source(path, sources, format=format, **options).fragments()


def read_fragments(fragments: Sequence[Fragment], columns: Sequence[str]) -> pa.Table:
    """The rows of ``fragments`` (in the given order), only ``columns``."""
    tables = [fragment.source.read_fragment(fragment, columns) for fragment in fragments]
    if not tables:
        raise DataError("no rows to read")
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        first = tables[0].schema
        for fragment, table in zip(fragments, tables, strict=True):
            for field in table.schema:
                if field.type != first.field(field.name).type:
                    raise DataError(
                        f"{fragment.path}: column '{field.name}' is {field.type} here but "
                        f"{first.field(field.name).type} in {fragments[0].path}; every shard "
                        f"must give a column the same type") from None
        raise


def sample_fragments(fragments: Sequence[Fragment], rows: int) -> list[Fragment]:
    """Evenly spaced fragments holding about ``rows`` rows (to fit the pipeline on)."""
    total = sum(f.rows for f in fragments)
    if total <= rows:
        return list(fragments)
    step = total / rows
    chosen, seen, next_at = [], 0, 0.0
    for fragment in fragments:
        if seen >= next_at:
            chosen.append(fragment)
            next_at += step * fragment.rows
        seen += fragment.rows
    return chosen


class StreamingData:
    """The training split as buffered, encoded chunks; ``len`` is its row count."""

    def __init__(self, fragments: Sequence[Fragment], columns: Sequence[str],
                 encode: Callable[..., EncodedData], buffer_rows: int) -> None:
        if not fragments:
            raise DataError("streaming: this rank has no fragments (row groups) to train on; "
                            "write the data as more row groups or shards than ranks")
        self.fragments = list(fragments)
        self.columns = list(columns)
        self.encode = encode
        self.buffer_rows = buffer_rows
        self.rows = sum(f.rows for f in fragments)
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.rows

    def chunks(self, generator: torch.Generator) -> list[list[Fragment]]:
        """This epoch's buffers: fragments in a seeded random order, ~buffer_rows each."""
        order = torch.randperm(len(self.fragments), generator=generator,
                               device=generator.device).tolist()
        chunks: list[list[Fragment]] = [[]]
        rows = 0
        for index in order:
            if rows >= self.buffer_rows:
                chunks.append([])
                rows = 0
            chunks[-1].append(self.fragments[index])
            rows += self.fragments[index].rows
        return chunks

    def place(self, device: torch.device, say: Callable[[str], None]) -> None:
        """Buffers go to ``device`` as they are loaded (a buffer is sized to fit)."""
        self.device = device
        if device.type == "cuda":
            say(f"streamed buffers are copied to {device} in the background thread; batches "
                f"are sliced there")

    def batches(self, batch_size: int, generator: torch.Generator,
                keep_groups: bool) -> Iterator[Batch]:
        """Shuffled batches, buffer after buffer; the next buffer is read, encoded (and
        copied to the training device) in a background thread while the current one trains
        (Arrow, numpy and the copy release the GIL)."""
        chunks = self.chunks(generator)
        with ThreadPoolExecutor(1, thread_name_prefix="rankengine-prefetch") as pool:
            pending = pool.submit(self._load, chunks[0])
            for k in range(len(chunks)):
                data = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(self._load, chunks[k + 1])
                yield from iterate_batches(data, batch_size, shuffle=True, generator=generator,
                                           keep_groups=keep_groups)

    def _load(self, chunk: list[Fragment]) -> TensorData:
        data = TensorData(self.encode(read_fragments(chunk, self.columns),
                                      where=f"{chunk[0].path} (+{len(chunk) - 1} row groups)"))
        return data if self.device.type == "cpu" else data.to(self.device)


class EncodeChunk:
    """``encode(table, where=...)``: the training split's encoding, chunk by chunk."""

    def __init__(self, pipeline: FeaturePipeline, graph: TaskGraph, *, policy: str,
                 group: str | None, extras: Sequence[str]) -> None:
        self.pipeline, self.graph = pipeline, graph
        self.policy, self.group, self.extras = policy, group, list(extras)

    def __call__(self, table: pa.Table, *, where: str) -> EncodedData:
        return encode_table(table, self.pipeline, self.graph,
                            policy=self.policy,  # type: ignore[arg-type]
                            group=self.group, extras=self.extras, where=where)
