"""Vectorised mini-batches: a shuffled index sliced into chunks, gathered column-wise.

No per-row Python: a batch is one ``index_select`` per array.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from rankengine.data.dataset import EncodedData


@dataclass
class ModelInput:
    """What the model's forward takes: encoded features only, no labels.

    ``ids`` holds one id column per ``ids`` feature, ``dense`` the float columns of ``dense``
    features, ``id_lists`` one ``[R, length]`` tensor per ``id_list`` feature (layout order).
    R is B, or the number of contexts: a sequence of the context side is sent once per
    context (a served request: R = 1), and row ``b`` reads its row ``context_rows[b]``
    (default ``b mod R``), so the model pools and encodes it once per context.
    """

    ids: torch.Tensor  # int64 [B, C]
    dense: torch.Tensor  # float32 [B, D]
    id_lists: list[torch.Tensor]  # int64 [R, L_i]
    context_rows: torch.Tensor | None = None  # int64 [B], into the id_lists' rows

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> ModelInput:
        return ModelInput(self.ids.to(device, non_blocking=non_blocking),
                          self.dense.to(device, non_blocking=non_blocking),
                          [s.to(device, non_blocking=non_blocking) for s in self.id_lists],
                          None if self.context_rows is None
                          else self.context_rows.to(device, non_blocking=non_blocking))

    @staticmethod
    def from_numpy(ids: np.ndarray, dense: np.ndarray, id_lists: Sequence[np.ndarray]
                   ) -> ModelInput:
        return ModelInput(torch.from_numpy(ids), torch.from_numpy(dense),
                          [torch.from_numpy(s) for s in id_lists])


def per_context(inputs: ModelInput, groups: torch.Tensor,
                context_side: Sequence[bool]) -> ModelInput:
    """``inputs`` with each context-side sequence cut to one row per group (a request) and
    ``context_rows`` pointing every row at its group's: the model then pools and encodes a
    request's sequences once, as serving does. Unchanged where a group's rows do not all carry
    the same sequences (a ``group`` column that is not a request) or nothing is saved."""
    if not any(context_side) or inputs.context_rows is not None:
        return inputs
    rows = groups.shape[0]
    unique, inverse = torch.unique(groups, return_inverse=True)
    if len(unique) == rows:
        return inputs
    first = torch.full((len(unique),), rows, dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, inverse, torch.arange(rows, device=groups.device), "amin")
    lists = []
    for sequence, context in zip(inputs.id_lists, context_side, strict=True):
        if context:
            kept = sequence.index_select(0, first)
            if not torch.equal(kept.index_select(0, inverse), sequence):
                return inputs
            sequence = kept
        lists.append(sequence)
    return ModelInput(inputs.ids, inputs.dense, lists, inverse)


@dataclass
class Batch:
    """One training / evaluation mini-batch: the model input and what the objective needs."""

    inputs: ModelInput
    labels: torch.Tensor  # float32 [B, T]
    extras: dict[str, torch.Tensor]
    groups: torch.Tensor | None = None  # int64 [B]; a group's rows are contiguous

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pin_memory(self) -> Batch:
        """The batch in page-locked host memory (what a non-blocking copy to a GPU needs)."""
        return Batch(ModelInput(self.inputs.ids.pin_memory(), self.inputs.dense.pin_memory(),
                                [s.pin_memory() for s in self.inputs.id_lists]),
                     self.labels.pin_memory(),
                     {k: v.pin_memory() for k, v in self.extras.items()},
                     None if self.groups is None else self.groups.pin_memory())

    def to(self, device: torch.device, *, non_blocking: bool = False) -> Batch:
        """The batch on ``device`` (itself when it is there already)."""
        if self.labels.device == device:
            return self
        return Batch(self.inputs.to(device, non_blocking=non_blocking),
                     self.labels.to(device, non_blocking=non_blocking),
                     {k: v.to(device, non_blocking=non_blocking)
                      for k, v in self.extras.items()},
                     None if self.groups is None
                     else self.groups.to(device, non_blocking=non_blocking))


class TensorData:
    """EncodedData as torch tensors (zero-copy views of the numpy arrays)."""

    def __init__(self, data: EncodedData) -> None:
        self.categorical = torch.from_numpy(data.categorical)
        self.dense = torch.from_numpy(data.dense)
        self.sequences = [torch.from_numpy(s) for s in data.sequences]
        self.labels = torch.from_numpy(data.labels)
        self.extras = {k: torch.from_numpy(v).float() for k, v in data.extras.items()}
        self.groups = None if data.groups is None else torch.from_numpy(data.groups)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.labels.device

    @property
    def nbytes(self) -> int:
        tensors = [self.categorical, self.dense, *self.sequences, self.labels,
                   *self.extras.values(), *([] if self.groups is None else [self.groups])]
        return sum(t.element_size() * t.numel() for t in tensors)

    def to(self, device: torch.device) -> TensorData:
        """The same rows on ``device``: batches are then sliced there, with no copy per step."""
        moved = object.__new__(TensorData)
        moved.categorical = self.categorical.to(device)
        moved.dense = self.dense.to(device)
        moved.sequences = [s.to(device) for s in self.sequences]
        moved.labels = self.labels.to(device)
        moved.extras = {k: v.to(device) for k, v in self.extras.items()}
        moved.groups = None if self.groups is None else self.groups.to(device)
        return moved

    def batch(self, rows: torch.Tensor) -> Batch:
        return Batch(
            ModelInput(self.categorical.index_select(0, rows), self.dense.index_select(0, rows),
                       [s.index_select(0, rows) for s in self.sequences]),
            self.labels.index_select(0, rows),
            {k: v.index_select(0, rows) for k, v in self.extras.items()},
            None if self.groups is None else self.groups.index_select(0, rows),
        )

    def slice(self, start: int, stop: int) -> Batch:
        return Batch(
            ModelInput(self.categorical[start:stop], self.dense[start:stop],
                       [s[start:stop] for s in self.sequences]),
            self.labels[start:stop],
            {k: v[start:stop] for k, v in self.extras.items()},
            None if self.groups is None else self.groups[start:stop],
        )


def iterate_batches(
    data: TensorData, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
    keep_groups: bool = False,
) -> Iterator[Batch]:
    """Mini-batches of ``batch_size`` rows; with ``keep_groups`` whole request groups are
    shuffled (rows of a group stay together, contiguous) and batches end at group boundaries."""
    n = len(data)
    if keep_groups:
        yield from _group_batches(data, batch_size, shuffle, generator)
        return
    if not shuffle:
        for start in range(0, n, batch_size):
            yield data.slice(start, min(start + batch_size, n))
        return
    order = _permutation(n, generator, data.device)
    for start in range(0, n, batch_size):
        yield data.batch(order[start : start + batch_size])


def _group_batches(data: TensorData, batch_size: int, shuffle: bool,
                   generator: torch.Generator | None) -> Iterator[Batch]:
    if data.groups is None:
        raise ValueError("keep_groups needs group ids ([data] group)")
    by_group = torch.sort(data.groups, stable=True).indices
    _, sizes = torch.unique_consecutive(data.groups[by_group], return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    device = data.device
    order = _permutation(len(sizes), generator, device) if shuffle \
        else torch.arange(len(sizes), device=device)
    # Row index of every row, group after group in the (shuffled) group order.
    group_sizes = sizes[order]
    offsets = torch.repeat_interleave(starts[order] - (torch.cumsum(group_sizes, 0)
                                                       - group_sizes), group_sizes)
    rows = by_group[torch.arange(len(offsets), device=device) + offsets]
    # Cut after the group that makes a batch reach batch_size rows.
    ends = torch.cumsum(group_sizes, 0)
    cut = torch.unique(torch.div(ends - 1, batch_size, rounding_mode="floor"),
                       return_inverse=True)[1]
    last_of_batch = torch.ones(len(ends), dtype=torch.bool, device=device)
    last_of_batch[:-1] = cut[1:] != cut[:-1]
    start = 0
    for stop in ends[last_of_batch].tolist():
        yield data.batch(rows[start:stop])
        start = stop


def _permutation(n: int, generator: torch.Generator | None, device: torch.device,
                 ) -> torch.Tensor:
    """A random order of ``n`` rows drawn by ``generator`` (on its own device, so the same
    seed gives the same order wherever the data lives), on ``device``."""
    where = generator.device if generator is not None else device
    return torch.randperm(n, generator=generator, device=where).to(device)


def prefetched(batches: Iterator[Batch], prepare: Callable[[Batch], Batch]) -> Iterator[Batch]:
    """``batches``, each gathered and passed through ``prepare`` (e.g. pinned for a
    non-blocking copy to a GPU) in a background thread while the previous one is used."""
    def produce() -> Batch | None:
        batch = next(batches, None)
        return None if batch is None else prepare(batch)

    with ThreadPoolExecutor(1, thread_name_prefix="rankengine-batches") as pool:
        pending = pool.submit(produce)
        while True:
            batch = pending.result()
            if batch is None:
                return
            pending = pool.submit(produce)
            yield batch
