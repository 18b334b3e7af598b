"""Checkpoints: a run killed with SIGKILL mid-epoch resumes to the uninterrupted result, and a
damaged or foreign checkpoint is never loaded."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rankengine.checkpoint import (
    CheckpointError,
    Position,
    checkpoints,
    load_latest,
    load_module_state,
    module_state,
    rng_state,
    save,
    set_rng_state,
)
from rankengine.config import load_config
from rankengine.errors import ConfigError, RankEngineError
from rankengine.pluginmanager import Engine
from rankengine.train import train

from .conftest import tiny_config_text
from .plugins.test_weighting import fit, make, regression_data

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
    (ckpt / "ckpt-0002-99999999.safetensors").write_bytes(b"torn write")
    # Not --quiet: the "resuming from" message is what this checks.
    log = finished(cli("train", "-c", str(config), "-o", str(tmp_path / "killed/out"),
                       "--resume"))
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
    newest = tmp_path / "ckpt-0001-00000010.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated after its checksum was written
    position, state, path = load_latest(tmp_path)
    assert position == Position(1, 5) and state["value"].item() == 1.0
    assert path.name == "ckpt-0001-00000005.safetensors"
    for i in range(4):
        save(tmp_path, Position(2, i), {"value": torch.tensor([float(i)])}, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["ckpt-0002-00000002.safetensors",
                                                      "ckpt-0002-00000003.safetensors"]


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
    more.train.device = "cpu"  # and so is the same run on another device (written on "auto")
    result = train(more, progress=False, resume=True).result
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_resume_without_a_checkpoint_dir_is_a_config_error(tmp_path: Path,
                                                           funnel_dir: Path) -> None:
    config = load_config(write_config(tmp_path, funnel_dir, checkpoint=False))
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        train(config, progress=False, resume=True)


# -- no pickles: a checkpoint can never run code -----------------------------------------------


class Boom:
    """Unpickling this creates ``path``: the proof that a loader ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def with_checksum(path: Path, data: bytes) -> None:
    """Write ``data`` with a matching ``.sha256``: the checksum authenticates nothing."""
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> Path:
    """A project that trained one epoch with checkpoints (every 10 steps and at the end)."""
    root = tmp_path_factory.mktemp("trained_once")
    config = load_config(write_config(root, funnel_dir, checkpoint=True))
    config.train.epochs = 1
    train(config, progress=False)
    return root


