"""Streaming scale: time and peak RSS of training on 1M / 3M / 10M Parquet rows, next to the
in-memory path, and 1 vs 2 processes under torchrun.

    python benchmarks/streaming_scale.py [--rows 1000000 3000000 10000000] [--workdir DIR]

Simulates the largest size once as 100k-row Parquet shards (kept in ``--workdir`` for reruns),
then trains one epoch per configuration in a fresh child process (so peak RSS is that job's
own; "job s" includes reading, fitting and encoding, "train s" the epoch loop, which for the
streamed path also reads and encodes): streamed at every size, in memory where it fits, and,
at the smallest size, streamed on 2 ranks under ``torchrun --standalone``. The model is a light
MMoE (4 experts of 64, towers 32, batch 4096): the point is the data path, not the model.
Validation is a fixed 100k rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
SHARD_ROWS = 100_000

CONFIG = """
[engine]
seed = 3
threads = {threads}

[data]
train = "{train}"
valid = "{valid}"
streaming = {streaming}
buffer_rows = 262144
fit_rows = 500000

[train]
epochs = 1
batch_size = 4096
lr = 3e-3
progress = false
early_stopping = {{ metric = "loss", patience = 2 }}

[evaluate]
metrics = ["auc"]

[model]
backbone = {{ kind = "mmoe", experts = 4, expert_hidden = [64] }}
tower = {{ kind = "mlp", hidden = [32] }}
cascade = "esm2"

[tasks]
click = {{ label = "click" }}
favorite = {{ label = "favorite", after = "click" }}
order = {{ label = "order", after = "click", via = "favorite" }}
pay = {{ label = "pay", after = "order" }}
"""
FEATURES = [("user_segment", "categorical", "context"), ("device", "categorical", "context"),
            ("hour", "categorical", "context"), ("item_category", "categorical", "item"),
            ("item_brand", "categorical", "item")]


def config_text(train: Path, valid: Path, streaming: bool, threads: int) -> str:
    text = CONFIG.format(train=train, valid=valid, streaming=str(streaming).lower(),
                         threads=threads)
    for name, kind, side in FEATURES:
        text += f'\n[[features]]\nname = "{name}"\nkind = "{kind}"\nside = "{side}"\ndim = 16\n'
    text += '\n[[features]]\nname = "item_price"\nkind = "numeric"\n' \
            'transform = "log1p_standardize"\n'
    text += '\n[[features]]\nname = "user_hist_categories"\nkind = "sequence"\nmax_len = 10\n' \
            'side = "context"\n'
    return text


def child(config: str) -> None:
    """Train in this process; print rows, seconds and this process's peak RSS as JSON."""
    from rankengine.config import load_config
    from rankengine.distributed import shutdown
    from rankengine.train import train

    started = time.perf_counter()
    trained = train(load_config(config), progress=False)
    seconds = time.perf_counter() - started
    rss_mb = peak_rss_mb()
    result = trained.result
    out = {"rank": int(os.environ.get("RANK", "0")), "rows": result.rows["train"],
           "train_seconds": result.train_seconds, "job_seconds": seconds,
           "samples_per_second": result.samples_per_second, "peak_rss_mb": rss_mb,
           "valid_auc_click": result.metrics["valid"]["click"]["auc"]}
    print("RESULT " + json.dumps(out), flush=True)
    shutdown()


def peak_rss_mb() -> float:
    """This process's own peak RSS. (``ru_maxrss`` would not do: Linux carries the parent's
    high-water mark across fork and exec, and the parent holds the simulated data.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(config: Path, ranks: int = 1) -> list[dict[str, float]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1" if ranks > 1 else "2"}
    prefix = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
        str(ranks)]
    done = subprocess.run([*prefix, __file__, "--child", str(config)], capture_output=True,
                          text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    return [json.loads(line[7:]) for line in done.stdout.splitlines()
            if line.startswith("RESULT ")]


def prepare(workdir: Path, largest: int) -> tuple[Path, Path]:
    from rankengine.simulate import SimulationConfig, write_funnel

    shards = workdir / "train"
    if not shards.is_dir() or len(list(shards.glob("*.parquet"))) * SHARD_ROWS < largest:
        # 80 % of the simulated rows are the train split.
        requests = int(largest / 0.8 / 10) + 1
        scratch = workdir / "sim"
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"simulating {requests * 10:,} rows ...", flush=True)
        write_funnel(scratch, SimulationConfig(requests=requests, seed=7),
                     shards=max(1, requests * 10 * 8 // 10 // SHARD_ROWS))
        shutil.rmtree(shards, ignore_errors=True)
        (scratch / "train").rename(shards)
        valid = pq.read_table(scratch / "valid").slice(0, 100_000)
        pq.write_table(valid, workdir / "valid.parquet")
        shutil.rmtree(scratch)
    return shards, workdir / "valid.parquet"


def subset(shards: Path, rows: int, into: Path) -> Path:
    """A directory of symlinks to the first shards holding about ``rows`` rows."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    total = 0
    for shard in sorted(shards.glob("*.parquet")):
        if total >= rows:
            break
        (into / shard.name).symlink_to(shard)
        total += pq.ParquetFile(shard).metadata.num_rows
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 3_000_000,
                                                                  10_000_000])
    parser.add_argument("--in-memory-up-to", type=int, default=3_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rankengine-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shards, valid = prepare(workdir, max(args.rows))
    print(f"# one epoch, light MMoE, batch 4096, {os.cpu_count()} cores; data in {workdir}")
    print("| rows | path | processes | job s | train s | train samples/s | peak RSS MB | "
          "valid AUC click |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in sorted(args.rows):
        train_dir = subset(shards, rows, workdir / f"subset-{rows}")
        runs = [("streamed", True, 1)]
        if rows <= args.in_memory_up_to:
            runs.insert(0, ("in memory", False, 1))
        if rows == min(args.rows):
            runs.append(("streamed", True, 2))
        for label, streaming, ranks in runs:
            config = workdir / f"engine-{rows}-{label.replace(' ', '')}-{ranks}.toml"
            threads = 2 if ranks == 1 else 1
            config.write_text(config_text(train_dir, valid, streaming, threads))
            results = run_child(config, ranks)
            main_rank = next(r for r in results if r["rank"] == 0)
            rss = max(r["peak_rss_mb"] for r in results)
            print(f"| {sum(r['rows'] for r in results):,.0f} | {label} | {ranks} | "
                  f"{main_rank['job_seconds']:.0f} | {main_rank['train_seconds']:.0f} | "
                  f"{main_rank['samples_per_second']:,.0f} | "
                  f"{rss:,.0f}{' per rank' if ranks > 1 else ''} | "
                  f"{main_rank['valid_auc_click']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
