"""rankengine vs DeepCTR-Torch vs torch-rechub on census-income: MMoE, shared-bottom, PLE.

    python benchmarks/peers/run.py [--epochs 3] [--repeats 1] [--models mmoe ple]
                                   [--libraries rankengine deepctr-torch] [--no-profile]

(or `make bench-peers`). Needs Python >= 3.11 and PyPI. First it makes its own virtual
environment, benchmarks/peers/.venv (git-ignored, no system site-packages): torch==2.13.0
(the CPU build), then the peers from requirements.txt and rankengine itself (`pip install -e`),
every install constrained by constraints.txt. It is rebuilt when requirements.txt,
constraints.txt or pyproject.toml change.

Then it encodes the census data once (worker.py --prepare) and runs every library x model in a
subprocess of its own, libraries interleaved (the order rotates per model and repeat, so a
change of load on the machine hits all of them alike), reading each child's peak RSS from
wait4(). Last, profile_step.py profiles rankengine's census MMoE training step. Prints
markdown tables (results + ratios vs the issue's goals) and writes the raw numbers to
benchmarks/peers/out/results.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = ("mmoe", "shared_bottom", "ple")
LIBRARIES = ("rankengine", "deepctr-torch", "torch-rechub")
PEERS = ("deepctr-torch", "torch-rechub")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each library x model")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, every library")
    parser.add_argument("--infer-repeats", type=int, default=3,
                        help="passes over the test split per inference figure (best is kept)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per subprocess")
    parser.add_argument("--venv", type=Path, default=HERE / ".venv")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter the venv is made from")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--profile-steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    python = ensure_venv(args.venv, args.python)
    versions = subprocess.run(
        [python, "-c", "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) "
         "for p in ('torch', 'deepctr-torch', 'torch-rechub', 'rankengine', 'numpy', "
         "'scikit-learn', 'pandas')}))"], check=True, capture_output=True, text=True)
    info = {"versions": json.loads(versions.stdout), "machine": machine(),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    print(f"# versions {info['versions']}\n# {info['machine']}", flush=True)

    prepared = child(python, ["--prepare", "--seed", str(args.seed)], args, "prepare")
    if prepared.get("error"):
        sys.exit(f"preparing the data failed: {prepared['error']}")

    results: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for m, model in enumerate(args.models):
            shift = (repeat + m) % len(args.libraries)
            for library in args.libraries[shift:] + args.libraries[:shift]:
                print(f"## {library} {model} (repeat {repeat + 1}/{args.repeats})", flush=True)
                result = child(python, [
                    "--library", library, "--model", model, "--seed", str(args.seed),
                    "--epochs", str(args.epochs), "--threads", str(args.threads),
                    "--infer-repeats", str(args.infer_repeats)],
                    args, f"{library}_{model}_{repeat}")
                result.update(library=library, model=model, repeat=repeat)
                results.append(result)
                brief = {k: result.get(k) for k in ("test_auc", "train_sps", "infer_predict_sps",
                                                     "peak_rss_mb", "error")}
                print(f"   {json.dumps(brief, default=str)}", flush=True)

    profile = None
    if args.profile and "rankengine" in args.libraries:
        print("## profile of rankengine's census MMoE training step", flush=True)
        proc = subprocess.run(
            [python, str(HERE / "profile_step.py"), "--seed", str(args.seed),
             "--threads", str(args.threads), "--steps", str(args.profile_steps),
             "--json", str(args.out / "profile.json")],
            cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        (args.out / "profile.log").write_text(proc.stdout + proc.stderr)
        profile = proc.stdout if proc.returncode == 0 else \
            f"profile failed (exit {proc.returncode}): {last_error(proc.stderr)}"

    info["suite_seconds"] = time.perf_counter() - started
    (args.out / "results.json").write_text(json.dumps(
        {"info": info, "args": {k: str(v) for k, v in vars(args).items()},
         "results": results}, indent=1))
    print()
    print(report(results, args, info))
    if profile:
        print(profile)


def ensure_venv(venv: Path, base_python: str) -> str:
    """benchmarks/peers/.venv with torch 2.13.0, the peers and rankengine (-e), all under the
    constraints file; rebuilt when the files that decide its contents change."""
    python = venv / "bin" / "python"
    inputs = [HERE / "requirements.txt", HERE / "constraints.txt", ROOT / "pyproject.toml"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in inputs)).hexdigest()
    stamp = venv / ".peers-installed"
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return str(python)
    print(f"# creating {venv} (torch 2.13.0, peers, rankengine)", flush=True)
    subprocess.run([base_python, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "-c", str(HERE / "constraints.txt")]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "-r", str(HERE / "requirements.txt")], check=True)
    subprocess.run([*pip, "-e", str(ROOT)], check=True)
    stamp.write_text(digest)
    return str(python)


def child(python: str, argv: list[str], args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Run worker.py in its own process; its JSON result plus peak RSS (wait4) or the error."""
    out = args.out / f"{name}.json"
    log = args.out / f"{name}.log"
    out.unlink(missing_ok=True)
    with log.open("w") as sink:
        proc = subprocess.Popen([python, str(HERE / "worker.py"), *argv, "--out", str(out)],
                                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + args.timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait() again
    result: dict[str, Any] = {"peak_rss_mb": usage.ru_maxrss / 1024, "log": str(log)}
    if proc.returncode == 0 and out.exists():
        result.update(json.loads(out.read_text()))
    else:
        why = "timed out" if time.monotonic() > deadline else f"exit {proc.returncode}"
        result["error"] = f"{why}: {last_error(log.read_text())}"
    return result


def last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
            f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (library, model): medians over repeats; the errors if every repeat failed."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key in dict.fromkeys((r["library"], r["model"]) for r in results):
        runs = [r for r in results if (r["library"], r["model"]) == key]
        ok = [r for r in runs if not r.get("error")]
        if not ok:
            out[key] = {"error": runs[0]["error"]}
            continue
        tasks = list(ok[0]["test_auc"])
        row: dict[str, Any] = {
            "auc": {t: median([r["test_auc"][t] for r in ok]) for t in tasks},
            "runs": len(ok), "failed": len(runs) - len(ok),
        }
        for field in ("train_sps", "infer_predict_sps", "infer_forward_sps", "peak_rss_mb",
                      "train_s", "step_gflop", "achieved_gflops", "gemm_peak_gflops",
                      "step_shape_gemm_gflops", "version"):
            values = [r.get(field) for r in ok]
            row[field] = values[0] if field == "version" else median(values)
        out[key] = row
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    rows = summarise(results)
    tasks: list[str] = next((list(r["auc"]) for r in rows.values() if "auc" in r), [])
    lines = [f"Command: `{info['command']}`; {info['machine']}; "
             f"suite {info['suite_seconds'] / 60:.1f} min; versions {info['versions']}.", ""]
    header = ["model", "library", *[f"{t} AUC" for t in tasks], "train samples/s",
              "predict samples/s", "forward samples/s", "peak RSS MB", "train s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (library, model), r in rows.items():
        if "error" in r:
            lines.append(f"| {model} | {library} | failed: {r['error']} |")
            continue
        lines.append("| " + " | ".join([
            model, f"{library} {r['version']}", *[f"{r['auc'][t]:.4f}" for t in tasks],
            f"{r['train_sps']:,.0f}", f"{r['infer_predict_sps']:,.0f}",
            f"{r['infer_forward_sps']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
            f"{r['train_s']:.1f}"]) + " |")
    lines.append("")
    lines += ratios(rows, tasks)
    return "\n".join(lines)


def ratios(rows: dict[tuple[str, str], dict[str, Any]], tasks: list[str]) -> list[str]:
    lines = ["| model | vs | train samples/s ratio | predict ratio | forward ratio | "
             "peak RSS ratio | AUC difference (rankengine - peer) |",
             "|---|---|---|---|---|---|---|"]
    flops = []
    for model in MODELS:
        ours = rows.get(("rankengine", model))
        if not ours or "error" in ours:
            continue
        if ours.get("step_gflop"):
            flops.append(
                f"- {model}: {ours['step_gflop']:.2f} GFLOP (GEMM) per training step of 1024 → "
                f"{ours['achieved_gflops']:.1f} GFLOP/s achieved at the measured training "
                f"throughput; float32 GEMM peak 2048² {ours['gemm_peak_gflops']:.1f} GFLOP/s "
                f"({ours['achieved_gflops'] / ours['gemm_peak_gflops']:.0%} of it), the step's "
                f"largest GEMM shape alone {ours['step_shape_gemm_gflops']:.1f} GFLOP/s")
        for peer in PEERS:
            theirs = rows.get((peer, model))
            if not theirs or "error" in theirs:
                continue
            diff = ", ".join(f"{t} {ours['auc'][t] - theirs['auc'][t]:+.4f}" for t in tasks)
            lines.append(
                f"| {model} | {peer} | {ours['train_sps'] / theirs['train_sps']:.2f}x | "
                f"{ours['infer_predict_sps'] / theirs['infer_predict_sps']:.2f}x | "
                f"{ours['infer_forward_sps'] / theirs['infer_forward_sps']:.2f}x | "
                f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f} | {diff} |")
    lines.append("")
    lines += goals(rows, tasks)
    if flops:
        lines += ["", "rankengine's training step against the GEMM peak (same run, same threads):",
                  *flops]
    return lines


def goals(rows: dict[tuple[str, str], dict[str, Any]], tasks: list[str]) -> list[str]:
    ours = rows.get(("rankengine", "mmoe"))
    dc, rh = rows.get(("deepctr-torch", "mmoe")), rows.get(("torch-rechub", "mmoe"))
    if not ours or "error" in ours or not dc or "error" in dc or not rh or "error" in rh:
        return ["Goals (census MMoE): not checked, a library's MMoE run is missing or failed."]

    def mark(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    train_dc = ours["train_sps"] / dc["train_sps"]
    train_rh = ours["train_sps"] / rh["train_sps"]
    auc_ok = {t: ours["auc"][t] >= max(dc["auc"][t], rh["auc"][t]) - 0.001 for t in tasks}
    infer = ours["infer_predict_sps"] / max(dc["infer_predict_sps"], rh["infer_predict_sps"])
    infer_fwd = ours["infer_forward_sps"] / max(dc["infer_forward_sps"], rh["infer_forward_sps"])
    rss = ours["peak_rss_mb"] / min(dc["peak_rss_mb"], rh["peak_rss_mb"])
    return [
        "Goals of the issue (census MMoE):",
        f"- training ≥ 3x DeepCTR-Torch: {train_dc:.2f}x {mark(train_dc >= 3)}",
        f"- training ≥ 6x torch-rechub: {train_rh:.2f}x {mark(train_rh >= 6)}",
        "- test AUC ≥ the better peer's - 0.001: " + "; ".join(
            f"{t} {ours['auc'][t]:.4f} vs {max(dc['auc'][t], rh['auc'][t]):.4f} "
            f"{mark(auc_ok[t])}" for t in tasks),
        f"- inference ≥ 3x the faster peer: predict API {infer:.2f}x {mark(infer >= 3)}, "
        f"bare forward {infer_fwd:.2f}x {mark(infer_fwd >= 3)}",
        f"- peak RSS ≤ the leaner peer's: {ours['peak_rss_mb']:,.0f} vs "
        f"{min(dc['peak_rss_mb'], rh['peak_rss_mb']):,.0f} MB ({rss:.2f}) {mark(rss <= 1)}",
    ]


if __name__ == "__main__":
    main()
