"""Sparse vs dense mixture of experts (issue #18): training speed at 16 and 64 experts.

    python benchmarks/sparse_moe.py [--experts 16 64] [--top-k 2] [--requests 20000]

Two measurements, each dense MMoE (every expert on every row) against ``top_k`` (each
expert only on the rows a gate routed to it):

* the backbone alone: forward + backward of MMoE (6 gates, experts of [128, 64]) on a batch
  of 2048 rows of width 256, median of 20 steps after 3 warm-up steps;
* the whole demo engine.toml training one epoch on a ``--requests * 10``-impression funnel
  with its backbone swapped for MMoE with that many experts: samples/s as ``train`` reports.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rankengine.config import ComponentRef, load_config
from rankengine.pluginmanager import load_engine
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

REPO = Path(__file__).resolve().parents[1]


def backbone_step_ms(experts: int, top_k: int, rows: int = 2048, width: int = 256) -> float:
    engine = load_engine(["backbones"])
    component = engine.components.backbones.get("mmoe")
    params = component.parse_params({"experts": experts, "expert_hidden": [128, 64],
                                     "top_k": top_k})
    moe = component.factory(params, input_dim=width, num_outputs=6)
    x = torch.randn(rows, width)
    times = []
    for step in range(23):
        started = time.perf_counter()
        loss = sum(out.sum() for out in moe(x))
        extra = moe.auxiliary_loss()
        (loss + extra if extra is not None else loss).backward()
        if step >= 3:
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def training_samples_per_second(data: Path, experts: int, top_k: int) -> float:
    config = load_config(REPO / "engine.toml")
    for split in ("train", "valid", "test"):
        setattr(config.data, split, str(data / f"{split}.parquet"))
    config.train.epochs = 1
    config.model.backbone = ComponentRef(kind="mmoe", experts=experts,
                                         expert_hidden=[128, 64], cross_layers=2, top_k=top_k)
    return float(train(config, progress=False).result.samples_per_second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experts", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| experts | backbone step dense ms | top-{args.top_k} ms | speed-up | "
          f"demo training dense samples/s | top-{args.top_k} samples/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        write_funnel(tmp, SimulationConfig(requests=args.requests, seed=7))
        for experts in args.experts:
            dense_ms = backbone_step_ms(experts, 0)
            sparse_ms = backbone_step_ms(experts, args.top_k)
            dense_sps = training_samples_per_second(Path(tmp), experts, 0)
            sparse_sps = training_samples_per_second(Path(tmp), experts, args.top_k)
            print(f"| {experts} | {dense_ms:.1f} | {sparse_ms:.1f} | "
                  f"{dense_ms / sparse_ms:.2f}x | {dense_sps:,.0f} | {sparse_sps:,.0f} | "
                  f"{sparse_sps / dense_sps:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
