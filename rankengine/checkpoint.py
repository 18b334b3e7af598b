"""Training checkpoints: no pickles, written atomically with a checksum, loaded only when intact.

A checkpoint holds everything a run needs to continue as if never stopped: the model, the
optimiser, the loss weighting (with its non-parameter state), the early stopper, the history,
the best weights so far, the data position (epoch and batches consumed) and every random
number generator.

Format: one safetensors file, ``ckpt-EEEE-SSSSSSSS.safetensors``. Every tensor of the state is
a tensor of the file, named by its path in the state (``optimizer/state/0/exp_avg``); the rest
of the state is a JSON tree in the file's ``__metadata__`` (key ``state``), where a tensor is
``{"$tensor": name}``. Nothing is pickled, so loading a checkpoint can never run code, however
the file was made. The JSON tree is strict JSON with a few tagged objects for what JSON lacks:
``{"$float": "inf" | "-inf" | "nan"}``, ``{"$tuple": [...]}`` and ``{"$items": [[k, v], ...]}``
(a dict whose keys are not all strings, e.g. the optimiser's parameter indices).

The file is written to a temporary name, fsynced and renamed; its sha256 is written next to it
afterwards (``.sha256``), so a file without a matching checksum (a run killed mid-write, a
truncated copy) is skipped. The checksum detects damage only; it authenticates nothing, which is
why the format itself must be safe to parse. Files of the old, pickled format
(``ckpt-*.pt``) are refused, never opened.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from rankengine.errors import RankEngineError, one_line
from rankengine.files import fsync_directory

log = logging.getLogger("rankengine.checkpoint")
SUFFIX = ".safetensors"
PATTERN = re.compile(r"ckpt-(\d{4})-(\d{8})\.safetensors$")
OLD_PATTERN = re.compile(r"ckpt-(\d{4})-(\d{8})\.pt$")  # pickles written before version 1
FORMAT = "rankengine-checkpoint"
VERSION = "1"


class CheckpointError(RankEngineError):
    """A checkpoint cannot be used (another config, an unsafe old format, damaged contents)."""


@dataclass(frozen=True)
class Position:
    """Where training resumes: ``epoch`` (1-based) after ``batches`` of it were done."""

    epoch: int
    batches: int


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the state <-> (JSON tree, tensors) flattener ----------------------------------------------

_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def flatten(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``state`` as a strict-JSON tree plus the tensors it references by name.

    Accepts None, bool, int, float (non-finite ones too), str, tensors, lists, tuples and dicts
    of these (any hashable keys of these types); numpy scalars become Python numbers. Anything
    else is a :class:`CheckpointError` naming where in the state it is.
    """
    tensors: dict[str, torch.Tensor] = {}

    def child(path: str, key: Any) -> str:
        return f"{path}/{key}" if path else str(key)

    def encode(value: Any, path: str) -> Any:
        if value is None or isinstance(value, bool | str):
            return value
        if isinstance(value, np.generic) and isinstance(value.item(), bool | int | float):
            value = value.item()
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, torch.Tensor):
            name = path or "."
            if name in tensors:  # e.g. keys 1 and "1" side by side
                name = f"{name}#{len(tensors)}"
            # A private, contiguous copy: safetensors refuses views and shared storage.
            tensors[name] = value.detach().to("cpu", copy=True).contiguous()
            return {"$tensor": name}
        if isinstance(value, list):
            return [encode(v, child(path, i)) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {"$tuple": [encode(v, child(path, i)) for i, v in enumerate(value)]}
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: encode(v, child(path, k)) for k, v in value.items()}
            return {"$items": [[encode(k, child(path, "key")), encode(v, child(path, k))]
                               for k, v in value.items()]}
        raise CheckpointError(
            f"checkpoint state at '{path or '/'}': expected a tensor, number, string, bool, "
            f"None, list, tuple or dict, found {type(value).__module__}.{type(value).__qualname__}"
            f" (checkpoints hold no pickled objects)")

    return encode(state, ""), tensors


