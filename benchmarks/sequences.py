"""Behaviour sequences (issue #17): interactions vs mean pooling vs the oracle, by seed.

    python benchmarks/sequences.py [--requests 50000] [--seeds 1 2 3]
                                   [--variants pooled din transformer dupn_lstm]
                                   [--epochs N] [--json FILE] [--append]

Simulates ``requests * 10`` impressions once (seed 7) with ``--sequence-effect 1`` (clicks
and orders depend on each user's recent behaviours) and trains examples/sequences/engine.toml
once per variant and training seed (``[engine] seed``):

* ``pooled``: the same features with no interaction: each sequence column (item, category,
  brand, behaviour, time gap) mean-pooled on its own, the baseline every peer starts from;
* ``din`` / ``transformer`` / ``dupn_lstm``: the example's ``[[model.interactions]]`` entry
  with that kind (its default parameters).

Prints, per task, the test AUC (mean ± standard deviation over seeds) next to the oracle's,
the share of the pooled model's gap to the oracle each interaction closes, and the training
seconds (total and per epoch); writes the raw numbers to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from rankengine.config import InteractionSpec, load_config
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "sequences" / "engine.toml"
TASKS = ("click", "favorite", "order", "pay")


def configured(variant: str, data: Path, seed: int, epochs: int | None) -> Any:
    config = load_config(CONFIG)
    for split in ("train", "valid", "test"):
        setattr(config.data, split, str(data / f"{split}.parquet"))
    config.engine.seed = seed
    if epochs:
        config.train.epochs = epochs
    (entry,) = config.model.interactions
    params = entry.params if variant == entry.kind else {}  # the example's are din's
    interactions = [] if variant == "pooled" else [InteractionSpec(
        name=entry.name, kind=variant, sequence=entry.sequence, target=entry.target,
        groups=entry.groups, **params)]
    config.model = config.model.model_copy(update={"interactions": interactions})
    return config


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+",
                        default=["pooled", "din", "transformer", "dupn_lstm"])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" /
                        "sequences_results.json")
    parser.add_argument("--append", action="store_true",
                        help="add to the runs already in --json (the same data: run the "
                             "variants in several sittings)")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = json.loads(args.json.read_text())["runs"] \
        if args.append and args.json.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_funnel(data, SimulationConfig(requests=args.requests, seed=7,
                                            sequence_effect=1.0))
        for variant in args.variants:
            for seed in args.seeds:
                config = configured(variant, data, seed, args.epochs)
                started = time.perf_counter()
                trained = train(config, progress=False)
                seconds = time.perf_counter() - started
                test = trained.result.metrics["test"]
                run = {"variant": variant, "seed": seed, "seconds": seconds,
                       "epochs": trained.result.epochs_run,
                       "auc": {t: test[t]["auc"] for t in TASKS},
                       "oracle_auc": {t: test[t]["oracle_auc"] for t in TASKS}}
                runs.append(run)
                print(json.dumps(run), flush=True)
    args.json.write_text(json.dumps({
        "command": "python benchmarks/sequences.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("json", "append") and v is not None),
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} threads", "runs": runs}, indent=1) + "\n")
    print(table(runs))


def table(runs: list[dict[str, Any]]) -> str:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_variant.setdefault(run["variant"], []).append(run)
    oracle = {t: runs[0]["oracle_auc"][t] for t in TASKS}
    pooled = {t: statistics.mean(r["auc"][t] for r in by_variant.get("pooled", runs))
              for t in TASKS}
    lines = ["| variant | " + " | ".join(f"{t} AUC" for t in TASKS) +
             " | gap closed (click / order) | train s | s / epoch |",
             "|---|" + "---|" * len(TASKS) + "---|---|---|"]
    for variant, rs in by_variant.items():
        cells = [mean_sd([r["auc"][t] for r in rs]) for t in TASKS]
        closed = [(statistics.mean(r["auc"][t] for r in rs) - pooled[t]) /
                  (oracle[t] - pooled[t]) for t in ("click", "order")]
        seconds = statistics.mean(r["seconds"] for r in rs)
        per_epoch = statistics.mean(r["seconds"] / r["epochs"] for r in rs)
        lines.append(f"| {variant} | " + " | ".join(cells) +
                     f" | {closed[0]:.0%} / {closed[1]:.0%} | {seconds:.0f} | "
                     f"{per_epoch:.0f} |")
    lines.append("| oracle | " + " | ".join(f"{oracle[t]:.4f}" for t in TASKS) +
                 " | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
