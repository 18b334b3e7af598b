"""Where tensors live: the configured device resolved against the machine, and the device of
a module (what every tensor it meets is created on)."""

from __future__ import annotations

import re

import torch
from torch import nn

from rankengine.errors import RankEngineError

#: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(RankEngineError):
    """The device asked for does not exist on this machine."""


def resolve_device(spec: str) -> torch.device:
    """The device ``spec`` names on this machine (``auto``: the current CUDA device when
    CUDA is available, else the CPU); :class:`DeviceError` when it is not there."""
    if not DEVICE_PATTERN.fullmatch(spec):
        raise DeviceError(f"expected auto, cpu, cuda or cuda:N, found {spec!r}")
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{spec!r} was asked for, but this torch has no CUDA "
                                    f"device (torch {torch.__version__}; CUDA builds: see the "
                                    f"README's GPU section); use \"auto\" or \"cpu\"")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"{spec!r} was asked for, but this machine has {count} "
                                    f"CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return device


def fits_on(device: torch.device, nbytes: int, share: float = 0.5) -> bool:
    """Whether ``nbytes`` of data may live on ``device`` for the run: a CUDA device with that
    much in at most ``share`` of its free memory (the rest is the model's and the step's)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's parameters (or buffers); the CPU for one without either."""
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")
