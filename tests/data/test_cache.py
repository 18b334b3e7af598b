"""The encoded-data cache: a damaged or planted entry is a miss, never code run or a failed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rankengine.data import cache
from rankengine.data.dataset import EncodedData


def _data(rows: int = 6) -> EncodedData:
    rng = np.random.default_rng(0)
    return EncodedData(categorical=rng.integers(0, 5, (rows, 2)),
                       dense=rng.normal(size=(rows, 3)).astype(np.float32),
                       sequences=[rng.integers(0, 4, (rows, 3))],
                       labels=rng.integers(0, 2, (rows, 2)).astype(np.float32),
                       groups=np.arange(rows) // 2, extras={"p": rng.random(rows)})


def test_round_trip(tmp_path: Path) -> None:
    data = _data()
    cache.store(tmp_path, "k", {"f": {"vocab": ["a"]}}, {"train": data}, {"train": "x.csv"})
    hit = cache.load(tmp_path, "k")
    assert hit is not None
    state, splits, sources = hit
    assert state == {"f": {"vocab": ["a"]}} and sources == {"train": "x.csv"}
    np.testing.assert_array_equal(splits["train"].dense, data.dense)
    np.testing.assert_array_equal(splits["train"].extras["p"], data.extras["p"])


class _Planted:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("touch planted-by-cache",)


@pytest.mark.parametrize("damage", ["meta_not_json", "npz_garbage", "object_array",
                                    "ragged", "meta_missing_key"])
def test_a_damaged_or_planted_entry_is_a_miss(tmp_path: Path, damage: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "cache"
    cache.store(root, "k", {}, {"train": _data()}, {})
    entry = root / "k"
    if damage == "meta_not_json":
        (entry / "meta.json").write_text("{nope")
    elif damage == "npz_garbage":
        (entry / "train.npz").write_bytes(b"PK\x03\x04 not a zip")
    elif damage == "meta_missing_key":
        (entry / "meta.json").write_text(json.dumps({"splits": {"train": {}}}))
    else:
        arrays = {"categorical": np.zeros((6, 2), np.int64), "dense": np.zeros((6, 3)),
                  "labels": np.zeros((6 if damage == "object_array" else 4, 2)),
                  "sequence_0": np.zeros((6, 3), np.int64), "extra_p": np.zeros(6)}
        if damage == "object_array":
            arrays["categorical"] = np.array([_Planted()] * 6, dtype=object)
        with (entry / "train.npz").open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
    assert cache.load(root, "k") is None
    assert not (tmp_path / "planted-by-cache").exists()
