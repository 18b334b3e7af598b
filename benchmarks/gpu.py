"""The GPU benchmark of issue #16 in one command: training throughput, peak device memory and
test AUC of census MMoE and the demo model (fp32, bf16, compiled), DeepCTR-Torch and
torch-rechub on the same device in the same run, and served latency for 100 / 500 / 1000
candidates.

    python benchmarks/gpu.py [--device cuda] [--epochs 2] [--out benchmarks/gpu_results.md]
    python benchmarks/gpu.py --device cpu --quick      # smoke run on a CPU, tiny data (~2 min)

1. Training: census MMoE (examples/census/engine.toml with the peer benchmark's settings,
   benchmarks/peers/common.py: embedding 16, 4 experts of [64], towers [32], batch 1024,
   Adam lr 1e-3) and the demo model (engine.toml on a simulated funnel of ``--requests``
   requests x 10 impressions), each as ``--variants`` (fp32, bf16, fp32+compile, bf16+compile:
   ``[train] precision`` / ``compile``), plus census fp32 on the CPU as the AUC reference when
   ``--device`` is not the CPU. "samples/s" is the engine's own figure (TrainResult: the epoch
   loop with its per-epoch validation, first-epoch warm-up and compilation included); "last
   epoch" is the last epoch alone (train rows / its seconds, validation included, timed by
   a hook plugin): the steady state. Peak device memory: torch.cuda.max_memory_allocated
   after reset_peak_memory_stats ("n/a" on the CPU).
2. Peers: benchmarks/peers/worker.py's DeepCTR-Torch and torch-rechub runs (their own
   trainers, the same encoded census arrays and settings) on ``--device``: worker.py builds
   them with ``device="cpu"``, so this script passes its device to their model / trainer
   constructors; their inference timing (worker.py's forward feeds CPU batches) is left out.
3. Served latency: the demo model (fp32 run) on the device, its serving back end
   (``ServingBackend.run_torch``: host arrays in, host arrays out, what one request's model
   stage runs) and the bare forward on device-resident inputs, p50 / p99 over ``--requests-
   served`` requests of already-encoded rows (CUDA synchronised around each).
4. Output: a markdown block (device name, torch version, the exact command, one table per
   part, the issue's targets) printed and written to ``--out``, raw numbers next to it
   (``.json``). Both are rewritten after every part, so a run cut short keeps what it
   measured. Each part that fails records its error and the run goes on; parts not started
   by ``--budget-s`` seconds are recorded as skipped (compiled variants run last).

Installing the peers first (pure-Python wheels; their needs tqdm, scikit-learn, pandas and
requests are usually there already). With PyPI: ``pip install --no-deps deepctr-torch==0.3.0
torch-rechub==0.9.0`` into the environment that holds the CUDA torch (benchmarks/peers/
requirements.txt pins these versions; its constraints.txt pins the CPU torch 2.13.0, so do not
use ``-c constraints.txt`` next to a CUDA torch). Without the peers their rows say "not
installed". On a machine without internet, download the wheels where pip works and carry
them, e.g. for the lent GPU machine (Python 3.12, x86-64; its image has torch but neither the
peers nor pydantic), once, here in the repository root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_17_x86_64 -d .whl deepctr-torch==0.3.0 \\
        torch-rechub==0.9.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \\
        typing-inspection==0.4.5

then run there (carry ``.whl``; ~5 min on one H100)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site && python3 -m pip install -q --no-index --no-deps \\
      --no-build-isolation -e . && PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py \\
      --out $OUT/gpu_results.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import importlib
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rankengine import hookimpl
from rankengine.config import TrainSection, load_config
from rankengine.pluginmanager import load_engine
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "peers"))
import common  # noqa: E402  (benchmarks/peers/common.py)
import worker  # noqa: E402  (benchmarks/peers/worker.py)

#: variant → ([train] precision, [train] compile)
VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False),
            "fp32+compile": ("fp32", True), "bf16+compile": ("bf16", True)}
MODELS = ("census MMoE", "demo MMoE + ESM²")
PEERS = {"deepctr-torch": ("deepctr_torch.models.multitask", ("MMOE", "PLE", "SharedBottom")),
         "torch-rechub": ("torch_rechub.trainers", ("MTLTrainer",))}
PEER_INSTALL = "pip install --no-deps deepctr-torch==0.3.0 torch-rechub==0.9.0"
CANDIDATES = (100, 500, 1000)
#: what the issue asks of a GPU run
TARGETS = {"auc_vs_cpu": 0.002, "bf16_census_sps": 1_000_000, "vs_peer": 5.0,
           "p99_500_ms": 5.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (6,000 census rows, 500 simulated requests, 1 epoch)")
    parser.add_argument("--epochs", type=int, default=None, help="default 2 (--quick: 1)")
    parser.add_argument("--requests", type=int, default=None,
                        help="simulated funnel requests for the demo model (x 10 impressions); "
                             "default 100,000 (--quick: 500)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help="default: all four (--quick: fp32 bf16 fp32+compile, and the "
                             "compiled ones on census only)")
    parser.add_argument("--peers", nargs="*", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--no-cpu-reference", dest="cpu_reference", action="store_false",
                        help="skip census fp32 on the CPU (the AUC reference)")
    parser.add_argument("--requests-served", type=int, default=None,
                        help="timed requests per candidate count (default 300; --quick: 20)")
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="parts not started after this many seconds are skipped")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu_results.md")
    args = parser.parse_args()
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.requests = args.requests or (500 if args.quick else 100_000)
    args.requests_served = args.requests_served or (20 if args.quick else 300)
    args.variants = args.variants or (["fp32", "bf16", "fp32+compile"] if args.quick
                                      else list(VARIANTS))

    bench = Bench(args)
    print(f"# {bench.info['device_name']} ({args.device}), torch {torch.__version__}; "
          f"writing {args.out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rankengine-gpu-bench-") as tmp:
        bench.run_all(Path(tmp))
    print()
    print(bench.markdown(), flush=True)
    # DeepCTR-Torch checks PyPI for a newer version in a non-daemon thread at import, with no
    # timeout: without a network that thread may never end, and the interpreter would wait.
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class EpochClock:
    """A plugin that stamps the end of every epoch (after its validation): the last epoch's
    samples/s is the steady state, free of the first epoch's warm-up and compilation."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.rows = 0

    @hookimpl
    def rankengine_before_train(self, context: Any) -> None:
        self.marks = [time.perf_counter()]
        self.rows = int(context.rows.get("train", 0))

    @hookimpl
    def rankengine_after_epoch(self, context: Any, epoch: int, metrics: Any) -> None:
        self.marks.append(time.perf_counter())

    def last_epoch_sps(self) -> float | None:
        if len(self.marks) < 2 or not self.rows:
            return None
        return self.rows / (self.marks[-1] - self.marks[-2])


