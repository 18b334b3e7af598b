"""Mini-batches: shuffled or grouped slices of the encoded columns, moved between devices, and
prepared ahead in a background thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from rankengine.data.batching import Batch, TensorData, iterate_batches, prefetched
from rankengine.data.dataset import EncodedData


def encoded(rows: int = 50) -> EncodedData:
    rng = np.random.default_rng(0)
    return EncodedData(
        categorical=np.arange(rows * 2, dtype=np.int64).reshape(rows, 2),
        dense=rng.random((rows, 3), dtype=np.float32),
        sequences=[np.zeros((rows, 4), dtype=np.int64)],
        labels=(rng.random((rows, 2)) < 0.3).astype(np.float32),
        groups=np.repeat(np.arange(rows // 5), 5).astype(np.int64),
        extras={"w": np.ones(rows)},
    )


def test_a_shuffled_epoch_covers_every_row_once_in_the_generators_order() -> None:
    data = TensorData(encoded())
    first = [b.inputs.ids[:, 0] // 2 for b in iterate_batches(
        data, 16, shuffle=True, generator=torch.Generator().manual_seed(3))]
    rows = torch.cat(first)
    assert sorted(rows.tolist()) == list(range(50))
    again = torch.cat([b.inputs.ids[:, 0] // 2 for b in iterate_batches(
        data, 16, shuffle=True, generator=torch.Generator().manual_seed(3))])
    assert torch.equal(rows, again)


def test_grouped_batches_keep_each_group_whole() -> None:
    data = TensorData(encoded())
    for batch in iterate_batches(data, 12, shuffle=True, keep_groups=True,
                                 generator=torch.Generator().manual_seed(1)):
        assert batch.groups is not None
        _, counts = torch.unique(batch.groups, return_counts=True)
        assert (counts == 5).all()


def test_moved_columns_are_the_same_rows_and_know_their_size() -> None:
    data = TensorData(encoded())
    assert data.nbytes == 50 * (2 * 8 + 3 * 4 + 4 * 8 + 2 * 4 + 1 * 4 + 8)
    moved = data.to(torch.device("cpu"))
    assert moved.device == torch.device("cpu") and len(moved) == 50
    assert torch.equal(moved.slice(0, 50).labels, data.slice(0, 50).labels)
    batch = data.slice(0, 10)
    assert batch.to(torch.device("cpu")) is batch  # already there: no copy


def test_prefetched_batches_are_prepared_in_a_background_thread_in_order() -> None:
    data = TensorData(encoded())
    threads: set[str] = set()

    def prepare(batch: Batch) -> Batch:
        threads.add(threading.current_thread().name)
        return batch

    plain = list(iterate_batches(data, 8, shuffle=False))
    ahead = list(prefetched(iterate_batches(data, 8, shuffle=False), prepare))
    assert [len(b) for b in ahead] == [len(b) for b in plain]
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(ahead, plain, strict=True))
    assert threads and all(name.startswith("rankengine-batches") for name in threads)


def test_an_error_while_preparing_reaches_the_training_loop() -> None:
    def broken(batch: Batch) -> Batch:
        raise ValueError("no pinned memory")

    with pytest.raises(ValueError, match="no pinned memory"):
        list(prefetched(iterate_batches(TensorData(encoded()), 8, shuffle=False), broken))
