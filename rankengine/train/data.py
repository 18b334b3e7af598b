"""The training data of a run: fit the feature pipeline and encode the splits, in memory, from
the encoding cache, or streamed by row group (one share per rank)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import torch

from rankengine.data import cache as data_cache
from rankengine.data.batching import Batch, TensorData, iterate_batches, prefetched
from rankengine.data.dataset import EncodedData, encode_table, oracle_columns
from rankengine.data.io import read_table
from rankengine.data.stream import (
    EncodeChunk,
    StreamingData,
    list_fragments,
    read_fragments,
    sample_fragments,
)
from rankengine.device import fits_on
from rankengine.distributed import DistContext
from rankengine.errors import ConfigError, DataError
from rankengine.plan import Plan
from rankengine.train.splits import needed_columns, read_splits


class InMemoryData:
    """The encoded training split held in memory."""

    def __init__(self, data: EncodedData) -> None:
        self.tensors = TensorData(data)
        self.pin = False

    def __len__(self) -> int:
        return len(self.tensors)

    def place(self, device: torch.device, say: Callable[[str], None]) -> None:
        """For a GPU: the columns moved there once when they fit (batches are then sliced on
        the device, no copy per step); otherwise batches gathered into pinned memory by a
        background thread, for a non-blocking copy."""
        if device.type != "cuda":
            return
        size = self.tensors.nbytes
        if fits_on(device, size):
            self.tensors = self.tensors.to(device)
            say(f"training columns on {device} ({size / 2**20:,.0f} MiB): batches are "
                f"sliced there")
        else:
            self.pin = True
            say(f"training columns ({size / 2**20:,.0f} MiB) stay in host memory: batches are "
                f"pinned in a background thread and copied without blocking")

    def batches(self, batch_size: int, generator: torch.Generator,
                keep_groups: bool) -> Iterator[Batch]:
        batches = iterate_batches(self.tensors, batch_size, shuffle=True, generator=generator,
                                  keep_groups=keep_groups)
        return prefetched(batches, Batch.pin_memory) if self.pin else batches



@dataclass
class PreparedData:
    train: InMemoryData | StreamingData
    encoded: dict[str, EncodedData]  # valid, test, and train when it is in memory
    sources: dict[str, str]



def extra_columns(plan: Plan) -> list[str]:
    """Columns read next to features and labels: the simulator's oracles (when present) and
    what the sample weighting reads."""
    return [*oracle_columns(plan.graph), *plan.sample_weighting.columns()]


def prepare_data(plan: Plan, dist: DistContext, say: Callable[[str], None]) -> PreparedData:
    """Fit the plan's pipeline and encode the splits: all in memory for a plain run; with
    streaming or several ranks, each rank's share of the training row groups, fitted once on
    rank 0."""
    config, engine, graph, pipeline = plan.config, plan.engine, plan.graph, plan.pipeline
    sample_weighting, extras = plan.sample_weighting, extra_columns(plan)
    if not config.data.streaming and not dist.active:
        encoded, sources = encoded_splits(plan, say)
        for split, split_data in encoded.items():
            sample_weighting.check(split_data.extras, where=sources.get(split, split))
        return PreparedData(InMemoryData(encoded["train"]), encoded, sources)
    data = config.data
    why = "streaming" if data.streaming else "distributed training"
    if not data.valid:
        raise ConfigError(f"{why} needs a separate [data] valid file (the training split is "
                          f"never read whole, so nothing can be held out of it)",
                          source=config.source, key="data.valid")
    train_path = config.resolve_path(data.train)
    if not train_path.exists():
        raise ConfigError(f"data file or directory not found: {train_path}",
                          source=config.source, key="data.train")
    every_fragment = list_fragments(train_path, engine.components.sources, format=data.format,
                                    csv=data.csv)
    if not any(fragment.rows for fragment in every_fragment):
        raise DataError(f"{train_path}: no rows to train on")
    fragments = every_fragment[dist.rank::dist.world_size]
    columns = needed_columns(config, graph, pipeline, extras)
    where = f"{train_path} (rank {dist.rank} of {dist.world_size})" if dist.active \
        else str(train_path)
    state = None
    if dist.is_main:
        # Spread over every rank's row groups, bounded by fit_rows.
        sample = read_fragments(sample_fragments(every_fragment, data.fit_rows), columns)
        pipeline.fit(sample, where=where)
        say(f"fitted the features on {sample.num_rows:,} rows of {train_path}")
        state = pipeline.state()
    pipeline.load_state(dist.broadcast_object(state))
    encode = EncodeChunk(pipeline, graph, policy=data.inconsistent, group=data.group,
                         extras=extras)

    def checked(table: pa.Table, *, where: str) -> EncodedData:
        chunk = encode(table, where=where)
        sample_weighting.check(chunk.extras, where=where)
        return chunk

    train_data: InMemoryData | StreamingData
    if data.streaming:
        train_data = StreamingData(fragments, columns, checked, data.buffer_rows)
    else:
        train_data = InMemoryData(checked(read_fragments(fragments, columns), where=where))
    sources = {"train": where}
    encoded = {}
    for split in ("valid", "test"):
        path = getattr(data, split)
        if path:
            resolved = config.resolve_path(path)
            if not resolved.exists():
                raise ConfigError(f"data file or directory not found: {resolved}",
                                  source=config.source, key=f"data.{split}")
            table = read_table(resolved, columns, sources=engine.components.sources,
                               format=data.format, csv=data.csv)
            encoded[split] = encode(table, where=str(resolved))
            sample_weighting.check(encoded[split].extras, where=str(resolved))
            sources[split] = str(resolved)
    say(f"training on {len(train_data):,} rows" + (" (streamed)" if data.streaming else "")
        + f"; valid {len(encoded['valid']):,}"
        + (f", test {len(encoded['test']):,}" if "test" in encoded else "") + " rows")
    return PreparedData(train_data, encoded, sources)



def encoded_splits(plan: Plan, say: Callable[[str], None],
                   ) -> tuple[dict[str, EncodedData], dict[str, str]]:
    """Read, fit and encode the splits, or take them from ``[data] cache_dir``."""
    config, engine, graph, pipeline = plan.config, plan.engine, plan.graph, plan.pipeline
    extras = extra_columns(plan)
    cache_root = config.resolve_path(config.data.cache_dir) if config.data.cache_dir else None
    key = ""
    if cache_root is not None:
        tasks = {n.name: n.spec.model_dump(mode="json") for n in graph.nodes}
        key = data_cache.cache_key(config, tasks, extras, engine.components.sources)
        hit = data_cache.load(cache_root, key)
        if hit is not None:
            state, encoded, sources = hit
            pipeline.load_state(state)
            say(f"encoded data from cache {cache_root / key}")
            return encoded, sources
    columns = needed_columns(config, graph, pipeline, extras)
    splits = read_splits(config, columns, config.engine.seed, engine)
    say(f"read {splits.train.num_rows:,} train / {splits.valid.num_rows:,} valid"
        + (f" / {splits.test.num_rows:,} test" if splits.test is not None else "") + " rows")
    pipeline.fit(splits.train, where=splits.sources["train"])
    encoded = {}
    for name, table in (("train", splits.train), ("valid", splits.valid), ("test", splits.test)):
        if table is not None:
            encoded[name] = encode_table(
                table, pipeline, graph, policy=config.data.inconsistent,
                group=config.data.group, extras=extras, where=splits.sources[name])
    if cache_root is not None:
        data_cache.store(cache_root, key, pipeline.state(), encoded, splits.sources)
    return encoded, splits.sources
