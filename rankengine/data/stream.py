"""Training data that does not fit in memory: Parquet row groups streamed through a buffer.

The training split is listed as *fragments* (one Parquet row group each) without reading
them. Each epoch visits the fragments in a seeded random order, reads about ``buffer_rows``
rows at a time, encodes them with the fitted pipeline and yields shuffled mini-batches from
the buffer, so memory stays flat whatever the number of rows. Under ``torchrun`` every rank
takes every ``world_size``-th fragment: no rank reads the whole data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rankengine.data.batching import Batch, TensorData, iterate_batches
from rankengine.data.dataset import EncodedData, encode_table
from rankengine.data.io import shard_files
from rankengine.data.pipeline import FeaturePipeline
from rankengine.errors import DataError
from rankengine.graph import TaskGraph


@dataclass(frozen=True)
class Fragment:
    path: str
    row_group: int
    rows: int


def list_fragments(path: Path) -> list[Fragment]:
    """Every row group of a Parquet file or directory of Parquet shards (metadata only)."""
    files = shard_files(path) if path.is_dir() else [path]
    out = []
    for file in files:
        if not file.name.lower().endswith((".parquet", ".pq")):
            raise DataError(f"{file}: streaming reads Parquet only; convert CSV shards first")
        try:
            meta = pq.ParquetFile(file).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: cannot read Parquet metadata: {exc}") from exc
        out += [Fragment(str(file), g, meta.row_group(g).num_rows)
                for g in range(meta.num_row_groups)]
    return out


def read_fragments(fragments: Sequence[Fragment], columns: Sequence[str]) -> pa.Table:
    """The rows of ``fragments`` (in the given order), only ``columns``."""
    tables = []
    for fragment in fragments:
        try:
            parquet = pq.ParquetFile(fragment.path)
            available = parquet.schema_arrow.names
            missing = [c for c in columns if c not in available]
            if missing:
                raise DataError(f"{fragment.path}: no column '{missing[0]}'; columns: "
                                f"{', '.join(available)}")
            tables.append(parquet.read_row_group(fragment.row_group, columns=list(columns)))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{fragment.path}: cannot read row group {fragment.row_group}: "
                            f"{exc}") from exc
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
            raise DataError("streaming: this rank has no row groups to train on; write the "
                            "data as more Parquet row groups or shards than ranks")
        self.fragments = list(fragments)
        self.columns = list(columns)
        self.encode = encode
        self.buffer_rows = buffer_rows
        self.rows = sum(f.rows for f in fragments)

    def __len__(self) -> int:
        return self.rows

    def chunks(self, generator: torch.Generator) -> list[list[Fragment]]:
        """This epoch's buffers: fragments in a seeded random order, ~buffer_rows each."""
        order = torch.randperm(len(self.fragments), generator=generator).tolist()
        chunks: list[list[Fragment]] = [[]]
        rows = 0
        for index in order:
            if rows >= self.buffer_rows:
                chunks.append([])
                rows = 0
            chunks[-1].append(self.fragments[index])
            rows += self.fragments[index].rows
        return chunks

    def batches(self, batch_size: int, generator: torch.Generator,
                keep_groups: bool) -> Iterator[Batch]:
        """Shuffled batches, buffer after buffer; the next buffer is read and encoded in a
        background thread while the current one trains (Arrow and numpy release the GIL)."""
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
        return TensorData(self.encode(read_fragments(chunk, self.columns),
                                      where=f"{chunk[0].path} (+{len(chunk) - 1} row groups)"))


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
