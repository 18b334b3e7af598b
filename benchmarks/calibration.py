"""Calibrated probabilities (issue #15): the model's own output vs its calibrator, by seed.

    python benchmarks/calibration.py [--requests 50000] [--seeds 1 2 3]
                                     [--cases demo label_weight bias_tower census]

Simulates ``requests * 10`` impressions once (seed 7) and trains, once per training seed
(``[engine] seed``):

* ``demo``: the demo engine.toml as it is (ESM² + MMoE, ``[calibration] kind = "platt"``);
* ``label_weight``: the same with ``sample_weighting = { kind = "label_weight",
  weights = { pay = 5.0 } }`` (pay positives count five times);
* ``bias_tower``: the same with the position-bias tower on: ``position`` moves to the ``bias``
  group and feeds only a shallow tower whose logit is added to click's during training;
* ``census``: examples/census/engine.toml (MMoE, income and never married) with a Platt
  calibrator (``--census-calibrator``); ``--census-rows`` keeps the first rows of each file.

For each binary task, on the test split: calibration (mean prediction / mean label), ECE (10
equal-mass buckets), logloss and AUC, the model's own output (``uncalibrated_metrics``) →
calibrated (``metrics``), and the training wall seconds. On the simulated data the oracle (the
simulator's true probability) is scored with the same functions: its ECE is what a perfect
model gets on this test split (the noise floor under any ECE target), its calibration ratio
the sampling noise of the labels' mean. Prints one markdown table per case (mean ± standard
deviation over seeds; min / max of the calibrated ratio) and whether every binary node's
calibrated ratio is within [0.95, 1.05] (simulated cases) or [0.97, 1.03] (census) on every
seed; writes the raw numbers to ``--json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from rankengine_plugins.metrics import ECE_BUCKETS, auc, calibration, ece, logloss

from rankengine.config import (
    BiasTowerSection,
    CalibrationSection,
    ComponentRef,
    EngineConfig,
    load_config,
)
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "engine.toml"
CENSUS = REPO / "examples" / "census" / "engine.toml"
SIMULATED = ("demo", "label_weight", "bias_tower")
CASES = (*SIMULATED, "census")
#: the band every binary node's calibrated ratio must stay in, on every seed
BANDS = {"demo": (0.95, 1.05), "label_weight": (0.95, 1.05), "bias_tower": (0.95, 1.05),
         "census": (0.97, 1.03)}
METRICS = ("calibration", "ece", "logloss", "auc")


def demo_config(case: str, data: Path) -> EngineConfig:
    config = load_config(DEMO)
    for split in ("train", "valid", "test"):
        setattr(config.data, split, str(data / f"{split}.parquet"))
    if case == "label_weight":
        config.loss.sample_weighting = ComponentRef.model_validate(
            {"kind": "label_weight", "weights": {"pay": 5.0}})
    elif case == "bias_tower":
        config.features = [f.model_copy(update={"groups": ["bias"]}) if f.name == "position"
                           else f for f in config.features]
        config.model.bias_tower = BiasTowerSection(groups=["bias"], tasks=["click"])
    return config


def census_config(calibrator: str, rows: int | None, tmp: Path) -> EngineConfig:
    config = load_config(CENSUS)
    config.calibration = CalibrationSection(kind=calibrator)
    if rows:  # the first `rows` lines of each file (a quick check, not the benchmark)
        for split in ("train", "test"):
            source = Path(getattr(config.data, split))
            if not source.is_absolute():
                source = CENSUS.parent / source
            target = tmp / f"census_{split}_{rows}.csv.gz"
            with gzip.open(source, "rt", encoding="utf-8") as src, \
                    gzip.open(target, "wt", encoding="utf-8") as dst:
                for i, line in enumerate(src):
                    if i >= rows:
                        break
                    dst.write(line)
            setattr(config.data, split, str(target))
    return config


def oracle_scores(config: EngineConfig, test: Path) -> dict[str, dict[str, float]]:
    """Per task with an oracle probability column: the metrics of that column on ``test``."""
    wanted = {name: (spec.label, spec.oracle.p) for name, spec in config.tasks.items()
              if spec.type == "binary" and spec.oracle and spec.oracle.p
              and isinstance(spec.label, str)}
    table = pq.read_table(test, columns=sorted({c for pair in wanted.values() for c in pair}))
    out = {}
    for name, (label, column) in wanted.items():
        y = np.asarray(table.column(label), dtype=np.float64)
        p = np.asarray(table.column(column), dtype=np.float64)
        out[name] = {m: float(fn(y, p)) for m, fn in (
            ("calibration", calibration), ("ece", ece), ("logloss", logloss), ("auc", auc))}
    return out


def run(case: str, config: EngineConfig, seed: int, epochs: int | None,
        threads: int | None) -> dict[str, Any]:
    config.engine.seed = seed
    config.train.progress = False
    if epochs:
        config.train.epochs = epochs
    if threads:
        config.engine.threads = threads
    binary = [name for name, spec in config.tasks.items() if spec.type == "binary"]
    started = time.perf_counter()
    trained = train(config, progress=False)
    seconds = time.perf_counter() - started
    result = trained.result
    assert result is not None
    split = "test" if "test" in result.metrics else "valid"
    calibrated = result.metrics[split]
    # No calibrator active: the trainer reports no uncalibrated metrics (they are the same).
    own = (result.uncalibrated_metrics or result.metrics)[split]
    tasks = {}
    for task in binary:
        # Every metric the engine computed (METRICS and whatever else this version of it has:
        # _cond variants, oracle_*), calibrated under its own name, the model's own output
        # with the suffix _uncalibrated; an undefined metric (NaN) is null.
        values = {k: number(v) for k, v in calibrated[task].items() if k != "undefined"}
        values |= {f"{k}_uncalibrated": number(v) for k, v in own[task].items()
                   if k not in ("undefined", "rows", "positives", "rows_cond")
                   and not k.startswith("oracle_")}
        tasks[task] = {**{m: None for m in METRICS},
                       **{f"{m}_uncalibrated": None for m in METRICS}, **values}
    return {
        "case": case, "seed": seed, "split": split, "seconds": seconds,
        "train_seconds": result.train_seconds, "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "rows": result.rows,
        "calibrator": config.calibration.kind,
        "sample_weighting": config.loss.sample_weighting.model_dump(),
        "bias_tower": config.model.bias_tower.model_dump() if config.model.bias_tower else None,
        "calibration_fit": result.calibration,
        # the engine's explicit odds correction of a sample weighting (issue #15 item 5), where
        # this version of the engine has one
        "odds_correction": getattr(result, "odds_correction", None),
        "tasks": tasks,
    }


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def spread(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "—"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def report(case: str, rows: list[dict[str, Any]], oracle: dict[str, dict[str, float]]) -> bool:
    """Print the case's table and band line; True when every node is in the band."""
    lo, hi = BANDS[case]
    seeds = [r["seed"] for r in rows]
    first = rows[0]
    extras = [f"calibrator {first['calibrator']}"]
    if first["sample_weighting"]["kind"] != "none":
        extras.append(f"sample weighting {first['sample_weighting']}")
    if first["bias_tower"]:
        extras.append(f"bias tower on {first['bias_tower']['tasks']}")
    if first["odds_correction"]:
        extras.append(f"odds correction {first['odds_correction']}")
    seconds = spread([r["seconds"] for r in rows], 0)
    print(f"\n## {case}: seeds {seeds}, {first['split']} split, {', '.join(extras)}; "
          f"train wall s {seconds}\n")
    print("| task | calib own → calibrated | calib min / max | ECE own → calibrated | "
          "oracle ECE | oracle calib | logloss own → calibrated | AUC own → calibrated |")
    print("|---|---|---|---|---|---|---|---|")
    inside = True
    worst: tuple[float, str, int, float] | None = None
    for task in first["tasks"]:
        per = [r["tasks"][task] for r in rows]

        def pair(metric: str, per: list[dict[str, Any]] = per) -> str:
            return (f"{spread([t[f'{metric}_uncalibrated'] for t in per])} → "
                    f"{spread([t[metric] for t in per])}")

        ratios = [math.nan if t["calibration"] is None else t["calibration"] for t in per]
        for seed, ratio in zip(seeds, ratios, strict=True):
            off = abs(ratio - 1.0) if math.isfinite(ratio) else math.inf
            if not lo <= ratio <= hi:  # an undefined ratio (NaN) is outside too
                inside = False
            if worst is None or off > worst[0]:
                worst = (off, task, seed, ratio)
        o = oracle.get(task, {})
        cells = [task, pair("calibration"), f"{min(ratios):.4f} / {max(ratios):.4f}"
                 if all(map(math.isfinite, ratios)) else "—",
                 pair("ece"), f"{o['ece']:.4f}" if o else "—",
                 f"{o['calibration']:.4f}" if o else "—", pair("logloss"), pair("auc")]
        print("| " + " | ".join(cells) + " |")
    verdict = "yes" if inside else "NO"
    where = f" (farthest from 1: {worst[1]} seed {worst[2]}: {worst[3]:.4f})" if worst else ""
    print(f"\n**{case}**: every binary node's calibration within [{lo}, {hi}] on every seed: "
          f"{verdict}{where}", flush=True)
    return inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--epochs", type=int, default=None,
                        help="override every config's [train] epochs (quick checks)")
    parser.add_argument("--census-calibrator", default="platt")
    parser.add_argument("--census-rows", type=int, default=None,
                        help="keep the first N rows of each census file (quick checks)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" /
                        "calibration_results.json")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    oracles: dict[str, dict[str, dict[str, float]]] = {}
    summary: dict[str, bool] = {}
    print(f"# calibration (issue #15) on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads; "
          f"ECE over {ECE_BUCKETS} equal-mass buckets")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        if any(case in SIMULATED for case in args.cases):
            write_funnel(data, SimulationConfig(requests=args.requests, seed=7))
            print(f"# {args.requests * 10:,} simulated impressions (seed 7)", flush=True)
        for case in args.cases:
            oracle: dict[str, dict[str, float]] = {}
            rows = []
            for seed in args.seeds:
                if case == "census":
                    config = census_config(args.census_calibrator, args.census_rows, data)
                else:
                    config = demo_config(case, data)
                    oracle = oracle_scores(config, data / "test.parquet")
                rows.append(run(case, config, seed, args.epochs, args.threads))
                print(f"  {case} seed {seed}: {rows[-1]['seconds']:.0f} s "
                      f"({rows[-1]['epochs_run']} epochs)", flush=True)
            runs += rows
            oracles[case] = oracle
            summary[case] = report(case, rows, oracle)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "bands": {case: BANDS[case] for case in args.cases},
        "oracle": oracles, "within_band": summary, "runs": runs,
    }, indent=2, default=float) + "\n")
    print(f"\n# raw numbers: {args.json}")


if __name__ == "__main__":
    main()
