"""Multi-task architectures on the simulated funnel (issue #18), by seed.

    python benchmarks/cascades.py [--requests 50000] [--seeds 1 2 3]
                                  [--variants independent esmm esm2 aitm aitm_paper dbmtl
                                              escm2_ips escm2_dr mmoe_top2]
                                  [--json benchmarks/cascades_results.json] [--append]
                                  [--table]

Simulates ``requests * 10`` impressions once (seed 7) and trains the demo engine.toml (MMoE
8 experts, 6 epochs) once per variant and training seed, the variant replacing the cascade
(``escm2_ips`` / ``escm2_dr``: ESCM² on ESM² with that regulariser; ``mmoe_top2``: ESM² with
``top_k = 2``, the sparse MoE). Per task on the test split: entire-space AUC, AUC|parent (the
conditional prediction on parent-positive rows), the counterfactual AUC|parent on every row
(the simulator's labels of what the user would have done had the parent happened) and
calibration; the training seconds per epoch; and the share of test rows where every child's
p(child) <= p(parent) (the composition guarantees it except for AITM, whose calibrator only
pushes it; ``aitm_paper`` is AITM with the paper's calibrator on probabilities, weight 0.6).
Prints mean ± standard deviation over seeds; writes the raw numbers to ``--json`` after
every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rankengine.config import ComponentRef, load_config
from rankengine.predict import score_table
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

REPO = Path(__file__).resolve().parents[1]
TASKS = ("click", "favorite", "order", "pay")
VARIANTS: dict[str, dict[str, Any]] = {
    "independent": {"cascade": {"kind": "independent"}},
    "esmm": {"cascade": {"kind": "esmm"}},
    "esm2": {"cascade": {"kind": "esm2"}},
    "aitm": {"cascade": {"kind": "aitm"}},
    "aitm_paper": {"cascade": {"kind": "aitm", "calibrator": "probability",
                               "calibrator_weight": 0.6}},
    "dbmtl": {"cascade": {"kind": "dbmtl"}},
    "escm2_ips": {"cascade": {"kind": "escm2", "regulariser": "ips"}},
    "escm2_dr": {"cascade": {"kind": "escm2", "regulariser": "dr"}},
    "mmoe_top2": {"cascade": {"kind": "esm2"}, "top_k": 2},
}


def run(variant: str, data: Path, seed: int) -> dict[str, Any]:
    config = load_config(REPO / "engine.toml")
    for split in ("train", "valid", "test"):
        setattr(config.data, split, str(data / f"{split}.parquet"))
    config.engine.seed = seed
    spec = VARIANTS[variant]
    config.model.cascade = ComponentRef(**spec["cascade"])
    if "top_k" in spec:
        config.model.backbone = ComponentRef(kind=config.model.backbone.kind,
                                             **config.model.backbone.params,
                                             top_k=spec["top_k"])
    started = time.perf_counter()
    trained = train(config, progress=False)
    seconds = time.perf_counter() - started
    test = trained.result.metrics["test"]
    scored = score_table(trained, pq.read_table(data / "test.parquet"))
    graph = trained.graph
    p = np.stack([scored[f"p_{t}"] for t in graph.names], axis=1)
    ordered = np.ones(len(p), dtype=bool)
    for i, parent in enumerate(graph.parent_index):
        if parent >= 0 and graph.nodes[i].type == "binary":
            ordered &= p[:, i] <= p[:, parent] + 1e-9
    return {"variant": variant, "seed": seed, "seconds": seconds,
            "epochs": trained.result.epochs_run,
            "metrics": {t: {k: test[t].get(k) for k in (
                "auc", "auc_cond", "auc_cond_entire", "calibration", "oracle_auc",
                "oracle_auc_cond_entire")} for t in TASKS},
            "ordered_rows": float(ordered.mean())}


def mean_sd(values: list[float | None]) -> str:
    numbers = [v for v in values if v is not None]
    if not numbers:
        return "-"
    if len(numbers) < 2:
        return f"{numbers[0]:.4f}"
    return f"{statistics.mean(numbers):.4f} ± {statistics.stdev(numbers):.4f}"


def table(runs: list[dict[str, Any]]) -> str:
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    lines = ["| variant | task | AUC | AUC\\|parent | AUC\\|parent (all rows) | calibration | "
             "s / epoch | rows with p(child) <= p(parent) |", "|---|---|---|---|---|---|---|---|"]
    for variant, rs in by_variant.items():
        per_epoch = statistics.mean(r["seconds"] / r["epochs"] for r in rs)
        ordered = min(r["ordered_rows"] for r in rs)
        for t in TASKS:
            cells = [mean_sd([r["metrics"][t][k] for r in rs])
                     for k in ("auc", "auc_cond", "auc_cond_entire", "calibration")]
            lines.append(f"| {variant} | {t} | " + " | ".join(cells) +
                         f" | {per_epoch:.0f} | {ordered:.4%} |")
    oracle = runs[0]["metrics"]  # the simulator's true probabilities, the same for every run
    for t in TASKS:
        cond = oracle[t]["oracle_auc_cond_entire"]
        lines.append(f"| oracle | {t} | {oracle[t]['oracle_auc']:.4f} | | "
                     f"{'-' if cond is None else f'{cond:.4f}'} | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" /
                        "cascades_results.json")
    parser.add_argument("--append", action="store_true",
                        help="add to the runs already in --json (same data)")
    parser.add_argument("--table", action="store_true",
                        help="print the table of the runs in --json and train nothing")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = json.loads(args.json.read_text())["runs"] \
        if (args.append or args.table) and args.json.exists() else []
    if args.table:
        print(table(runs))
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_funnel(tmp, SimulationConfig(requests=args.requests, seed=7))
        for variant in args.variants:
            for seed in args.seeds:
                runs.append(run(variant, Path(tmp), seed))
                print(json.dumps(runs[-1]), flush=True)
                # after every run: an hour-long sitting that is cut short keeps what it measured
                args.json.write_text(json.dumps({"requests": args.requests, "runs": runs},
                                                indent=1) + "\n")
    print(table(runs))


if __name__ == "__main__":
    main()
