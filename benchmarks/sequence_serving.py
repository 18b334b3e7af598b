"""Serving latency with a 50-long behaviour sequence (issue #17): each interaction vs pooling.

    python benchmarks/sequence_serving.py [--requests 300] [--candidates 500]
                                          [--variants pooled din transformer dupn_lstm]

Simulates a 5k-request funnel with sequence effects, trains examples/sequences/engine.toml one
epoch per variant (latency does not depend on quality; ``pooled`` has no interaction, the
sequence columns mean-pooled), registers each in a temporary SQLite registry, starts
``rankengine serve`` for it in a subprocess (2 inference threads) and sends ``POST /v1/rank``
with ``--candidates`` candidates and a context whose sequences hold 50 behaviours, one request
at a time. Prints end-to-end p50 / p99, p99 relative to the pooled model's, and the server's
median Server-Timing stages: ``context`` (the context, sequences included, encoded once),
``candidates`` and ``model`` (where each interaction's ``encode`` runs once per request).
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
from sequences import CONFIG, configured
from serve_latency import STAGES, load, percentile

from rankengine.registry import RegistryStore
from rankengine.registry.artifacts import register
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

MAX_LEN = 50


def bodies(table: dict[str, list[Any]], context: list[str], items: list[str], n: int,
           count: int) -> list[dict[str, Any]]:
    """``count`` /v1/rank bodies of ``n`` candidates, each with the context of a request whose
    sequences are full (``MAX_LEN`` behaviours)."""
    full = [i for i, s in enumerate(table["seq_category"]) if len(s) >= MAX_LEN]
    out = []
    for k in range(count):
        row = full[(k * 97) % len(full)]
        start = (k * 131) % (len(table["item_category"]) - n)
        out.append({
            "context": {c: table[c][row] for c in context},
            "candidates": {c: table[c][start:start + n] for c in items},
            "format": "columns"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--variants", nargs="+",
                        default=["pooled", "din", "transformer", "dupn_lstm"])
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "data"
    write_funnel(data, SimulationConfig(requests=5_000, seed=7, sequence_effect=1.0,
                                        sequence_max_len=MAX_LEN))
    table = pq.read_table(data / "test.parquet").to_pydict()
    url = f"sqlite:///{tmp / 'reg.db'}"
    store = RegistryStore(url)
    print(f"# examples/sequences/engine.toml, {args.candidates} candidates, {MAX_LEN}-long "
          f"sequences, rankengine serve (torch, 2 inference threads), concurrency 1, "
          f"{args.requests} requests")
    print("| model | p50 ms | p99 ms | p99 / pooled | server p50 ms: " +
          " / ".join(STAGES[:-1]) + " = total |")
    print("|---|---|---|---|---|")
    pooled_p99 = None
    for variant in args.variants:
        config = configured(variant, data, seed=1, epochs=1)
        trained = train(config, progress=False)
        register(store, tmp / "artifacts", trained, variant)
        sides = {f.source: f.side for f in config.features}
        context = [c for c, side in sides.items() if side == "context"]
        items = [c for c, side in sides.items() if side == "item"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "rankengine.cli", "serve", f"{variant}/1", "--registry", url,
             "--port", str(port), "--threads", "2", "--max-candidates", "5000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                try:
                    if httpx.get(f"{base}/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("server did not become ready")
                time.sleep(0.2)
            sent = bodies(table, context, items, args.candidates, 20)
            load(base, sent, 20, 1)  # warm-up
            latencies, _, stages = load(base, sent, args.requests, 1)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        p99 = percentile(latencies, 99)
        pooled_p99 = pooled_p99 or (p99 if variant == "pooled" else None)
        ratio = f"{p99 / pooled_p99:.2f}" if pooled_p99 else "-"
        breakdown = " / ".join(f"{np.median(stages[k]):.2f}" for k in STAGES[:-1])
        print(f"| {variant} | {percentile(latencies, 50):.1f} | {p99:.1f} | {ratio} | "
              f"{breakdown} = {np.median(stages['total']):.2f} |", flush=True)
    store.close()


if __name__ == "__main__":
    assert CONFIG.exists()
    main()
