"""The example third-party plugin (examples/ranktools) as a user gets it: wheels in a fresh venv.

``test_wheels_in_a_fresh_venv_train_serve_and_list`` builds non-editable wheels of rankengine
and of the plugin, installs them (rankengine with its ``export`` extra) into a new virtual
environment next to ``torch==2.13.0`` (the CPU build; an unpinned torch would pull CUDA), and
uses every kind of component the plugin contributes: it converts the simulated log to JSON
Lines and trains from it with the plugin's ``jsonl`` data source, its learnable
``gated_transfer`` cascade, its ``smoothed_product`` fusion and its ``ndcg_10`` metric;
registers the model, exports it to ONNX (checked against rankengine by the export command),
serves one /v1/rank request with the plugin's ``torch_checked`` back end and lists the plugin.
Nothing from this checkout is importable in that environment.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pyarrow.parquet as pq
import pytest

import rankengine

from ..conftest import REPO

EXAMPLE = REPO / "examples" / "ranktools"
FUSION = {"weights": {"click": 1.0, "order": 0.5, "pay": 1.0}, "alpha": {"pay": 0.05}}


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 600,
        env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout's venv on any path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
           and not k.startswith("RANKENGINE_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(REPO)))
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def copy_sources(destination: Path) -> Path:
    """rankengine's distributable files, so building never writes into the checkout."""
    destination.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, destination / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("rankengine", "plugins", "migrations"):
        shutil.copytree(REPO / name, destination / name, ignore=ignore)
    return destination


def adapt_engine_toml(data: Path) -> str:
    """The repository's engine.toml with the plugin enabled, JSON Lines data read by its source,
    its cascade, tiny model, one epoch."""
    text = (REPO / "engine.toml").read_text()
    replacements = [
        (r'plugins = \["builtin"\]', 'plugins = ["builtin", "ranktools"]'),
        (r'"data/funnel/(\w+)\.parquet"', rf'"{data.as_posix()}/\1.jsonl"'),
        (r"\[data\]\n", '[data]\nformat = "jsonl"\n'),
        (r'cascade = "esm2"', 'cascade = { kind = "gated_transfer", gate_bias = -1.0 }'),
        (r"backbone = \{[^}]*\}",
         'backbone = { kind = "mmoe", experts = 2, expert_hidden = [16] }'),
        (r"tower = \{[^}]*\}", 'tower = { kind = "mlp", hidden = [8] }'),
        (r"epochs = \d+", "epochs = 1"),
        (r"batch_size = \d+", "batch_size = 256"),
        (r'\[fusion\]\nkind = "[a-z_]+"[^\n]*\nweights = \{[^}]*\}',
         '[fusion]\nkind = "smoothed_product"\n'
         'weights = { click = 1.0, order = 0.5, pay = 1.0 }\nalpha = { pay = 0.05 }\n\n'
         '[evaluate]\nmetrics = ["auc", "gauc", "logloss", "ndcg_10"]'),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text)
        assert count >= 1, f"engine.toml no longer has {pattern!r}; update this test"
    return text


