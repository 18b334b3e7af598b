"""On-disk cache of the fitted feature pipeline and the encoded splits.

Keyed by everything that determines the encoding: the data (each data source's fingerprint, by
default the files' path, size and mtime), the features, the task labels, the split settings
and the seed. A hit skips reading, fitting and
encoding entirely; entries are written under a temporary name and renamed, so a crash never
leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rankengine.config import EngineConfig
from rankengine.data.dataset import EncodedData
from rankengine.data.source import SourceTable, open_source
from rankengine.graph import LabelReport

log = logging.getLogger("rankengine.cache")


def cache_key(config: EngineConfig, tasks: dict[str, Any], extras: list[str],
              sources: SourceTable) -> str:
    """The entry for this configuration; each data file's part is its source's fingerprint."""
    data = config.data
    paths = [p for p in (data.train, data.valid, data.test) if p]
    payload = {
        "files": [open_source(config.resolve_path(p), sources, format=data.format,
                              csv=data.csv).fingerprint() for p in paths],
        "data": data.model_dump(mode="json", exclude={"cache_dir"}),
        "features": [f.model_dump(mode="json") for f in config.features],
        "tasks": tasks,
        "extras": extras,
        "seed": config.engine.seed,
        "version": 3,  # 3: id arrays stored as "ids" (hook API 2.0)
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def load(root: Path, key: str) -> tuple[dict[str, Any], dict[str, EncodedData],
                                        dict[str, str]] | None:
    entry = root / key
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        return _read(entry, meta_path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as exc:
        # A cache is only an accelerator: a damaged entry is a miss, never a failed run.
        log.warning("ignoring damaged cache entry %s (%s: %s); encoding the data again",
                    entry, type(exc).__name__, exc)
        return None


def _read(entry: Path, meta_path: Path) -> tuple[dict[str, Any], dict[str, EncodedData],
                                                 dict[str, str]]:
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    splits: dict[str, EncodedData] = {}
    for split, info in meta["splits"].items():
        # allow_pickle=False: a planted object array must never run code. The file is opened
        # here because np.load leaks its own handle when the zip is damaged.
        with (entry / f"{split}.npz").open("rb") as fh, np.load(fh, allow_pickle=False) as arrays:
            data = EncodedData(
                categorical=arrays["ids"], dense=arrays["dense"],
                sequences=[arrays[f"sequence_{i}"] for i in range(info["sequences"])],
                labels=arrays["labels"],
                groups=arrays["groups"] if "groups" in arrays.files else None,
                extras={name: arrays[f"extra_{name}"] for name in info["extras"]},
                report=LabelReport(**info["report"]) if info["report"] else None,
            )
        rows = {len(a) for a in (data.categorical, data.dense, data.labels, *data.sequences,
                                 *data.extras.values())}
        if len(rows) != 1:
            raise ValueError(f"{split}: arrays of different lengths {sorted(rows)}")
        splits[split] = data
    return meta["pipeline"], splits, meta["sources"]


def store(root: Path, key: str, pipeline_state: dict[str, Any],
          splits: dict[str, EncodedData], sources: dict[str, str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if (root / key).exists():
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        meta: dict[str, Any] = {"pipeline": pipeline_state, "sources": sources, "splits": {}}
        for split, data in splits.items():
            arrays = {"ids": data.categorical, "dense": data.dense,
                      "labels": data.labels,
                      **{f"sequence_{i}": s for i, s in enumerate(data.sequences)},
                      **{f"extra_{k}": v for k, v in data.extras.items()}}
            if data.groups is not None:
                arrays["groups"] = data.groups
            with (tmp / f"{split}.npz").open("wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle kw
                fh.flush()
                os.fsync(fh.fileno())
            meta["splits"][split] = {
                "sequences": len(data.sequences), "extras": list(data.extras),
                "report": data.report.as_dict() if data.report else None,
            }
        (tmp / "meta.json").write_text(json.dumps(meta))
        tmp.rename(root / key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
