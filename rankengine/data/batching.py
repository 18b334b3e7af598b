"""Vectorised mini-batches: a shuffled index sliced into chunks, gathered column-wise.

No per-row Python: a batch is one ``index_select`` per array.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rankengine.data.dataset import EncodedData


@dataclass
class Batch:
    categorical: torch.Tensor  # int64 [B, C]
    dense: torch.Tensor  # float32 [B, D]
    sequences: list[torch.Tensor]  # int64 [B, L_i]
    labels: torch.Tensor  # float32 [B, T]
    extras: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class TensorData:
    """EncodedData as torch tensors (zero-copy views of the numpy arrays)."""

    def __init__(self, data: EncodedData) -> None:
        self.categorical = torch.from_numpy(data.categorical)
        self.dense = torch.from_numpy(data.dense)
        self.sequences = [torch.from_numpy(s) for s in data.sequences]
        self.labels = torch.from_numpy(data.labels)
        self.extras = {k: torch.from_numpy(v).float() for k, v in data.extras.items()}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, rows: torch.Tensor) -> Batch:
        return Batch(
            self.categorical.index_select(0, rows),
            self.dense.index_select(0, rows),
            [s.index_select(0, rows) for s in self.sequences],
            self.labels.index_select(0, rows),
            {k: v.index_select(0, rows) for k, v in self.extras.items()},
        )

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(
            self.categorical[start:stop], self.dense[start:stop],
            [s[start:stop] for s in self.sequences], self.labels[start:stop],
            {k: v[start:stop] for k, v in self.extras.items()},
        )


def iterate_batches(
    data: TensorData, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[Batch]:
    n = len(data)
    if not shuffle:
        for start in range(0, n, batch_size):
            yield data.slice(start, min(start + batch_size, n))
        return
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield data.batch(order[start : start + batch_size])
