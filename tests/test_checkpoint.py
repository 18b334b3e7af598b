"""Checkpoints: a run killed with SIGKILL mid-epoch resumes to the uninterrupted result, and a
damaged or foreign checkpoint is never loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rankengine.checkpoint import Position, checkpoints, load_latest, save
from rankengine.config import load_config
from rankengine.errors import ConfigError, RankEngineError
from rankengine.train import train

from .conftest import tiny_config_text

EPOCHS = 3


def write_config(directory: Path, funnel: Path, checkpoint: bool) -> Path:
    extra = 'checkpoint_dir = "ckpt"\ncheckpoint_every = 10\n' if checkpoint else ""
    text = tiny_config_text(funnel).replace(
        "[train]\nepochs = 2\n", f"[train]\nepochs = {EPOCHS}\n{extra}")
    path = directory / "engine.toml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cli(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "rankengine.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finished(process: subprocess.Popen[bytes]) -> str:
    out, _ = process.communicate(timeout=600)
    text = out.decode()
    assert process.returncode == 0, text
    return text


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
        tmp_path: Path, funnel_dir: Path) -> None:
    reference = write_config(tmp_path / "reference", funnel_dir, checkpoint=False)
    finished(cli("train", "-c", str(reference), "-o", str(tmp_path / "reference/out"),
                 "--quiet"))
    config = write_config(tmp_path / "killed", funnel_dir, checkpoint=True)
    ckpt = tmp_path / "killed" / "ckpt"
    victim = cli("train", "-c", str(config), "-o", str(tmp_path / "killed/out"), "--quiet")
    deadline = time.time() + 300
    while not any(p.name.startswith("ckpt-0002-") and p.name.endswith(".sha256")
                  and not p.name.startswith("ckpt-0002-00000000")
                  for p in (ckpt.iterdir() if ckpt.exists() else [])):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert not (tmp_path / "killed/out").exists()  # no half-written artifact
    # A newer checkpoint without its checksum (as if killed mid-write) must be skipped.
    (ckpt / "ckpt-0002-99999999.pt").write_bytes(b"torn write")
    log = finished(cli("train", "-c", str(config), "-o", str(tmp_path / "killed/out"),
                       "--resume", "--quiet"))
    assert "resuming from" in log and "ckpt-0002-99999999" not in log.split("resuming from")[1]
    ref = json.loads((tmp_path / "reference/out/metrics.json").read_text())
    got = json.loads((tmp_path / "killed/out/metrics.json").read_text())
    assert got["epochs_run"] == ref["epochs_run"] == EPOCHS
    for task in ("click", "favorite", "order", "pay"):
        assert got["metrics"]["test"][task]["auc"] == pytest.approx(
            ref["metrics"]["test"][task]["auc"], abs=0.002)
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3]


def test_damaged_checkpoints_are_skipped(tmp_path: Path) -> None:
    save(tmp_path, Position(1, 5), {"value": torch.tensor([1.0])})
    save(tmp_path, Position(1, 10), {"value": torch.tensor([2.0])})
    newest = tmp_path / "ckpt-0001-00000010.pt"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated after its checksum was written
    position, state, path = load_latest(tmp_path)
    assert position == Position(1, 5) and state["value"].item() == 1.0
    assert path.name == "ckpt-0001-00000005.pt"
    for i in range(4):
        save(tmp_path, Position(2, i), {"value": torch.tensor([float(i)])}, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["ckpt-0002-00000002.pt",
                                                      "ckpt-0002-00000003.pt"]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path: Path,
                                                       funnel_dir: Path) -> None:
    config = load_config(write_config(tmp_path, funnel_dir, checkpoint=True))
    config.train.epochs = 1
    train(config, progress=False)
    assert checkpoints(tmp_path / "ckpt")
    changed = load_config(tmp_path / "engine.toml")
    changed.train.lr = 0.5
    with pytest.raises(RankEngineError, match="another configuration"):
        train(changed, progress=False, resume=True)
    more = load_config(tmp_path / "engine.toml")
    more.train.epochs = 2  # more epochs is the same run, continued
    result = train(more, progress=False, resume=True).result
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_resume_without_a_checkpoint_dir_is_a_config_error(tmp_path: Path,
                                                           funnel_dir: Path) -> None:
    config = load_config(write_config(tmp_path, funnel_dir, checkpoint=False))
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        train(config, progress=False, resume=True)