def to_json_lines(data: Path) -> None:
    """The simulator's Parquet splits as JSON Lines files (one object per row); the Parquet
    files are removed, so training can only read the JSON."""
    for parquet in sorted(data.glob("*.parquet")):
        rows = pq.read_table(parquet).to_pylist()
        with parquet.with_suffix(".jsonl").open("w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
        parquet.unlink()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def server_process() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def smoothed_product(p: dict[str, float]) -> float:
    log = 0.0
    for task, w in FUSION["weights"].items():
        a = FUSION["alpha"].get(task, 0.0)
        log += w * math.log(max(p[task] + a, 1e-12) / (1.0 + a))
    return math.exp(log)


@pytest.mark.slow
@pytest.mark.integration
def test_wheels_in_a_fresh_venv_train_serve_and_list(
        tmp_path: Path, server_process: list[subprocess.Popen[str]]) -> None:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    env = clean_env()
    wheels = tmp_path / "wheels"
    # Build with this environment's setuptools (no isolated build env: saves two installs).
    build: list[str | Path] = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
             "--no-build-isolation", "-w", wheels]
    run(*build, copy_sources(tmp_path / "src" / "rankengine"), env=env)
    plugin_src = tmp_path / "src" / "ranktools"
    shutil.copytree(EXAMPLE, plugin_src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    run(*build, plugin_src, env=env)
    built = sorted(p.name for p in wheels.iterdir())
    assert [n.split("-")[0] for n in built] == ["rankengine", "rankengine_ranktools"], built
    lap("build wheels")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, env=env)
    bin_dir = venv / "bin"
    # --no-compile: byte-compiling torch's ~20k files would take longer than the whole test.
    pip: list[str | Path] = [bin_dir / "python", "-m", "pip", "install", "--quiet",
                             "--no-compile"]
    run(*pip, "torch==2.13.0", env=env)
    core, plugin = sorted(wheels.iterdir())
    run(*pip, f"{core}[export]", plugin, env=env)  # [export]: onnx, onnxruntime, onnxscript
    lap("fresh venv + install")
    where = run(bin_dir / "python", "-c",
                "import rankengine, rankengine_ranktools; print(rankengine.__file__); "
                "print(rankengine_ranktools.__file__)", cwd=tmp_path, env=env)
    assert all(line.startswith(str(venv)) for line in where.split()), where  # not the checkout

    project = tmp_path / "project"
    project.mkdir()
    rankengine_cli = bin_dir / "rankengine"
    run(rankengine_cli, "simulate", "--requests", "2000", "-o", project / "data",
        cwd=project, env=env)
    to_json_lines(project / "data")
    files = sorted(p.name for p in (project / "data").iterdir())
    assert files == ["simulation.json", "test.jsonl", "train.jsonl", "valid.jsonl"], files
    (project / "engine.toml").write_text(adapt_engine_toml(project / "data"))
    out = run(rankengine_cli, "train", "-c", "engine.toml", "--quiet", "--promote", "champion",
              cwd=project, env=env)
    assert "registered demo/1 (ready)" in out, out
    lap("simulate + JSON Lines + train + register")

    registry = f"sqlite:///{(project / 'rankengine.db').as_posix()}"
    shown = json.loads(run(rankengine_cli, "models", "show", "demo@champion", "--json",
                           "--registry", registry, cwd=project, env=env))
    assert shown["plugins"]["ranktools"] == "0.1.0"
    config = shown["config"]
    assert config["fusion"]["kind"] == "smoothed_product"
    assert config["data"]["format"] == "jsonl"
    assert config["data"]["train"].endswith("train.jsonl")
    assert config["model"]["cascade"] == {"kind": "gated_transfer", "gate_bias": -1.0}
    metrics = shown["metrics"]["splits"]["test"]
    assert 0.0 < metrics["click"]["ndcg_10"] <= 1.0  # the plugin's metric was computed
    assert metrics["click"]["auc"] > 0.55  # trained from the JSON Lines rows

    # ONNX: the export command checks the file against rankengine with onnxruntime; the
    # cascade's learned layers are in the graph.
    exported = tmp_path / "demo.onnx"
    out = run(rankengine_cli, "export", "demo@champion", "--format", "onnx", "-o", exported,
              "--registry", registry, cwd=project, env=env)
    diff = re.search(r"max \|diff\| (\S+?)[;)]", out)
    assert out.startswith(f"wrote {exported}") and diff and float(diff[1]) <= 1e-5, out
    weights = {i.name for i in onnx.load(str(exported)).graph.initializer}
    for layer in ("gate", "transfer"):
        assert any(f"cascade.{layer}." in name for name in weights), sorted(weights)
    lap("export to ONNX")

    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:  # the child keeps its own descriptor
        server_process.append(subprocess.Popen(
            [str(rankengine_cli), "serve", "demo@champion", "--port", str(port), "--registry",
             registry, "--threads", "1", "--backend", "torch_checked"], cwd=project, env=env,
            stdout=log,
            stderr=subprocess.STDOUT, text=True))
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as client:
        deadline = time.monotonic() + 120
        while True:
            assert server_process[0].poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if client.get("/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.25)
        response = client.post("/v1/rank", json={
            "context": {"user_segment": 3, "device": "ios", "hour": 21,
                        "user_hist_categories": "4|9"},
            "candidates": [
                {"id": "a", "item_category": 4, "item_brand": 12, "item_price": 19.9,
                 "position": 1},
                {"id": "b", "item_category": 9, "item_brand": 40, "item_price": 5.0,
                 "position": 2},
                {"id": "c", "item_category": 17, "item_brand": 3, "item_price": 120.0,
                 "position": 3}],
        })
    assert response.status_code == 200, response.text
    ranked = response.json()["ranked"]
    assert sorted(r["id"] for r in ranked) == ["a", "b", "c"]
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    for r in ranked:  # the server fused with the third-party smoothed_product
        assert r["score"] == pytest.approx(smoothed_product(r["p"]), rel=1e-4)
        p = r["p"]  # the cascade keeps every task below its parent
        assert p["pay"] <= p["order"] <= p["click"] and p["favorite"] <= p["click"], p
    server_process[0].terminate()
    assert server_process[0].wait(timeout=20) is not None
    log_text = (tmp_path / "serve.log").read_text()
    assert "torch_checked back end" in log_text, log_text
    # The plugin's back end answered the request and, when the server let go of it, said so.
    assert re.search(r"torch_checked: model \S+: 1 request\(s\), 3 row\(s\) checked, 0 "
                     r"refused", log_text), log_text
    lap("serve one request")

    listing = run(rankengine_cli, "plugins", "-c", "engine.toml", cwd=project,
                  env={**env, "COLUMNS": "200"})
    row = next(line for line in listing.splitlines() if "ranktools" in line)
    assert re.search(r"ranktools\s*│\s*0\.1\.0\s*│\s*third-party", row), listing
    for component in ("fusion:smoothed_product", "metric:ndcg_10", "cascade:gated_transfer",
                      "source:jsonl", "end:torch_checked"):  # cells wrap at spaces
        assert component in listing, listing
    assert re.search(r"fusion\s*│\s*0\.1\.0\s*│\s*built-in", listing), listing
    lap("rankengine plugins")
    print("timings:", {k: round(v, 1) for k, v in timings.items()})


@pytest.mark.integration
def test_example_plugin_own_tests_pass_when_installed(tmp_path: Path) -> None:
    """The example's test suite (on rankengine.testing fixtures) against an installed copy."""
    source = tmp_path / "ranktools"
    shutil.copytree(EXAMPLE, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--target", site, source)
    shutil.rmtree(source / "src")
    out = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=source,
              env={**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"})
    assert re.search(r"\b26 passed\b", out), out


def test_example_plugin_imports_only_the_public_api() -> None:
    offenders = []
    for path in sorted((EXAMPLE / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rankengine"):
                if node.module == "rankengine":
                    offenders += [f"{path.name}: {a.name}" for a in node.names
                                  if a.name not in rankengine.__all__]
                elif not (node.module or "").startswith("rankengine_ranktools"):
                    offenders.append(f"{path.name}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names
                              if a.name.startswith("rankengine")]
    assert offenders == []


def test_every_package_is_in_the_wheel() -> None:
    """pyproject lists packages by hand; a package missing there is missing from the wheel."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for package, directory in setuptools["package-dir"].items():
        for init in (REPO / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / directory).parts
            found.add(".".join((package, *relative)))
    assert sorted(found - listed) == []
