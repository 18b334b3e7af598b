"""Quality on the simulated funnel: model vs oracle AUC, and the sample-selection-bias test.

    python benchmarks/funnel_quality.py [--requests 50000] [--cascades esm2 esmm independent]

Simulates ``requests * 10`` impressions (seed 7), trains the demo engine.toml once per cascade
and prints, per task: entire-space AUC next to the oracle's, and the conditional model judged on
every impression with the simulator's counterfactual labels (``AUC|parent (all rows)``), which
is where training on the clicked subspace only (the independent cascade) is biased.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rankengine.config import ComponentRef, load_config
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

REPO = Path(__file__).resolve().parents[1]
TASKS = ("click", "favorite", "order", "pay")


def cascade_ref(spec: str) -> ComponentRef:
    kind, _, weight = spec.partition("+aux")
    params = {"conditional_loss_weight": float(weight or 1.0)} if "+aux" in spec else {}
    return ComponentRef(kind=kind, **params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--cascades", nargs="+",
                        default=["esm2", "esmm", "independent", "esmm+aux"])
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_funnel(tmp, SimulationConfig(requests=args.requests, seed=7))
        print(f"# {args.requests * 10:,} simulated impressions (seed 7), demo engine.toml")
        print("| cascade | task | AUC | oracle | gap | AUC\\|parent | oracle | "
              "AUC\\|parent (all rows) | oracle | train s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for spec in args.cascades:
            config = load_config(REPO / "engine.toml")
            for split in ("train", "valid", "test"):
                setattr(config.data, split, str(Path(tmp) / f"{split}.parquet"))
            config.model.cascade = cascade_ref(spec)
            if args.epochs:
                config.train.epochs = args.epochs
            started = time.perf_counter()
            trained = train(config, progress=False)
            seconds = time.perf_counter() - started
            test = trained.result.metrics["test"]
            for task in TASKS:
                m = test[task]
                cells = [m.get(k, float("nan")) for k in (
                    "auc", "oracle_auc", "auc_cond", "oracle_auc_cond", "auc_cond_entire",
                    "oracle_auc_cond_entire")]
                gap = cells[1] - cells[0]
                row = [spec, task, *(f"{v:.4f}" for v in cells[:2]), f"{gap:.4f}",
                       *(f"{v:.4f}" for v in cells[2:]), f"{seconds:.0f}"]
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
