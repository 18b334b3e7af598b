"""Serving latency of the demo model over real HTTP, next to model-only and ONNX Runtime times.

    python benchmarks/serve_latency.py [--requests 200] [--swap-seconds 60] [--backend torch]

Trains the demo engine.toml (2 epochs on a 20k-request simulated funnel: latency does not depend
on quality), registers it in a temporary SQLite registry, starts ``rankengine serve`` in a
subprocess (2 inference threads) and measures ``POST /v1/rank`` end to end for 100 / 500 / 1000
candidates at concurrency 1 and 4, with candidates and response as objects (``rows``) and as
columns (``"format": "columns"``). Then it moves the champion alias while 4 clients keep
ranking for ``--swap-seconds`` and counts failed requests and responses from the old version.

"overhead / model time" is (end-to-end p50 - model-only p50) / model-only p50, where model-only
is the serving back end's own forward pass on already-encoded inputs (torch, or ONNX Runtime
with ``--backend onnxruntime``). ``--server-cpus 0,1`` gives the server two cores of its own.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow.parquet as pq
import torch

from rankengine.backend import backend_class
from rankengine.config import load_config
from rankengine.export import export, input_names
from rankengine.registry import RegistryStore
from rankengine.registry.artifacts import load_version, register
from rankengine.serve.process import retain_freed_memory, usable_cores
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

REPO = Path(__file__).resolve().parents[1]
CONTEXT = ("user_segment", "device", "hour", "user_hist_categories")


ITEM = ("item_category", "item_brand", "item_price", "position")


def payload(table: dict[str, list], n: int, offset: int, layout: str = "rows") -> dict:
    """A /v1/rank body: candidates as objects and a per-candidate response (``rows``), or
    candidates as columns and a columnar response (``columns``)."""
    rows = range(offset, offset + n)
    hist = table["user_hist_categories"][offset]
    context = {"user_segment": table["user_segment"][offset],
               "device": table["device"][offset], "hour": table["hour"][offset],
               "user_hist_categories": "|".join(map(str, hist))}
    if layout == "columns":
        return {"context": context, "format": "columns",
                "candidates": {"id": list(rows), **{k: table[k][offset:offset + n]
                                                    for k in ITEM}}}
    return {"context": context,
            "candidates": [{"id": i, **{k: table[k][i] for k in ITEM}} for i in rows]}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--swap-seconds", type=float, default=60.0)
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--server-cpus", default=None,
                        help="pin the server to these CPUs (e.g. 0,1) and the client to the "
                             "others: the server then gets its cores to itself")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (each loads the model and has --threads)")
    parser.add_argument("--threads", type=int, default=2,
                        help="the server's inference threads (cores are split between them)")
    args = parser.parse_args()
    server_cpus = {int(c) for c in args.server_cpus.split(",")} if args.server_cpus else None
    if server_cpus:
        os.sched_setaffinity(0, os.sched_getaffinity(0) - server_cpus)  # the client's
    cores = len(server_cpus) if server_cpus else usable_cores()
    per_thread = max(1, cores // (args.threads * args.workers))  # as rankengine serve splits
    retain_freed_memory()  # model-only times under the server's allocator settings
    tmp = Path(tempfile.mkdtemp())
    write_funnel(tmp / "data", SimulationConfig(requests=20_000, seed=7))
    config = load_config(REPO / "engine.toml")
    for split in ("train", "valid", "test"):
        setattr(config.data, split, str(tmp / "data" / f"{split}.parquet"))
    config.train.epochs = 2
    config.train.progress = False
    trained = train(config, progress=False)
    url = f"sqlite:///{tmp / 'reg.db'}"
    store = RegistryStore(url)
    for _ in range(2):
        register(store, tmp / "artifacts", trained, "demo")
    store.set_alias("demo", "champion", 1)
    table = pq.read_table(tmp / "data" / "test.parquet").to_pydict()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "rankengine.cli", "serve", "demo@champion", "--registry", url,
         "--port", str(port), "--threads", str(args.threads),
         "--workers", str(args.workers), "--poll-interval", "0.5",
         "--max-candidates", "5000", "--backend", args.backend],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, server_cpus)) if server_cpus else None)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        ready_in_a_row = 0  # every worker process answers ready, not just the first
        while ready_in_a_row < 10 * args.workers:
            try:
                ready = httpx.get(f"{base}/v2/health/ready").status_code == 200
            except httpx.HTTPError:
                ready = False
            ready_in_a_row = ready_in_a_row + 1 if ready else 0
            if time.time() > deadline:
                raise SystemExit("server did not become ready")
            time.sleep(0.05 if ready else 0.2)
        _, loaded = load_version(store, "demo/1")
        onnx_path = export(loaded, tmp / "demo.onnx", "onnx")
        import onnxruntime

        options = onnxruntime.SessionOptions()  # the server's per-thread budget
        options.intra_op_num_threads = per_thread
        session = onnxruntime.InferenceSession(str(onnx_path), options)
        print(f"# demo MMoE + ESM² served by rankengine serve --backend {args.backend} "
              f"({args.workers} worker(s) x {args.threads} inference threads), "
              f"{cores} server cores" + (f" (CPUs {args.server_cpus}; the client on "
                                           f"others)" if server_cpus else " shared with the "
                                           "client") + f", torch {torch.__version__}")
        print("| candidates | format | concurrency | p50 ms | p99 ms | candidates/s "
              "| server p50 ms: parse / context / candidates / model / respond = total "
              "| model-only p50 ms | ONNX Runtime p50 ms | overhead / model time |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for n in (100, 500, 1000):
            offsets = [(i * 37) % (len(table["position"]) - n) for i in range(20)]
            model_ms, onnx_ms = model_only(loaded, session, payload(table, n, offsets[0]), n,
                                           per_thread)
            for layout in ("rows", "columns"):
                bodies = [payload(table, n, offset, layout) for offset in offsets]
                for concurrency in (1, 4):
                    lat, wall, stages = load(base, bodies, args.requests, concurrency)
                    p50 = percentile(lat, 50)
                    forward = onnx_ms if args.backend == "onnxruntime" else model_ms
                    breakdown = " / ".join(f"{np.median(stages[k]):.2f}"
                                           for k in STAGES[:-1])
                    print(f"| {n} | {layout} | {concurrency} | {p50:.1f} | "
                          f"{percentile(lat, 99):.1f} | {n * len(lat) / wall:,.0f} | "
                          f"{breakdown} = {np.median(stages['total']):.2f} | {model_ms:.1f} | "
                          f"{onnx_ms:.1f} | {(p50 - forward) / forward:.0%} |", flush=True)
        swap(base, store, table, args.swap_seconds)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        store.close()


def model_only(loaded, session, body: dict, n: int,  # type: ignore[no-untyped-def]
               torch_threads: int) -> tuple[float, float]:
    """Forward pass alone (already encoded inputs), in this process, and with ONNX Runtime."""
    import pyarrow as pa

    cols = {**{k: [v] * n for k, v in body["context"].items()},
            **{k: [c[k] for c in body["candidates"]] for k in body["candidates"][0] if k != "id"}}
    cat, dense, seqs = loaded.pipeline.transform(pa.table(cols))
    predict = backend_class(loaded.engine)(loaded)  # what the server runs per request
    threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads)  # the server's budget per inference thread
    times, onnx_times = [], []
    feeds = dict(zip(input_names(loaded), [cat, dense, *seqs], strict=True))
    for _ in range(30):
        started = time.perf_counter()
        predict(cat, dense, seqs)
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        session.run(None, feeds)
        onnx_times.append(time.perf_counter() - started)
    torch.set_num_threads(threads)
    return percentile(times[5:], 50), percentile(onnx_times[5:], 50)


STAGES = ("parse", "context", "candidates", "model", "respond", "total")


def load(base: str, bodies: list[dict], requests: int, concurrency: int
         ) -> tuple[list[float], float, dict[str, list[float]]]:
    """End-to-end latencies (s), wall time (s) and the server's own stage times (ms)."""
    latencies: list[float] = []
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    lock = threading.Lock()
    encoded = [orjson.dumps(b) for b in bodies]  # client JSON work is not the server's
    headers = {"content-type": "application/json"}

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            for i in range(k, requests, concurrency):
                started = time.perf_counter()
                response = http.post("/v1/rank", content=encoded[i % len(bodies)],
                                     headers=headers)
                response.raise_for_status()
                orjson.loads(response.content)
                elapsed = time.perf_counter() - started
                timing = dict(p.split(";dur=") for p in
                              response.headers["server-timing"].split(", "))
                with lock:
                    latencies.append(elapsed)
                    for key in STAGES:
                        stages[key].append(float(timing[key]))

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return latencies, time.perf_counter() - started, stages


