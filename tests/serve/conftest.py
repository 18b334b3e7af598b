"""The serving tests' model registry (trained once for the package) and a real uvicorn server
on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import uvicorn

from rankengine.config import load_config
from rankengine.registry import RegistryStore
from rankengine.registry.artifacts import register
from rankengine.serve import ModelHolder, ServeSettings, create_app
from rankengine.train import train

from ..conftest import tiny_config_text


@pytest.fixture(scope="package")
def registry(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("serve")
    text = tiny_config_text(funnel_dir).replace("[train]\nepochs = 2", "[train]\nepochs = 1")
    (root / "engine.toml").write_text(text)
    trained = train(load_config(root / "engine.toml"), progress=False)
    store = RegistryStore(f"sqlite:///{root / 'reg.db'}")
    for _ in range(3):
        v = register(store, root / "artifacts", trained, "demo")
    store.set_alias("demo", "champion", 1)
    yield store, root, funnel_dir, v
    store.close()


@pytest.fixture(scope="package")
def plain_model(registry: tuple) -> str:
    """A model 'plain' in the same registry whose item_price is only standardised (no log1p):
    large prices reach the network as large numbers, and its regression task (dwell, a log
    link) overflows to inf, its cascaded probability to NaN."""
    store, root, funnel, _ = registry
    text = tiny_config_text(funnel).replace("[train]\nepochs = 2", "[train]\nepochs = 1")
    text = text.replace('transform = "log1p_standardize"', 'transform = "standardize"')
    assert 'transform = "standardize"' in text
    (root / "plain.toml").write_text(text)
    trained = train(load_config(root / "plain.toml"), progress=False)
    register(store, root / "artifacts", trained, "plain")
    return "plain"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, app: object, **config: Any) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        return self.client

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_ready(client: httpx.Client) -> None:
    deadline = time.time() + 30
    while client.get("/v2/health/ready").status_code != 200:
        assert time.time() < deadline, "model never became ready"
        time.sleep(0.05)


class ServeProcess:
    """``rankengine serve demo@champion`` from ``root``'s registry in a subprocess (one
    inference thread, no access log, ``flags`` added), with a client once it answers ready;
    :meth:`stop` sends SIGTERM and returns everything it printed."""

    def __init__(self, root: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        port = free_port()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "rankengine.cli", "serve", "demo@champion", "--registry",
             f"sqlite:///{root / 'reg.db'}", "--port", str(port), "--threads", "1",
             "--no-access-log", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def __enter__(self) -> ServeProcess:
        deadline = time.time() + 60
        while True:  # it may not even listen yet
            try:
                if self.client.get("/v2/health/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.server.poll() is not None or time.time() > deadline:
                self.__exit__()
                raise AssertionError("server never ready")
            time.sleep(0.1)

    def stop(self) -> str:
        self.client.close()
        self.server.send_signal(signal.SIGTERM)
        return self.server.communicate(timeout=30)[0]

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        if self.server.poll() is None:
            self.server.kill()
            self.server.communicate()


@pytest.fixture
def served(registry: tuple) -> Iterator[tuple[httpx.Client, RegistryStore, Path]]:
    store, _, funnel, _ = registry
    store.set_alias("demo", "champion", 1)
    holder = ModelHolder(store, "demo@champion")
    with Server(create_app(holder, ServeSettings(max_candidates=50, poll_interval=0.2))) as c:
        wait_ready(c)
        yield c, store, funnel


def rows(funnel: Path, n: int) -> dict[str, list]:
    table = pq.read_table(funnel / "test.parquet").slice(0, n)
    return {c: table.column(c).to_pylist() for c in table.column_names}


FEATURES = ["user_id", "device", "user_hist_categories", "item_id", "item_category",
            "item_price", "position"]


def rank_payload(funnel: Path, n: int = 10) -> dict:
    data = rows(funnel, n)
    return {
        "context": {"user_id": data["user_id"][0], "device": data["device"][0],
                    "user_hist_categories": "|".join(map(str, data["user_hist_categories"][0]))},
        "candidates": [{"id": f"item-{data['item_id'][i]}", "item_id": data["item_id"][i],
                        "item_category": data["item_category"][i],
                        "item_price": data["item_price"][i], "position": data["position"][i]}
                       for i in range(n)],
    }