def unflatten(tree: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """The inverse of :func:`flatten`; a malformed tree is a :class:`CheckpointError`."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: malformed checkpoint state: {what}")

    def decode(value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            raise bad(f"unexpected {type(value).__name__}")
        tags = [k for k in value if k.startswith("$")]
        if not tags:
            return {k: decode(v) for k, v in value.items()}
        if len(value) != 1:
            raise bad(f"expected one tag alone, found keys {sorted(value)[:4]}")
        tag, inner = next(iter(value.items()))
        if tag == "$tensor":
            if not isinstance(inner, str) or inner not in tensors:
                raise bad(f"tensor {inner!r} is referenced but not in the file")
            return tensors[inner]
        if tag == "$float":
            if inner not in _FLOATS:
                raise bad(f"expected 'inf', '-inf' or 'nan' for $float, found {inner!r}")
            return _FLOATS[inner]
        if tag == "$tuple" and isinstance(inner, list):
            return tuple(decode(v) for v in inner)
        if tag == "$items" and isinstance(inner, list):
            out = {}
            for pair in inner:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise bad("expected [key, value] pairs in $items")
                key = decode(pair[0])
                try:
                    out[key] = decode(pair[1])
                except TypeError:  # an unhashable key
                    raise bad(f"unusable dict key {pair[0]!r}") from None
            return out
        raise bad(f"unknown tag {tag!r}")

    try:
        return decode(tree)
    except RecursionError:
        raise bad("nested too deeply") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"bare {name} (non-finite numbers are written as $float)")


def encode_file(position: Position, state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file for ``state`` at ``position``."""
    tree, tensors = flatten({"position": [position.epoch, position.batches], **state})
    text = json.dumps(tree, allow_nan=False, separators=(",", ":"))
    return save_tensors(tensors, metadata={"format": FORMAT, "version": VERSION, "state": text})


def decode_file(data: bytes, where: str) -> tuple[Position, dict[str, Any]]:
    """Parse checkpoint bytes (no code runs, whatever they hold); damage is a one-line
    :class:`CheckpointError` naming ``where``."""
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or size > len(data) - 8:
            raise ValueError("the header is cut short")
        header = json.loads(data[8:8 + size], parse_constant=_no_constants)
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise ValueError(f"expected a {FORMAT} file (its safetensors metadata has no "
                             f"format={FORMAT})")
        if metadata.get("version") != VERSION:
            raise ValueError(f"expected format version {VERSION}, found "
                             f"{metadata.get('version')!r}")
        tree = json.loads(metadata["state"], parse_constant=_no_constants)
        tensors = load_tensors(data)
    except (ValueError, KeyError, TypeError, SafetensorError, RecursionError) as error:
        message = one_line(str(error)) or type(error).__name__
        raise CheckpointError(f"{where}: unreadable checkpoint: {message}") from None
    state = unflatten(tree, tensors, where)
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: malformed checkpoint state: expected a JSON object")
    position = state.pop("position", None)
    if (not isinstance(position, list) or len(position) != 2
            or not all(type(v) is int for v in position) or position[0] < 1 or position[1] < 0):
        raise CheckpointError(f"{where}: malformed checkpoint state: expected position "
                              f"[epoch, batches], found {position!r}")
    return Position(position[0], position[1]), state


# -- files -------------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def save(directory: Path, position: Position, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as ``ckpt-EEEE-SSSSSSSS.safetensors`` (+ ``.sha256``); keep the newest
    ``keep`` checkpoints. Anything in ``state`` that is not a tensor or JSON-able is refused
    before a byte is written."""
    path = directory / f"ckpt-{position.epoch:04d}-{position.batches:08d}{SUFFIX}"
    try:
        data = encode_file(position, state)
    except CheckpointError as error:
        raise CheckpointError(f"cannot write {path}: {error}") from None
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, data)
    # The checksum last: until it exists the checkpoint counts as unfinished.
    _write_atomically(path.with_name(path.name + ".sha256"), (_digest(data) + "\n").encode())
    fsync_directory(directory)
    for old in checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def _matching(directory: Path, pattern: re.Pattern[str]) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if pattern.fullmatch(p.name)),
                  key=lambda p: p.name)


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first (intact or not)."""
    return _matching(directory, PATTERN)


def load_latest(directory: Path) -> tuple[Position, dict[str, Any], Path] | None:
    """The newest intact checkpoint; unfinished ones (no or a wrong checksum) are skipped with a
    warning. A checkpoint of the old pickled format in ``directory`` is a
    :class:`CheckpointError`: it is never opened."""
    old = _matching(directory, OLD_PATTERN)
    if old:
        raise CheckpointError(
            f"{old[-1]} is a checkpoint in the old, unsafe format (a pickle, which could run "
            f"code when loaded); it is never loaded: delete the ckpt-*.pt files in {directory} "
            f"and restart the training without --resume")
    for path in reversed(checkpoints(directory)):
        checksum = path.with_name(path.name + ".sha256")
        try:
            data = path.read_bytes()
            expected = checksum.read_text().strip() if checksum.exists() else None
        except OSError as error:
            raise CheckpointError(f"{path}: cannot read: {error.strerror}") from None
        if expected != _digest(data):
            log.warning("skipping %s: missing or wrong checksum (interrupted write?)", path)
            continue
        position, state = decode_file(data, str(path))
        return position, state, path
    return None


# -- module and RNG state as tensors and JSON --------------------------------------------------


def module_state(module: nn.Module) -> dict[str, Any]:
    """A module's whole training state: ``state_dict()`` (parameters, persistent buffers and
    any ``get_extra_state()``, which must be tensors or JSON-able) plus the non-persistent
    buffers, which e.g. loss weightings update as they train."""
    saved = module.state_dict()
    buffers = {name: b for name, b in module.named_buffers() if name not in saved}
    return {"state_dict": dict(saved), "buffers": buffers}


def load_state_dict_checked(module: nn.Module, state_dict: Any, where: str) -> None:
    """``module.load_state_dict`` (strict); a mismatch is a one-line :class:`CheckpointError`."""
    if not isinstance(state_dict, dict) \
            or not all(isinstance(v, torch.Tensor) or k.endswith("_extra_state")
                       for k, v in state_dict.items()):
        raise CheckpointError(f"{where}: expected a dict of tensors")
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        raise CheckpointError(f"{where}: {' '.join(str(error).split())}") from None


def load_module_state(module: nn.Module, state: Any, where: str) -> None:
    """Restore :func:`module_state` into ``module``; a mismatch is a one-line
    :class:`CheckpointError` naming ``where``."""
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict) \
            or not isinstance(state.get("buffers"), dict):
        raise CheckpointError(f"{where}: expected a module state with 'state_dict' and "
                              f"'buffers', found {type(state).__name__}")
    load_state_dict_checked(module, state["state_dict"], where)
    current = dict(module.named_buffers())
    for name, value in state["buffers"].items():
        old = current.get(name)
        if not isinstance(value, torch.Tensor) or old is None or value.shape != old.shape:
            want = tuple(old.shape) if old is not None else "(none: no such buffer)"
            found = tuple(value.shape) if isinstance(value, torch.Tensor) \
                else type(value).__name__
            raise CheckpointError(f"{where}: buffer '{name}': expected a tensor of shape "
                                  f"{want}, found {found}")
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner), leaf, value.to(old.dtype))


