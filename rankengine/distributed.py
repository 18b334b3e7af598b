"""Data-parallel training on ``torch.distributed``, launched by ``torchrun``.

Every rank holds a full model replica, trains on its own share of the data and, after each
backward pass, all ranks average their gradients with one ``all_reduce`` (NCCL between CUDA
ranks, one device per local rank; gloo between CPU ranks), so every replica takes the same
optimiser step. Gradients are averaged *after* the
loss weighting's own backward, which is what lets gradient-level weightings (GradNorm, PCGrad,
Pareto) run unchanged; that is also why this uses the collective directly rather than the
``DistributedDataParallel`` wrapper, whose reducer fires inside ``backward`` and would be
overwritten by PCGrad's projection. Ranks with uneven data keep stepping with zero
contributions until every rank has run out (the ``Join`` semantics), so no rank waits forever.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    #: this rank's device; collectives run on it (NCCL needs CUDA tensors)
    device: torch.device = CPU

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast_object(self, value: Any) -> Any:
        """``value`` from rank 0 on every rank (any picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_parameters(self, params: Sequence[torch.Tensor]) -> None:
        if self.active:
            for p in params:
                dist.broadcast(p.data, src=0)

    def average_gradients(self, params: Sequence[torch.nn.Parameter], has_batch: bool) -> int:
        """Average ``params``' gradients over the ranks that had a batch (one all_reduce);
        returns how many ranks had one (0: every rank has finished the epoch)."""
        if not self.active:
            return int(has_batch)
        grads = [p.grad if p.grad is not None and has_batch else torch.zeros_like(p)
                 for p in params]
        flag = torch.tensor([float(has_batch)], device=self.device)
        flat = torch.cat([g.reshape(-1).to(self.device) for g in grads] + [flag])
        dist.all_reduce(flat)
        count = round(float(flat[-1]))
        if count:
            offset = 0
            for p in params:
                size = p.numel()
                p.grad = (flat[offset:offset + size] / count).view_as(p).to(p.device)
                offset += size
        return count

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over the ranks, on the device ``values`` came from."""
        if not self.active:
            return values
        out = values.to(self.device, copy=True)
        dist.all_reduce(out)
        return out.to(values.device)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def context_from_env(device: torch.device | None = None) -> DistContext:
    """The process group ``torchrun`` describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR ...), initialised once; a plain run is a world of one on
    ``device``. Asked for CUDA, each rank takes the device of its local rank and NCCL;
    otherwise the ranks stay on the CPU with gloo."""
    device = device or CPU
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)  # NCCL's object collectives use the current device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