class Bench:
    """The run: its parts, their results, and the markdown / JSON written after each part."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.started = time.perf_counter()
        self.threads = torch.get_num_threads()
        self.results: dict[str, Any] = {"train": [], "peers": [], "serve": [], "parts": []}
        self.info = machine_info(self.device)
        self.info.update(command="python " + shlex.join([
            Path(sys.argv[0]).resolve().relative_to(REPO).as_posix()
            if Path(sys.argv[0]).resolve().is_relative_to(REPO) else sys.argv[0],
            *sys.argv[1:]]), quick=args.quick, epochs=args.epochs,
            funnel_requests=args.requests, seed=args.seed, torch_threads=self.threads,
            config_keys={k: k in TrainSection.model_fields
                         for k in ("device", "precision", "compile")})
        self.results["info"] = self.info
        self.demo_bundle: Any = None
        self.funnel: Path | None = None

    # -- the parts ------------------------------------------------------------------------

    def run_all(self, tmp: Path) -> None:
        args = self.args
        self.part("census data", lambda: self.prepare_census(tmp))
        cuda = self.device.type == "cuda"
        eager = [v for v in args.variants if not VARIANTS[v][1]]
        compiled = [v for v in args.variants if VARIANTS[v][1]]
        for variant in eager:
            self.train_part("census MMoE", variant, self.device)
        if cuda and args.cpu_reference:
            self.train_part("census MMoE", "fp32", torch.device("cpu"))
        for library in args.peers:
            row: dict[str, Any] = {"library": library, "device": str(self.device)}
            self.results["peers"].append(row)
            self.part(f"peer {library}", lambda library=library, row=row: self.peer(
                library, row), row)
        self.part("funnel data", lambda: self.simulate(tmp))
        for variant in eager:
            self.train_part("demo MMoE + ESM²", variant, self.device)
        self.part("served latency", self.serve)
        for variant in compiled:
            self.train_part("census MMoE", variant, self.device)
        for variant in compiled:
            if args.quick:  # compiling takes a minute or more on a CPU; census shows the path
                self.results["train"].append({"model": "demo MMoE + ESM²", "variant": variant,
                                              "device": str(self.device),
                                              "skipped": "--quick compiles census only"})
                continue
            self.train_part("demo MMoE + ESM²", variant, self.device)
        self.info["total_s"] = time.perf_counter() - self.started

    def part(self, name: str, fn: Callable[[], Any],
             row: dict[str, Any] | None = None) -> None:
        """Run one part: its seconds, its error (the run goes on), skipped past the budget;
        the error or reason for skipping also goes to ``row`` (the part's table row)."""
        record: dict[str, Any] = {"part": name}
        elapsed = time.perf_counter() - self.started
        if elapsed > self.args.budget_s:
            record["skipped"] = (f"not started: {elapsed:.0f} s had passed, past --budget-s "
                                 f"{self.args.budget_s:.0f}")
        else:
            print(f"## {name}", flush=True)
            started = time.perf_counter()
            try:
                value = fn()
                if isinstance(value, str):  # a part that chose not to run says why
                    record["skipped"] = value
            except Exception as exc:
                record["error"] = f"{type(exc).__name__}: {one_line(str(exc))}"[:500]
                record["traceback"] = traceback.format_exc()[-3000:]
            free(self.device)  # what a finished or failed part held
            record["seconds"] = time.perf_counter() - started
            why = record.get("error") or record.get("skipped")
            print(f"   {record['seconds']:.1f} s" + (f": {why}" if why else ""), flush=True)
        self.results["parts"].append(record)
        if row is not None:
            row.update({k: v for k, v in record.items() if k in ("error", "skipped")})
        self.write()

    def prepare_census(self, tmp: Path) -> None:
        """The census arrays, encoded once by rankengine's pipeline (its data cache) and saved
        for the peers (benchmarks/peers/common.py), in a temporary folder; --quick: on the
        first rows of each census file."""
        common.CACHE = tmp / "census-cache"
        if self.args.quick:
            common.CONFIG = quick_census_config(tmp / "census-quick", train_rows=4_000,
                                                test_rows=2_000)
        meta = common.prepare(self.args.seed)
        self.info["census_rows"] = meta["rows"]

    def census_config(self) -> Any:
        return common.rankengine_config("mmoe", seed=self.args.seed, epochs=self.args.epochs,
                                        threads=self.threads)

    def simulate(self, tmp: Path) -> None:
        self.funnel = tmp / "funnel"
        write_funnel(self.funnel, SimulationConfig(requests=self.args.requests, seed=7))

    def demo_config(self) -> Any:
        if self.funnel is None:
            raise RuntimeError("no simulated funnel (its part failed)")
        config = load_config(REPO / "engine.toml")
        for split in ("train", "valid", "test"):
            setattr(config.data, split, str(self.funnel / f"{split}.parquet"))
        config.data.cache_dir = str(self.funnel / "cache")  # encoded once for all variants
        config.train.epochs = self.args.epochs
        return config

    def train_part(self, model: str, variant: str, device: torch.device) -> None:
        row: dict[str, Any] = {"model": model, "variant": variant, "device": str(device)}
        self.results["train"].append(row)
        self.part(f"{model} {variant} on {device}",
                  lambda: self.train_one(row, model, variant, device), row)

    def train_one(self, row: dict[str, Any], model: str, variant: str,
                  device: torch.device) -> str | None:
        precision, compiled = VARIANTS[variant]
        keys = self.info["config_keys"]
        missing = [k for k, needed in (("device", device.type != "cpu"),
                                       ("precision", precision != "fp32"),
                                       ("compile", compiled)) if needed and not keys[k]]
        if missing:
            return (f"this rankengine has no [train] {', '.join(missing)} yet "
                    f"(rankengine/config.py)")
        config = self.census_config() if model.startswith("census") else self.demo_config()
        if keys["device"]:
            config.train.device = str(device)
        if precision != "fp32":
            config.train.precision = precision
        if compiled:
            config.train.compile = True
            import torch._dynamo

            torch._dynamo.reset()  # every compiled model starts from an empty cache
        config.train.progress = False
        clock = EpochClock()
        engine = load_engine(config.engine.plugins, config.engine.disable,
                             extra=[("gpu-bench-epoch-clock", clock)])
        log: list[str] = []
        baseline = reset_peak(device)
        started = time.perf_counter()
        trained = train(config, engine=engine, progress=False, log=log.append)
        result = trained.result
        test = result.metrics.get("test") or result.metrics["valid"]
        row.update(
            samples_per_second=result.samples_per_second,
            last_epoch_samples_per_second=clock.last_epoch_sps(),
            epochs_run=result.epochs_run, train_s=result.train_seconds,
            wall_s=time.perf_counter() - started, peak_device_mib=peak_mib(device),
            train_rows=result.rows.get("train"),
            auc={t: m["auc"] for t, m in test.items() if "auc" in m},
            model_device=str(next(trained.model.parameters()).device),
            baseline_device_mib=baseline,
            compile_fell_back=any("cannot compile" in line for line in log),
            log=[line for line in log if "compile" in line or "precision" in line] + log[-4:])
        if model.startswith("demo") and variant == "fp32" and device == self.device:
            self.demo_bundle = trained  # served in the latency part
        return None

    def peer(self, library: str, row: dict[str, Any]) -> str | None:
        """worker.py's run of ``library`` on census MMoE, with this run's device."""
        module_name, classes = PEERS[library]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return f"not installed ({exc}); {PEER_INSTALL}"
        args = argparse.Namespace(library=library, model="mmoe", seed=self.args.seed,
                                  epochs=self.args.epochs, threads=self.threads,
                                  infer_repeats=0)
        output = io.StringIO()
        common.seed_all(self.args.seed)
        row["baseline_device_mib"] = reset_peak(self.device)
        started = time.perf_counter()
        try:
            with on_device(module, classes, self.device), contextlib.redirect_stdout(output):
                result = worker.run_deepctr(args) if library == "deepctr-torch" \
                    else worker.run_rechub(args)
        finally:
            row["log_tail"] = output.getvalue()[-1500:]
        row.update(version=result.get("version"), train_sps=result["train_sps"],
                   train_s=result["train_s"], train_rows=result.get("train_rows"),
                   auc=result["test_auc"], wall_s=time.perf_counter() - started,
                   peak_device_mib=peak_mib(self.device))
        return None

    def serve(self) -> str | None:
        """The demo model's serving back end on the device, per candidate count."""
        import pyarrow.parquet as pq

        from rankengine.backend import backend_class
        from rankengine.data.batching import ModelInput
        from rankengine.scoring import PredictionModule

        bundle = self.demo_bundle
        if bundle is None or self.funnel is None:
            return "no demo model trained in fp32 on the device (see its row)"
        device = next(bundle.model.parameters()).device
        predict = backend_class(bundle.engine)(bundle)  # what the server runs per request
        module = PredictionModule(bundle.model)
        table = pq.read_table(self.funnel / "test.parquet")
        requests = self.args.requests_served
        warmup = max(5, requests // 10)
        for n in CANDIDATES:
            pool = []  # 20 different requests, cycled: not one input the caches keep warm
            for k in range(20):
                rows = (k * 997 + np.arange(n)) % table.num_rows
                pool.append(bundle.pipeline.transform(table.take(rows)))
            resident = [ModelInput.from_numpy(*p).to(device) for p in pool]

            backend_ms = timed(lambda i, pool=pool: predict(*pool[i % len(pool)]),
                               device, requests, warmup)
            with torch.inference_mode():
                forward_ms = timed(lambda i, resident=resident: module.predict(
                    resident[i % len(resident)]), device, requests, warmup)
            self.results["serve"].append({
                "candidates": n, "requests": requests, "device": str(device),
                "backend_p50_ms": pct(backend_ms, 50), "backend_p99_ms": pct(backend_ms, 99),
                "forward_p50_ms": pct(forward_ms, 50), "forward_p99_ms": pct(forward_ms, 99),
            })
            self.write()
        return None

    # -- output -------------------------------------------------------------------------

    def write(self) -> None:
        out: Path = self.args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.markdown() + "\n")
        out.with_suffix(".json").write_text(json.dumps(self.results, indent=1, default=str))

    def markdown(self) -> str:
        info, args = self.info, self.args
        info["elapsed_s"] = time.perf_counter() - self.started
        lines = [
            f"## GPU benchmark (issue #16): {info['device_name']}",
            "",
            f"Device `{args.device}`: {info['device_name']}"
            + (f", {info['device_memory_gib']:.0f} GiB" if info.get("device_memory_gib")
               else "")
            + f"; torch {info['torch']}" + (f" (CUDA {info['cuda']})" if info["cuda"] else "")
            + f", Python {info['python']}, {info['cpus']} CPU cores, {info['torch_threads']} "
            f"torch threads; rankengine {info['commit']}.",
            "",
            f"Command: `{info['command']}` ({info['elapsed_s'] / 60:.1f} min"
            + (", **quick smoke run: tiny data, numbers mean nothing**" if info["quick"]
               else "") + ").",
            "",
        ]
        lines += [*self.train_table(), "", *self.peer_table(), "", *self.serve_table(), "",
                  *self.targets(), *self.failures()]
        return "\n".join(lines)

    def train_table(self) -> list[str]:
        rows = sorted(self.results["train"], key=lambda r: (
            MODELS.index(r["model"]), r["device"] != str(self.device), list(VARIANTS).index(
                r["variant"])))
        lines = [f"Training, {self.args.epochs} epoch(s) at most (census: "
                 f"{self.info.get('census_rows', {}).get('train', '?')} training rows; demo: "
                 f"{self.args.requests:,} simulated requests x 10). samples/s: the engine's "
                 f"figure over the epoch loop (warm-up and compilation included); last epoch: "
                 f"the last epoch alone (steady state).", "",
                 "| model | variant | device | samples/s | last epoch samples/s | "
                 "peak device MiB | test AUC | epochs | train s | wall s |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            fell_back = " (fell back to eager)" if r.get("compile_fell_back") else ""
            head = f"| {r['model']} | {r['variant']}{fell_back} | {r['device']} |"
            if "samples_per_second" not in r:
                lines.append(f"{head} {status(r)} | | | | | | |")
                continue
            lines.append(
                f"{head} {r['samples_per_second']:,.0f} | "
                f"{fmt(r['last_epoch_samples_per_second'], '{:,.0f}')} | "
                f"{fmt(r['peak_device_mib'], '{:,.0f}')} | {aucs(r['auc'])} | "
                f"{r['epochs_run']} | {r['train_s']:.1f} | {r['wall_s']:.1f} |")
        return lines

    def peer_table(self) -> list[str]:
        lines = ["Peers on census MMoE, same device, same settings and encoded arrays "
                 "(benchmarks/peers; samples/s = rows x epochs / their fit, validation "
                 "included):", "",
                 "| library | device | samples/s | peak device MiB | test AUC | train s |",
                 "|---|---|---|---|---|---|"]
        for r in self.results["peers"]:
            name = f"{r['library']} {r.get('version') or ''}".strip()
            head = f"| {name} | {r['device']} |"
            if "train_sps" not in r:
                lines.append(f"{head} {status(r)} | | | |")
                continue
            lines.append(f"{head} {r['train_sps']:,.0f} | "
                         f"{fmt(r['peak_device_mib'], '{:,.0f}')} | {aucs(r['auc'])} | "
                         f"{r['train_s']:.1f} |")
        if not self.results["peers"]:
            lines.append("| (none run) | | | | | |")
        return lines

    def serve_table(self) -> list[str]:
        lines = [f"Served latency, demo model (fp32) on `{self.args.device}`, "
                 f"{self.args.requests_served} requests per size after a warm-up: back end = "
                 f"the torch serving back end's call (encoded host arrays in, predictions "
                 f"out: the server's model stage); forward = the model on device-resident "
                 f"inputs.", "",
                 "| candidates | back end p50 ms | back end p99 ms | forward p50 ms | "
                 "forward p99 ms |", "|---|---|---|---|---|"]
        for r in self.results["serve"]:
            lines.append(f"| {r['candidates']} | {r['backend_p50_ms']:.2f} | "
                         f"{r['backend_p99_ms']:.2f} | {r['forward_p50_ms']:.2f} | "
                         f"{r['forward_p99_ms']:.2f} |")
        part = next((p for p in self.results["parts"] if p["part"] == "served latency"), None)
        if part and (part.get("error") or part.get("skipped")):
            lines.append(f"| {status(part)} | | | | |")
        return lines

    def targets(self) -> list[str]:
        """The issue's GPU checks, from this run's numbers."""
        dev = str(self.device)
        train = {(r["model"], r["variant"], r["device"]): r for r in self.results["train"]
                 if "samples_per_second" in r}
        lines = ["Targets of issue #16 (this run):"]

        def mark(ok: bool) -> str:
            return "**met**" if ok else "**not met**"

        ours = train.get(("census MMoE", "fp32", dev))
        cpu = train.get(("census MMoE", "fp32", "cpu"))
        if ours and cpu and dev != "cpu":
            diffs = {t: ours["auc"][t] - cpu["auc"][t] for t in ours["auc"]}
            ok = all(abs(d) <= TARGETS["auc_vs_cpu"] for d in diffs.values())
            lines.append("- census MMoE test AUC within 0.002 of the CPU run (fp32): " + ", ".join(
                f"{t} {d:+.4f}" for t, d in diffs.items()) + f" {mark(ok)}")
        else:
            lines.append("- census AUC vs the CPU run: not checked (a run is missing)")
        bf16 = train.get(("census MMoE", "bf16", dev))
        if bf16:
            best = max(filter(None, (bf16["samples_per_second"],
                                     bf16["last_epoch_samples_per_second"])))
            last = fmt(bf16["last_epoch_samples_per_second"], "{:,.0f}")
            lines.append(f"- census MMoE bf16 ≥ 1M samples/s: {bf16['samples_per_second']:,.0f}"
                         f" (last epoch {last}) {mark(best >= TARGETS['bf16_census_sps'])}")
        peers = [r for r in self.results["peers"] if "train_sps" in r]
        census = [r for (m, _, d), r in train.items() if m == "census MMoE" and d == dev]
        if peers and census:
            fastest = max(peers, key=lambda r: r["train_sps"])
            best = max(census, key=lambda r: r["samples_per_second"])
            ratio = best["samples_per_second"] / fastest["train_sps"]
            lines.append(f"- training ≥ 5x the faster peer: census {best['variant']} "
                         f"{best['samples_per_second']:,.0f} / {fastest['library']} "
                         f"{fastest['train_sps']:,.0f} = {ratio:.1f}x "
                         f"{mark(ratio >= TARGETS['vs_peer'])}")
        else:
            lines.append("- training vs the faster peer: not checked (no peer or census run)")
        served = next((r for r in self.results["serve"] if r["candidates"] == 500), None)
        if served:
            p99 = served["backend_p99_ms"]
            lines.append(f"- 500 candidates ≤ 5 ms p99 model time: {p99:.2f} ms "
                         f"{mark(p99 <= TARGETS['p99_500_ms'])}")
        return lines

    def failures(self) -> list[str]:
        bad = [p for p in self.results["parts"] if p.get("error") or p.get("skipped")]
        if not bad:
            return []
        return ["", "Not measured:", *[f"- {p['part']}: {status(p)}" for p in bad]]


# -- helpers ----------------------------------------------------------------------------------

@contextlib.contextmanager
def on_device(module: Any, classes: tuple[str, ...], device: torch.device) -> Iterator[None]:
    """worker.py builds the peers' models (DeepCTR-Torch) or trainer (torch-rechub) with
    ``device="cpu"``: here the same constructors get ``device``. worker.py's inference timing
    is left out (its bare-forward batches are CPU tensors)."""
    saved = {name: getattr(module, name) for name in classes}
    timing = worker.timed_inference

    def placed(cls: Any) -> Callable[..., Any]:
        return lambda *a, **kw: cls(*a, **{**kw, "device": str(device)})

    try:
        for name, cls in saved.items():
            setattr(module, name, placed(cls))
        worker.timed_inference = lambda *a, **kw: {}
        yield
    finally:
        for name, cls in saved.items():
            setattr(module, name, cls)
        worker.timed_inference = timing


def quick_census_config(folder: Path, *, train_rows: int, test_rows: int) -> Path:
    """examples/census/engine.toml reading the first rows of each census file (--quick)."""
    folder.mkdir(parents=True)
    text = common.CONFIG.read_text(encoding="utf-8")
    for name, rows in (("census_income_1994_1995_train.csv.gz", train_rows),
                       ("census_income_1994_1995_test.csv.gz", test_rows)):
        source = REPO / "data" / "census-income-kdd" / name
        with gzip.open(source, "rt") as src, gzip.open(folder / name, "wt") as dst:
            for _, line in zip(range(rows), src, strict=False):
                dst.write(line)
        old = f'"../../data/census-income-kdd/{name}"'
        if old not in text:
            raise RuntimeError(f"examples/census/engine.toml no longer reads {old}")
        text = text.replace(old, json.dumps(str(folder / name)))
    path = folder / "engine.toml"
    path.write_text(text, encoding="utf-8")
    return path


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device_name": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        try:
            info["device_name"] = torch.cuda.get_device_name(device)
            props = torch.cuda.get_device_properties(device)
            info["device_memory_gib"] = props.total_memory / 2**30
            info["multiprocessors"] = props.multi_processor_count
        except Exception as exc:  # no CUDA here: every part will say so too
            info["device_name"] = f"no CUDA device ({type(exc).__name__}: {one_line(str(exc))})"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True).stdout.strip()
        info["commit"] = head + (" + uncommitted changes" if dirty else "")
    except Exception:
        info["commit"] = "(no git checkout)"
    return info


def reset_peak(device: torch.device) -> float | None:
    """Start counting the peak device memory anew; the MiB allocated now (what earlier parts
    still hold counts in the peak too)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device) / 2**20


def peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # no CUDA here: the parts say so
            torch.cuda.empty_cache()


def timed(fn: Callable[[int], Any], device: torch.device, repeats: int,
          warmup: int) -> list[float]:
    """Milliseconds per call of ``fn(i)`` after ``warmup`` calls, the device synchronised
    before and after each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    times = []
    for i in range(warmup + repeats):
        sync(device)
        started = time.perf_counter()
        fn(i)
        sync(device)
        times.append((time.perf_counter() - started) * 1000)
    return times[warmup:]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def fmt(value: float | None, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def aucs(values: dict[str, float]) -> str:
    return ", ".join(f"{t} {v:.4f}" for t, v in values.items())


def status(record: dict[str, Any]) -> str:
    if record.get("skipped"):
        return f"skipped: {record['skipped']}"
    return f"failed: {record.get('error', '?')}"


def one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    main()