def rng_state() -> dict[str, Any]:
    """The torch, numpy and Python generators' states as tensors and JSON values."""
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # legacy=True: (kind, keys, pos, has_gauss, cached)
    kind, keys, pos, has_gauss, cached = legacy
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # int64: every uint32 fits, and every safetensors reader knows the type
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def _states(state: Any) -> tuple[torch.Tensor, tuple[Any, ...], tuple[Any, ...]]:
    """(torch, numpy, python) states from :func:`rng_state`'s form; KeyError/TypeError/
    ValueError when it is malformed."""
    numpy_state, python_state = state["numpy"], state["python"]
    keys = numpy_state["keys"]
    if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 \
            or bool(((keys < 0) | (keys > 0xFFFFFFFF)).any()):
        raise ValueError("numpy keys: expected int64 values in [0, 2**32)")
    numpy_tuple = (numpy_state["kind"], keys.numpy().astype(np.uint32), numpy_state["pos"],
                   numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    python_tuple = (python_state["version"], tuple(python_state["internal"]),
                    python_state["gauss_next"])
    torch_state = state["torch"]
    if not isinstance(torch_state, torch.Tensor):
        raise TypeError("torch: expected a tensor")
    return torch_state, numpy_tuple, python_tuple


def check_rng_state(state: Any, where: str) -> None:
    """Refuse an unusable RNG state now, on throwaway generators, rather than mid-run."""
    try:
        torch_state, numpy_tuple, python_tuple = _states(state)
        torch.Generator().set_state(torch_state)
        np.random.RandomState().set_state(numpy_tuple)
        random.Random().setstate(python_tuple)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        raise CheckpointError(f"{where}: unusable random generator state: "
                              f"{' '.join(str(error).split())}") from None


def check_generator_state(state: Any, where: str) -> None:
    """Refuse an unusable ``torch.Generator`` state (a uint8 tensor) now."""
    try:
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"expected a tensor, found {type(state).__name__}")
        torch.Generator().set_state(state)
    except (TypeError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{where}: unusable generator state: "
                              f"{' '.join(str(error).split())}") from None


def set_rng_state(state: dict[str, Any]) -> None:
    torch_state, numpy_tuple, python_tuple = _states(state)
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_tuple)
    random.setstate(python_tuple)



def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, where: str) -> None:
    """``optimizer.load_state_dict`` with the checks it leaves to the first step: every state
    entry belongs to a parameter and its tensors have the parameter's shape."""
    try:
        optimizer.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        raise CheckpointError(f"{where}: {' '.join(str(error).split())}") from None
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for param, entry in optimizer.state.items():
        if id(param) not in params or not isinstance(entry, dict):
            raise CheckpointError(f"{where}: state for an unknown parameter {param!r:.40}")
        for name, value in entry.items():
            # Scalars such as Adam's step are 0-dimensional; moments match the parameter.
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                raise CheckpointError(
                    f"{where}: '{name}' of a parameter of shape {tuple(param.shape)} has shape "
                    f"{tuple(value.shape)}")
