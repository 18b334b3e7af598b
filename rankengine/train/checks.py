"""Checks run before any data is read, so a config that would fail after hours fails now."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from rankengine.config import EngineConfig, complete_config, flat_keys, parse_config
from rankengine.data.pipeline import feature_layout
from rankengine.errors import ConfigError
from rankengine.plan import Plan
from rankengine.pluginmanager import Engine


def check_buildable(plan: Plan) -> None:
    """Before any data is read, so that a config that would train for hours and then register
    a version that never loads (a NaN saved as null, a cascade refusing its widths) fails in
    seconds, naming the key. The plan has built every other component already; checked here:
    the config as it is saved with the model (JSON, read back and validated again), and the
    cascade, backbone and towers on a stand-in feature layout (the real one needs the fitted
    encoders, so training builds the model once more on it).
    """
    config = plan.config
    check_saved_config(config, plan.engine)
    if config.train.precision == "fp16" and not plan.loss_weighting.scale_invariant:
        raise ConfigError(f"fp16 scales the losses before the loss weighting, and "
                          f"'{config.loss.weighting.kind}' is not invariant to that scale; use "
                          f"precision = \"bf16\" (no scaling needed) or another weighting",
                          source=config.source, key="train.precision")
    with torch.random.fork_rng(devices=[]):  # the real model's initialisation is unchanged
        plan.build_model(feature_layout(plan.pipeline.features, plan.pipeline.encoders,
                                        cardinality=2))


def check_saved_config(config: EngineConfig, engine: Engine) -> None:
    """The config must read back from the JSON saved with the model as the same config: no
    NaN or infinity (JSON writes them as null), nothing that validates differently. The
    config's defaults are filled first (as they are before the model saves it)."""
    complete_config(config, engine)
    raw = config.resolved_dict()
    leaves = flat_keys(raw, lists=True)
    for key, value in leaves.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"expected a finite number, found {value}", source=config.source,
                              key=key)
    again = parse_config(json.loads(json.dumps(raw)), source=config.source,
                         base_dir=config.base_dir)
    complete_config(again, engine)
    back = flat_keys(again.resolved_dict(), lists=True)
    for key in sorted(set(leaves) | set(back)):
        if leaves.get(key) != back.get(key):
            raise ConfigError(f"{leaves.get(key)!r} reads back as {back.get(key)!r} from the "
                              f"config saved with the model", source=config.source, key=key)


def check_directory(directory: Path, config: EngineConfig, key: str) -> None:
    """A folder rankengine writes into (``[data] cache_dir``, ``[train] checkpoint_dir``) must
    be one, or be creatable: its nearest existing ancestor is a writable directory."""
    for parent in (directory, *directory.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{parent} is a file, not a directory", source=config.source,
                                  key=key)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{parent} is not writable", source=config.source, key=key)
            return