def copy_project(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target / "engine.toml"


def test_an_old_pickled_checkpoint_is_refused_and_never_unpickled(
        tmp_path: Path, trained_once: Path) -> None:
    config_path = copy_project(trained_once, tmp_path / "project")
    marker = tmp_path / "pickle-was-executed"
    buffer = io.BytesIO()
    # Named as the newest checkpoint, so the old loader would have picked it.
    torch.save({"position": (9, 99), "weighting": Boom(marker)}, buffer)
    planted = tmp_path / "project" / "ckpt" / "ckpt-0009-00000099.pt"
    with_checksum(planted, buffer.getvalue())

    with pytest.raises(CheckpointError) as caught:
        train(load_config(config_path), progress=False, resume=True)
    text = one_line(caught.value)
    assert str(planted) in text and "old" in text and "delete" in text
    assert not marker.exists()

    # The same through the CLI: one line on stderr, no traceback, nothing ran.
    run = subprocess.run([sys.executable, "-m", "rankengine.cli", "train", "-c",
                          str(config_path), "-o", str(tmp_path / "out"), "--resume",
                          "--quiet"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "ckpt-0009-00000099.pt" in run.stderr, run.stderr
    assert not marker.exists()
    assert load_latest_or_error(planted.parent).startswith(str(planted))


def load_latest_or_error(directory: Path) -> str:
    try:
        load_latest(directory)
    except CheckpointError as error:
        return one_line(error)
    return ""


def test_a_pickle_under_the_new_name_is_an_error_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pickle-was-executed"
    for name, data in [("zip", None), ("raw", pickle.dumps({"position": Boom(marker)}))]:
        if data is None:
            buffer = io.BytesIO()
            torch.save({"position": Boom(marker)}, buffer)
            data = buffer.getvalue()
        directory = tmp_path / name
        directory.mkdir()
        planted = directory / "ckpt-0001-00000010.safetensors"
        with_checksum(planted, data)
        with pytest.raises(CheckpointError, match="unreadable checkpoint") as caught:
            load_latest(directory)
        assert one_line(caught.value).startswith(str(planted))
        assert not marker.exists()


def test_optimizer_rng_and_non_finite_values_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.8, 0.99))
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        optimizer.step()
    np.random.seed(7)
    np.random.standard_normal()  # leaves a cached gaussian in the numpy state
    random.seed(7)
    random.gauss(0, 1)  # and one in Python's
    state = {
        "optimizer": optimizer.state_dict(), "rng": rng_state(),
        "best": math.inf, "worst": -math.inf, "missing": math.nan, "big": 2**62,
        "tuple": (1, "a", None), "keys": {0: "int", "0": "str", "$x": 1.5},
        "nested": [{"t": torch.arange(4, dtype=torch.uint8)}, torch.tensor(2.5)],
    }
    want = (torch.rand(3), np.random.standard_normal(3), np.random.random(), random.random(),
            random.gauss(0, 1))
    path = save(tmp_path, Position(3, 7), state)
    # On disk: tensors in safetensors under their paths, the rest strict JSON (inf tagged).
    data = path.read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    tree = json.loads(header["__metadata__"]["state"], parse_constant=pytest.fail)
    assert tree["best"] == {"$float": "inf"} and tree["missing"] == {"$float": "nan"}
    assert {"optimizer/state/0/exp_avg", "rng/torch", "rng/numpy/keys"} <= set(header)
    position, got, _ = load_latest(tmp_path)
    assert position == Position(3, 7)
    assert got["best"] == math.inf and got["worst"] == -math.inf and math.isnan(got["missing"])
    assert got["big"] == 2**62 and got["tuple"] == (1, "a", None)
    assert got["keys"] == {0: "int", "0": "str", "$x": 1.5}
    assert torch.equal(got["nested"][0]["t"], torch.arange(4, dtype=torch.uint8))
    assert got["nested"][1].item() == 2.5

    # The optimiser continues exactly as the original would.
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=0.5)
    twin_optimizer.load_state_dict(got["optimizer"])
    assert twin_optimizer.param_groups[0]["betas"] == (0.8, 0.99)
    assert twin_optimizer.param_groups[0]["lr"] == 0.1
    x = torch.randn(5, 3)
    for m, o in ((model, optimizer), (twin, twin_optimizer)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)

    # Every generator continues where it was.
    set_rng_state(got["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), np.random.random(), random.random(),
             random.gauss(0, 1))
    assert torch.equal(want[0], again[0]) and np.array_equal(want[1], again[1])
    assert want[2:] == again[2:]


def test_what_is_neither_a_tensor_nor_json_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"'weighting/inner'.*Boom") as caught:
        save(tmp_path / "ckpt", Position(1, 0), {"weighting": {"inner": Boom(tmp_path / "x")}})
    one_line(caught.value)
    with pytest.raises(CheckpointError, match=r"numpy\.ndarray"):
        save(tmp_path / "ckpt", Position(1, 0), {"array": np.zeros(3)})
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_checkpoint_files_are_safetensors_and_json_only(trained_once: Path) -> None:
    files = sorted((trained_once / "ckpt").iterdir())
    assert files and all(f.suffix in (".safetensors", ".sha256") for f in files), files
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".sha256":
            assert len(data.decode().strip()) == 64
            continue
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
        metadata = header.pop("__metadata__")
        assert metadata["format"] == "rankengine-checkpoint"
        tree = json.loads(metadata["state"])  # strict JSON: no bare Infinity / NaN
        assert {"model", "optimizer", "weighting", "stopper", "rng"} <= set(tree)
        assert tree["stopper"]["bad_epochs"] == 0
        assert set(header) == set(load_file(path))  # every tensor is a plain safetensors one
        assert b"\x80\x04" not in data[:2] and not data.startswith(b"PK")


