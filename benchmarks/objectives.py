"""Multi-objective toolbox on the simulated funnel: loss weightings and ranking losses by seed.

    python benchmarks/objectives.py [--requests 30000] [--seeds 1 2 3] [--epochs 3]

Simulates ``requests * 10`` impressions once (seed 7) and trains the demo engine.toml's tasks,
features and ESM² cascade with a lighter MMoE (4 experts of [64], towers [32], batch 2048: the
variants are the point, and 24 runs must fit in minutes) once per variant and seed: fixed
weights, uncertainty, DWA, GradNorm, PCGrad and Pareto weighting, then fixed + BPR and
fixed + listwise on the fused score. Reports, mean ± standard
deviation over the seeds: test AUC per task and per-request NDCG@10 of the *fused* ranking score
for each behaviour's label (requests without a positive for that behaviour are skipped), plus
training time. Writes the raw numbers to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rankengine.config import ComponentRef, RankingSection, load_config
from rankengine.predict import score_table
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train
from rankengine.tune import GroupedNDCG

REPO = Path(__file__).resolve().parents[1]
TASKS = ("click", "favorite", "order", "pay")
VARIANTS: dict[str, tuple[str, str | None]] = {
    "fixed": ("fixed", None),
    "uncertainty": ("uncertainty", None),
    "dwa": ("dwa", None),
    "gradnorm": ("gradnorm", None),
    "pcgrad": ("pcgrad", None),
    "pareto": ("pareto", None),
    "fixed + bpr": ("fixed", "bpr"),
    "fixed + listwise": ("fixed", "listwise"),
}


def run(data: Path, variant: str, seed: int, epochs: int) -> dict[str, object]:
    weighting, ranking = VARIANTS[variant]
    config = load_config(REPO / "engine.toml")
    for split in ("train", "valid", "test"):
        setattr(config.data, split, str(data / f"{split}.parquet"))
    config.engine.seed = seed
    config.train.epochs = epochs
    config.model.backbone = ComponentRef(kind="mmoe", experts=4, expert_hidden=[64])
    config.model.tower = ComponentRef(kind="mlp", hidden=[32])
    config.train.progress = False
    config.loss.weighting = ComponentRef(kind=weighting)
    if ranking:
        config.loss.ranking = RankingSection(kind=ranking, target="fused", weight=0.5)
    started = time.perf_counter()
    trained = train(config, progress=False)
    seconds = time.perf_counter() - started
    test = pq.read_table(data / "test.parquet")
    scored = score_table(trained_loaded(trained), test)
    gains = np.stack([np.asarray(test.column(t), dtype=np.float64) for t in TASKS], axis=1)
    ndcg = GroupedNDCG(np.asarray(test.column("request_id")), gains, 10)(scored["score"])
    metrics = trained.result.metrics["test"]
    return {
        "variant": variant, "seed": seed, "seconds": seconds,
        "auc": {t: metrics[t]["auc"] for t in TASKS},
        "ndcg10": dict(zip(TASKS, map(float, ndcg), strict=True)),
        "loss_weights": trained.result.loss_weights,
    }


def trained_loaded(trained):  # type: ignore[no-untyped-def]
    """The in-memory model as the offline scorer sees a loaded artifact."""
    from rankengine.artifact import load_artifact, save_artifact

    with tempfile.TemporaryDirectory() as tmp:
        return load_artifact(save_artifact(trained, Path(tmp) / "artifact"))


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {sd:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_funnel(data, SimulationConfig(requests=args.requests, seed=7))
        for variant in args.variants:
            for seed in args.seeds:
                rows.append(run(data, variant, seed, args.epochs))
                print(f"  {variant} seed {seed}: {rows[-1]['seconds']:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n# {args.requests * 10:,} simulated impressions, demo tasks and features, MMoE 4 x "
          f"[64], {args.epochs} epochs, seeds {args.seeds}; mean ± sd over seeds")
    header = " | ".join([f"AUC {t}" for t in TASKS] + [f"NDCG@10 {t}" for t in TASKS])
    print(f"| variant | {header} | train s |")
    print("|---" * (2 + 2 * len(TASKS)) + "|")
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        cells = [spread([r["auc"][t] for r in mine]) for t in TASKS]  # type: ignore[index]
        cells += [spread([r["ndcg10"][t] for r in mine]) for t in TASKS]  # type: ignore[index]
        seconds = statistics.fmean(float(r["seconds"]) for r in mine)  # type: ignore[arg-type]
        print(f"| {variant} | {' | '.join(cells)} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
