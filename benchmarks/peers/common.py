"""Shared by the peer benchmark's scripts: the configurations, the encoded census data, timing.

The census data is read and encoded once, by rankengine's own feature pipeline
(`examples/census/engine.toml`: 33 categorical columns and 7 bucketized copies of the numeric
ones embedded with 16 dimensions, 7 standardised numeric columns; the test file halved into
validation and test with the seed). rankengine reads it back from its `[data] cache_dir`; the
peers get the very same arrays as one numpy column per feature, the way their docs feed data.
"""

from __future__ import annotations

import json
import random
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONFIG = ROOT / "examples" / "census" / "engine.toml"
CACHE = HERE / ".cache"
MODELS = ("mmoe", "shared_bottom", "ple")
LIBRARIES = ("rankengine", "deepctr-torch", "torch-rechub")

#: The one set of hyper-parameters all three libraries train with.
SETTINGS = {
    "embedding_dim": 16,
    "experts": 4,  # MMoE
    "expert_hidden": 64,
    "bottom_hidden": 64,  # shared-bottom: one bottom MLP of the width of one expert
    "ple_levels": 2,  # PLE: per level one specific expert per task + one shared expert
    "ple_specific": 1,
    "ple_shared": 1,
    "tower_hidden": 32,
    "batch_size": 1024,
    "lr": 1e-3,
}


def seed_all(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rankengine_config(model: str, *, seed: int, epochs: int, threads: int) -> Any:
    """examples/census/engine.toml with the benchmark's backbone, lr, seed and data cache."""
    from rankengine.config import parse_config

    raw = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    s = SETTINGS
    backbone: dict[str, Any]
    if model == "mmoe":
        backbone = {"kind": "mmoe", "experts": s["experts"], "expert_hidden": [s["expert_hidden"]]}
    elif model == "shared_bottom":
        backbone = {"kind": "shared_bottom", "hidden": [s["bottom_hidden"]]}
    elif model == "ple":
        backbone = {"kind": "ple", "levels": s["ple_levels"], "task_experts": s["ple_specific"],
                    "shared_experts": s["ple_shared"], "expert_hidden": [s["expert_hidden"]]}
    else:
        raise ValueError(model)
    raw["model"]["backbone"] = backbone
    raw["model"]["tower"] = {"kind": "mlp", "hidden": [s["tower_hidden"]]}
    raw["engine"]["seed"] = seed
    raw["engine"]["threads"] = threads
    raw["data"]["cache_dir"] = str(CACHE / "rankengine")
    raw["train"].update(epochs=epochs, batch_size=s["batch_size"], lr=s["lr"], progress=False)
    for feature in raw["features"]:  # the embedding dim every library uses
        if feature["kind"] in ("categorical", "bucketize"):
            feature["dim"] = s["embedding_dim"]
    return parse_config(raw, source=str(CONFIG), base_dir=CONFIG.parent)


def data_path(seed: int) -> Path:
    return CACHE / f"census_encoded_seed{seed}.npz"


def prepare(seed: int) -> dict[str, Any]:
    """Encode the census splits with rankengine's pipeline (filling its data cache) and write
    the same arrays for the peers; returns the layout (feature names, vocabulary sizes)."""
    from rankengine.plan import make_plan
    from rankengine.train.data import encoded_splits

    out = data_path(seed)
    meta_path = out.with_suffix(".json")
    if out.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    plan = make_plan(rankengine_config("mmoe", seed=seed, epochs=1, threads=1))
    graph, pipeline = plan.graph, plan.pipeline
    encoded, _ = encoded_splits(plan, print)  # what train() reads, so its cache is filled
    layout = pipeline.layout()
    categorical = sorted((f for f in layout if f.output == "ids"), key=lambda f: f.column)
    dense = sorted((f for f in layout if f.output == "dense"), key=lambda f: f.column)
    if any(f.dim != 1 for f in dense) or len(dense) != encoded["train"].dense.shape[1]:
        raise RuntimeError("expected one float per dense feature")
    meta = {
        "tasks": list(graph.names),
        "categorical": [[f.name, f.cardinality] for f in categorical],
        "dense": [f.name for f in dense],
        "rows": {k: len(v) for k, v in encoded.items()},
        "seed": seed,
    }
    arrays = {}
    for split, data in encoded.items():
        arrays[f"{split}_categorical"] = data.categorical
        arrays[f"{split}_dense"] = data.dense
        arrays[f"{split}_labels"] = data.labels
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, allow_pickle=False, **arrays)  # plain arrays only: the load refuses pickles
    tmp.rename(out)
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def load_split(seed: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(data_path(seed), allow_pickle=False) as arrays:  # never unpickle from disk
        return (arrays[f"{split}_categorical"], arrays[f"{split}_dense"],
                arrays[f"{split}_labels"])


def load_meta(seed: int) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(data_path(seed).with_suffix(".json").read_text())
    return meta


def columns(meta: dict[str, Any], categorical: np.ndarray,
            dense: np.ndarray) -> dict[str, np.ndarray]:
    """One numpy array per feature name, as the peers' docs build their inputs."""
    x = {name: np.ascontiguousarray(categorical[:, j])
         for j, (name, _) in enumerate(meta["categorical"])}
    x.update({name: np.ascontiguousarray(dense[:, j]) for j, name in enumerate(meta["dense"])})
    return x


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs of ``fn`` (seconds), after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def gemm_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n float32 matmul with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = best_time(lambda: torch.mm(a, b), repeats)
    return 2 * n**3 / seconds / 1e9


def step_gemm_peak(threads: int, rows: int, fan_in: int, fan_out: int, repeats: int = 20) -> float:
    """GFLOP/s of the training step's largest GEMM shape alone ([rows, fan_in] @ [fan_in,
    fan_out]), with ``threads`` torch threads: what that shape can reach on this machine."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(rows, fan_in), torch.randn(fan_in, fan_out)
    seconds = best_time(lambda: torch.mm(a, b), repeats)
    return 2 * rows * fan_in * fan_out / seconds / 1e9


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))