def test_damaged_contents_with_a_valid_checksum_are_one_line_errors(
        tmp_path: Path, trained_once: Path) -> None:
    config_path = copy_project(trained_once, tmp_path / "project")
    ckpt = tmp_path / "project" / "ckpt"
    position, state, _ = load_latest(ckpt)
    newer = ckpt / f"ckpt-{position.epoch:04d}-00009999.safetensors"

    def planted(mutate: Any) -> str:
        changed = {**state}
        mutate(changed)
        for old in checkpoints(ckpt):
            if old.name > newer.name:
                old.unlink()
        path = save(ckpt, Position(position.epoch, 9999), changed, keep=10)
        assert path == newer
        with pytest.raises(CheckpointError) as caught:
            train(load_config(config_path), progress=False, resume=True)
        return one_line(caught.value)

    first = next(iter(state["model"]))
    text = planted(lambda s: s.__setitem__("model", {**s["model"], first: torch.zeros(1, 2)}))
    assert text.startswith(f"{newer}: 'model'") and "size mismatch" in text
    text = planted(lambda s: s.pop("optimizer"))
    assert "'optimizer': expected dict, found NoneType" in text
    moments = {**state["optimizer"]["state"][0], "exp_avg": torch.zeros(7)}
    text = planted(lambda s: s.__setitem__(
        "optimizer", {**s["optimizer"], "state": {**s["optimizer"]["state"], 0: moments}}))
    assert "'optimizer'" in text and "has shape (7,)" in text
    text = planted(lambda s: s.__setitem__("rng", {**s["rng"], "torch": torch.zeros(3)}))
    assert "'rng': unusable random generator state" in text
    text = planted(lambda s: s.__setitem__("epoch_generator", "not a state"))
    assert "'epoch_generator': expected Tensor, found str" in text

    # Not a safetensors file, or one whose JSON is cut, though the checksum matches.
    data = newer.read_bytes()
    for damaged in (b"{}" + data, data[:8] + data[8:40].replace(b'"', b"'") + data[40:]):
        with_checksum(newer, damaged)
        with pytest.raises(CheckpointError, match="unreadable checkpoint") as caught:
            load_latest(ckpt)
        assert one_line(caught.value).startswith(str(newer))


@pytest.mark.parametrize("kind", ["fixed", "uncertainty", "dwa", "gradnorm", "pcgrad",
                                  "pareto"])
def test_every_loss_weighting_continues_identically_after_a_round_trip(
        tmp_path: Path, engine: Engine, kind: str) -> None:
    params: dict[str, object] = {"update_every": 2} if kind == "pareto" else {}
    original = make(engine, kind, **params)
    model = fit(original, steps=3)
    for epoch, losses in enumerate(({"a": 1.0, "b": 2.0}, {"a": 0.5, "b": 1.9}), start=1):
        original.after_epoch(epoch, losses)
    save(tmp_path, Position(2, 0), {"weighting": module_state(original)})
    restored = make(engine, kind, **params)
    load_module_state(restored, load_latest(tmp_path)[1]["weighting"], "test")
    x, y = regression_data((0.1, 1.0))
    outcomes = []
    for weighting in (original, restored):
        twin = copy.deepcopy(model)
        for _ in range(3):  # pareto recomputes every other step: its step count matters
            twin.zero_grad()
            weighting.backward(((twin(x) - y) ** 2).mean(0), twin.shared_parameters())
        weighting.after_epoch(3, {"a": 0.4, "b": 1.95})
        outcomes.append((weighting.current_weights(),
                         [p.grad.clone() for p in twin.parameters()]))
    assert outcomes[0][0] == outcomes[1][0]
    for a, b in zip(outcomes[0][1], outcomes[1][1], strict=True):
        assert torch.equal(a, b)


def test_the_moving_average_of_the_weights_resumes_where_it_was(tmp_path: Path,
                                                                funnel_dir: Path) -> None:
    def config(directory: Path, checkpoint: bool):  # type: ignore[no-untyped-def]
        path = write_config(directory, funnel_dir, checkpoint)
        path.write_text(path.read_text().replace("[train]\n", "[train]\nema_decay = 0.95\n"))
        loaded = load_config(path)
        loaded.train.epochs, loaded.train.early_stopping = 2, None
        return loaded

    reference = train(config(tmp_path / "reference", False), progress=False).model
    first = config(tmp_path / "resumed", True)
    first.train.epochs = 1
    train(first, progress=False)
    resumed = train(config(tmp_path / "resumed", True), progress=False, resume=True).model
    for (name, want), got in zip(reference.state_dict().items(),
                                 resumed.state_dict().values(), strict=True):
        assert torch.allclose(want.float(), got.float(), atol=1e-6), name
    # a checkpoint without the average (another ema_decay is another configuration)
    other = config(tmp_path / "resumed", True)
    other.train.ema_decay = None
    with pytest.raises(RankEngineError, match="another configuration"):
        train(other, progress=False, resume=True)
