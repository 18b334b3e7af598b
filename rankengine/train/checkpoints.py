"""The run's checkpoint policy: when to write, which to resume from, and checking a
checkpoint against this run before any of it is used."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rankengine.checkpoint import (
    CheckpointError,
    Position,
    check_generator_state,
    check_rng_state,
    load_latest,
    load_module_state,
    load_optimizer_state,
    load_state_dict_checked,
)
from rankengine.checkpoint import save as save_checkpoint
from rankengine.config import EngineConfig
from rankengine.distributed import DistContext
from rankengine.interfaces import LossWeighting
from rankengine.train.stopping import EarlyStopper


class Checkpoints:
    """Where and when this run checkpoints; only rank 0 writes."""

    def __init__(self, config: EngineConfig, dist: DistContext) -> None:
        assert config.train.checkpoint_dir is not None
        self.directory = config.resolve_path(config.train.checkpoint_dir)
        self.every = config.train.checkpoint_every
        self.keep = config.train.keep_checkpoints
        self.dist = dist
        self.fingerprint = config_fingerprint(config)
        self.source = config.source
        self.path: Path | None = None  # the checkpoint latest() returned

    def due(self, global_steps: int) -> bool:
        return bool(self.every) and global_steps % self.every == 0

    def save(self, position: Position, state: dict[str, Any]) -> None:
        if self.dist.is_main:
            save_checkpoint(self.directory, position,
                            {**state, "fingerprint": self.fingerprint}, keep=self.keep)
        self.dist.barrier()

    def latest(self, say: Callable[[str], None]) -> tuple[Position, dict[str, Any]] | None:
        found = load_latest(self.directory)
        if found is None:
            say(f"no checkpoint in {self.directory}; starting from scratch")
            return None
        position, state, path = found
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{path} was written by a run with another configuration (only [train] "
                f"epochs, progress, device, compile and the checkpoint keys may change "
                f"between runs); move it away or use another checkpoint_dir")
        for key, kind in _CHECKPOINT_TYPES.items():
            if not isinstance(state.get(key), kind):
                raise CheckpointError(
                    f"{path}: '{key}': expected {' or '.join(k.__name__ for k in kind)}, "
                    f"found {type(state.get(key)).__name__}")
        # Unusable states fail here, on throwaway generators, not after a replayed epoch.
        check_rng_state(state["rng"], f"{path}: 'rng'")
        check_generator_state(state["epoch_generator"], f"{path}: 'epoch_generator'")
        if state["ranking_generator"] is not None:
            check_generator_state(state["ranking_generator"], f"{path}: 'ranking_generator'")
        self.path = path
        say(f"resuming from {path} (epoch {position.epoch}, after {position.batches} steps)")
        return position, state

    def restore(self, state: dict[str, Any], model: torch.nn.Module, weighting: LossWeighting,
                stopper: EarlyStopper, tasks: int,
                ranking_generator: torch.Generator | None,
                ema: torch.nn.Module | None = None) -> None:
        """Load what :meth:`latest` returned into this run's objects; every mismatch is a
        one-line :class:`CheckpointError` naming the file."""
        where = str(self.path)
        load_state_dict_checked(model, state["model"], f"{where}: 'model'")
        reference = model.state_dict()
        best = state["best_state"]
        if best.keys() != reference.keys() or any(
                not isinstance(best[k], torch.Tensor) or best[k].shape != v.shape
                for k, v in reference.items()):
            raise CheckpointError(f"{where}: 'best_state': expected the model's tensors "
                                  f"({len(reference)} with its shapes)")
        if ema is not None:  # ema_decay is part of the fingerprint: present iff asked for
            if not isinstance(state.get("ema"), dict):
                raise CheckpointError(f"{where}: 'ema': expected the moving average of the "
                                      f"weights, found {type(state.get('ema')).__name__}")
            load_state_dict_checked(ema, state["ema"], f"{where}: 'ema'")
        load_module_state(weighting, state["weighting"], f"{where}: 'weighting'")
        if not all(isinstance(record, dict) for record in state["history"]):
            raise CheckpointError(f"{where}: 'history': expected a list of per-epoch records")
        saved = state["stopper"]
        if not isinstance(saved.get("best"), float | int) \
                or not isinstance(saved.get("bad_epochs"), int):
            raise CheckpointError(f"{where}: 'stopper': expected best (a number) and "
                                  f"bad_epochs (an integer), found {sorted(saved)}")
        stopper.best, stopper.bad_epochs = float(saved["best"]), saved["bad_epochs"]
        if state["epoch_sums"].shape != (tasks,):
            raise CheckpointError(f"{where}: 'epoch_sums': expected shape ({tasks},), found "
                                  f"{tuple(state['epoch_sums'].shape)}")
        if ranking_generator is not None:
            if state["ranking_generator"] is None:
                raise CheckpointError(f"{where}: 'ranking_generator': expected a generator "
                                      f"state, found none")
            ranking_generator.set_state(state["ranking_generator"])

    def restore_optimizer(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        load_optimizer_state(optimizer, state["optimizer"], f"{self.path}: 'optimizer'")


# What a checkpoint's state must hold (train's snapshot writes it), checked before any use.
_CHECKPOINT_TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "weighting": (dict,), "stopper": (dict,),
    "history": (list,), "best_epoch": (int,), "best_state": (dict,), "seen": (int,),
    "elapsed": (float, int), "epoch_generator": (torch.Tensor,), "epoch_sums": (torch.Tensor,),
    "epoch_rank_sum": (float, int), "rng": (dict,), "ranking_generator": (torch.Tensor, type(None)),
    "stopped": (bool,),
}



def config_fingerprint(config: EngineConfig) -> str:
    resolved = config.resolved_dict()
    train = dict(resolved.get("train", {}))
    # where and how the same math runs may change between a run and its resumption
    for key in ("epochs", "progress", "checkpoint_dir", "checkpoint_every", "keep_checkpoints",
                "device", "compile"):
        train.pop(key, None)
    resolved["train"] = train
    blob = json.dumps(resolved, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()
