"""The train / valid / test splits: read from their files, or carved out of one by a seeded
fraction (a request's rows always together)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankengine.config import EngineConfig
from rankengine.data.dataset import group_ids, label_columns
from rankengine.data.io import read_table
from rankengine.data.pipeline import FeaturePipeline
from rankengine.errors import ConfigError, DataError
from rankengine.graph import TaskGraph
from rankengine.pluginmanager import Engine


@dataclass
class Splits:
    train: pa.Table
    valid: pa.Table
    test: pa.Table | None
    sources: dict[str, str]



def needed_columns(config: EngineConfig, graph: TaskGraph, pipeline: FeaturePipeline,
                   extras: list[str]) -> list[str]:
    cols = [*pipeline.source_columns, *label_columns(graph), *extras]
    if config.data.group:
        cols.append(config.data.group)
    return list(dict.fromkeys(cols))



def read_splits(config: EngineConfig, columns: list[str], seed: int, engine: Engine) -> Splits:
    """Read train / valid / test; a missing valid (or test) split is carved out of train."""
    data = config.data

    def read(path: str) -> pa.Table:
        resolved = config.resolve_path(path)
        if not resolved.exists():
            key = next(k for k in ("train", "valid", "test") if getattr(data, k) == path)
            raise ConfigError(f"data file or directory not found: {resolved}",
                              source=config.source, key=f"data.{key}")
        return read_table(resolved, columns, sources=engine.components.sources,
                          format=data.format, csv=data.csv)

    train = read(data.train)
    sources = {"train": str(config.resolve_path(data.train))}
    test = read(data.test) if data.test else None
    if data.test:
        sources["test"] = str(config.resolve_path(data.test))
    if data.valid:
        valid = read(data.valid)
        sources["valid"] = str(config.resolve_path(data.valid))
    elif data.valid_from == "test":
        if test is None:
            raise ConfigError("valid_from = \"test\" needs [data] test", source=config.source,
                              key="data.valid_from")
        parts = split_table(test, {"valid": data.valid_fraction}, data.group, seed,
                            sources["test"])
        _check_carved(parts, {"valid": ("valid", "valid_fraction"),
                              "train": ("test", "valid_fraction")},
                      sources["test"], data.group, config.source)
        valid, test = parts["valid"], parts["train"]
        sources["valid"] = f"{sources['test']} ({data.valid_fraction:.0%} of it)"
        sources["test"] += f" (the other {1 - data.valid_fraction:.0%})"
    else:
        fractions = {"valid": data.valid_fraction}
        if test is None and data.test_fraction > 0:
            fractions["test"] = data.test_fraction
        parts = split_table(train, fractions, data.group, seed, sources["train"])
        _check_carved(parts, {"valid": ("valid", "valid_fraction"),
                              "test": ("test", "test_fraction"),
                              "train": ("training", "valid_fraction")},
                      sources["train"], data.group, config.source)
        train, valid = parts["train"], parts["valid"]
        test = parts.get("test", test)
        sources["valid"] = f"{sources['train']} ({data.valid_fraction:.0%} held out)"
        if "test" in fractions:
            sources["test"] = f"{sources['train']} ({data.test_fraction:.0%} held out)"
    if train.num_rows == 0:
        raise DataError(f"{sources['train']}: the training split is empty")
    return Splits(train, valid, test, sources)



def _check_carved(parts: Mapping[str, pa.Table], keys: Mapping[str, tuple[str, str]],
                  source: str, group: str | None, config_source: str) -> None:
    """A split carved out of a file by a fraction must get rows: an empty validation split
    leaves early stopping and every metric undefined, an empty training split trains nothing.
    ``keys``: part → (the split's name, the [data] key that sized it)."""
    rows = sum(part.num_rows for part in parts.values())
    if rows == 0:
        raise DataError(f"{source}: the file has no data rows")
    for part, table in parts.items():
        if table.num_rows:
            continue
        split, key = keys[part]
        unit = f"{rows} rows"
        if group:
            ids = set().union(*(pc.unique(t.column(group)).to_pylist() for t in parts.values()))
            unit += f" in {len(ids)} groups of [data] group '{group}'"
        raise ConfigError(
            f"the {split} split carved out of {source} ({unit}) is empty; change [data] {key} "
            f"or give the split its own file", source=config_source, key=f"data.{key}")



def absolute_data_paths(config: EngineConfig) -> EngineConfig:
    """A copy of ``config`` whose ``[data]`` train / valid / test paths are absolute (resolved
    against the config file's directory, as training read them)."""
    from os.path import abspath  # normalises ".." without resolving symlinks

    data = config.data
    paths = {split: abspath(config.resolve_path(path))
             for split in ("train", "valid", "test") if (path := getattr(data, split))}
    return config.model_copy(update={"data": data.model_copy(update=paths)})



def split_table(table: pa.Table, fractions: Mapping[str, float], group: str | None,
                seed: int, where: str = "data") -> dict[str, pa.Table]:
    """Seeded random split; rows of one group (request) always land in the same split."""
    rng = np.random.default_rng(seed)
    if group:
        ids = group_ids(table, group, where)
        draw = rng.random(int(ids.max()) + 1 if len(ids) else 0)[ids]
    else:
        draw = rng.random(table.num_rows)
    out: dict[str, pa.Table] = {}
    lo = 0.0
    assigned = np.zeros(table.num_rows, dtype=bool)
    for name, fraction in fractions.items():
        mask = (draw >= lo) & (draw < lo + fraction)
        out[name] = table.filter(pa.array(mask))
        assigned |= mask
        lo += fraction
    out["train"] = table.filter(pa.array(~assigned))
    return out
