"""``RANKENGINE_TRACE=1`` prints the hook calls of a real command-line run: every hook is
dispatched through pluggy (``pm.hook.<name>``), registration included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_trace_prints_the_hook_calls_of_a_real_train_run(tiny_config: Path,
                                                         tmp_path: Path) -> None:
    env = {**os.environ, "RANKENGINE_TRACE": "1", "RANKENGINE_REGISTRY_URL":
           f"sqlite:///{tmp_path / 'registry.db'}"}
    run = subprocess.run(
        [sys.executable, "-m", "rankengine.cli", "train", "-c", str(tiny_config),
         "-o", str(tmp_path / "model"), "--quiet"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    trace = [line for line in run.stderr.splitlines() if line.startswith("[rankengine]")]
    called = " ".join(trace)
    # registration hooks, each called per plugin through a subset caller
    for hook in ("rankengine_register_backbones", "rankengine_register_cascades",
                 "rankengine_register_metrics"):
        assert f"{hook} [hook]" in called, hook
    # lifecycle hooks of this run, in order
    lifecycle = [hook for line in trace for hook in (
        "rankengine_modify_task_graph", "rankengine_before_train", "rankengine_after_epoch",
        "rankengine_after_train") if f"{hook} [hook]" in line]
    assert lifecycle[0] == "rankengine_modify_task_graph"
    assert lifecycle[1] == "rankengine_before_train"
    assert lifecycle[-1] == "rankengine_after_train"
    assert lifecycle.count("rankengine_after_epoch") >= 1

