"""Training checkpoints: written atomically with a checksum, loaded only when intact.

A checkpoint holds everything a run needs to continue as if never stopped: the model, the
optimiser, the loss weighting (with its non-parameter state), the early stopper, the history,
the best weights so far, the data position (epoch and batches consumed) and every random
number generator. ``ckpt-EEEE-SSSSSSSS.pt`` is written to a temporary name and renamed; its
sha256 is written next to it afterwards, so a file without a matching ``.sha256`` (a run killed
mid-write, a truncated copy) is never loaded.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rankengine.errors import RankEngineError

log = logging.getLogger("rankengine.checkpoint")
PATTERN = re.compile(r"ckpt-(\d{4})-(\d{8})\.pt$")


class CheckpointError(RankEngineError):
    """A checkpoint cannot be used (another config, unreadable)."""


@dataclass(frozen=True)
class Position:
    """Where training resumes: ``epoch`` (1-based) after ``batches`` of it were done."""

    epoch: int
    batches: int


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save(directory: Path, position: Position, state: dict[str, Any], keep: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"position": (position.epoch, position.batches), **state}, buffer)
    data = buffer.getvalue()
    path = directory / f"ckpt-{position.epoch:04d}-{position.batches:08d}.pt"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    checksum = path.with_name(path.name + ".sha256")
    tmp_sum = checksum.with_name(f".{checksum.name}.tmp")
    tmp_sum.write_text(_digest(data) + "\n")
    tmp_sum.replace(checksum)
    for old in checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first (intact or not)."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if PATTERN.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name)


def load_latest(directory: Path) -> tuple[Position, dict[str, Any], Path] | None:
    """The newest intact checkpoint; damaged or unfinished ones are skipped with a warning."""
    for path in reversed(checkpoints(directory)):
        checksum = path.with_name(path.name + ".sha256")
        data = path.read_bytes()
        if not checksum.exists() or checksum.read_text().strip() != _digest(data):
            log.warning("skipping %s: missing or wrong checksum (interrupted write?)", path)
            continue
        # Our own files, verified above; they hold optimiser and weighting objects.
        state = torch.load(io.BytesIO(data), weights_only=False)
        epoch, batches = state.pop("position")
        return Position(epoch, batches), state, path
    return None


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