def swap(base: str, store: RegistryStore, table: dict[str, list], seconds: float) -> None:
    body = payload(table, 100, 0)
    stop = time.time() + seconds
    swap_at = time.time() + seconds / 2
    results: list[tuple[float, int, int]] = []
    lock = threading.Lock()

    def client(_: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while time.time() < stop:
                sent = time.time()
                try:
                    response = http.post("/v1/rank", json=body)
                    version = response.json().get("version", -1) if response.status_code == 200 \
                        else -1
                    status = response.status_code
                except httpx.HTTPError:
                    version, status = -1, 0
                with lock:
                    results.append((sent, status, version))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, swap_at - time.time()))
    store.set_alias("demo", "champion", 2, reason="benchmark swap")
    moved = time.time()
    for t in threads:
        t.join()
    failed = sum(1 for _, status, _ in results if status != 200)
    switched = min((s for s, _, v in results if v == 2), default=None)
    stale = sum(1 for s, _, v in results if switched is not None and s > switched and v != 2)
    print(f"\nalias swap under load: {len(results)} requests from 4 clients over {seconds:.0f} s, "
          f"{failed} failed; first response from version 2 "
          f"{(switched - moved) if switched else float('nan'):.2f} s after the move; "
          f"{stale} responses from version 1 after that")


if __name__ == "__main__":
    main()
