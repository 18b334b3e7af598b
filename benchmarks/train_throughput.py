"""Training throughput and quality of a config (default: census MMoE), measured end to end.

    python benchmarks/train_throughput.py [--config examples/census/engine.toml] [--seeds 1 2 3]

Prints one markdown row per seed: test AUC per task, training samples/s (the training loop
only, excluding data loading and evaluation) and wall seconds for the whole job.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from rankengine.config import load_config
from rankengine.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="examples/census/engine.toml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2018])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {args.config} on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = None
    for seed in args.seeds:
        config = load_config(args.config)
        config.engine.seed = seed
        config.train.progress = False
        started = time.perf_counter()
        trained = train(config, progress=False)
        wall = time.perf_counter() - started
        test = trained.result.metrics.get("test") or trained.result.metrics["valid"]
        tasks = [t for t, m in test.items() if "auc" in m]
        if header is None:
            header = ["seed", *[f"{t} AUC" for t in tasks], "train samples/s", "wall s"]
            print("| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
        cells = [str(seed), *[f"{test[t]['auc']:.4f}" for t in tasks],
                 f"{trained.result.samples_per_second:,.0f}", f"{wall:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
