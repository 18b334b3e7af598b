"""A third-party serving back end, registered in-process, served by name."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import pytest

import rankengine.artifact
import rankengine.serve.holder
from rankengine import RankEngineError, Register, ServingBackend, hookimpl
from rankengine.pluginmanager import load_engine
from rankengine.serve import ModelHolder, ServeSettings, create_app

from .conftest import Server, rank_payload, wait_ready


class CountingBackend(ServingBackend):
    """The engine's default back end, counting the requests it runs."""

    made: ClassVar[list[CountingBackend]] = []

    def setup(self) -> None:
        inner = self.loaded.engine.components.backends.default().factory
        self.inner = inner(self.loaded, threads=self.threads)
        self.calls = 0
        self.closed = False
        CountingBackend.made.append(self)

    def predict(self, ids: np.ndarray, dense: np.ndarray,
                id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return self.inner(ids, dense, id_lists)

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class CountingPlugin:
    @hookimpl
    def rankengine_register_backends(self, register: Register) -> None:
        register("counting", CountingBackend, help="the default back end, counted")


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[CountingBackend]]:
    """Every engine a served model loads with has the in-process plugin too."""
    plugin = CountingPlugin()

    def with_plugin(enabled: Any = ("builtin",), disabled: Any = (), extra: Any = ()) -> Any:
        return load_engine(enabled, disabled, extra=[*extra, ("counting", plugin)])

    monkeypatch.setattr(rankengine.artifact, "load_engine", with_plugin)
    monkeypatch.setattr(rankengine.serve.holder, "load_engine", with_plugin)
    CountingBackend.made.clear()
    yield CountingBackend
    CountingBackend.made.clear()


def test_a_third_party_back_end_is_served_by_name(served: tuple, counting: type) -> None:
    client, store, funnel = served
    payload = rank_payload(funnel, 12)
    holder = ModelHolder(store, "demo@champion", backend="counting", threads=2)
    with Server(create_app(holder, ServeSettings(max_candidates=50))) as counted:
        wait_ready(counted)
        by_counting = counted.post("/v1/rank", json=payload)
        assert by_counting.status_code == 200, by_counting.text
    [backend] = counting.made
    assert backend.calls == 1 and backend.threads == 2
    assert holder.current is not None and holder.current.predict is backend
    by_default = client.post("/v1/rank", json=payload).json()["ranked"]
    assert by_counting.json()["ranked"] == by_default


def test_the_replaced_back_end_is_closed(registry: tuple, counting: type) -> None:
    store = registry[0]
    store.set_alias("demo", "champion", 1)
    holder = ModelHolder(store, "demo@champion", backend="counting")
    try:
        holder.load()
        store.set_alias("demo", "champion", 2)
        assert holder.load().version == 2
        first, second = counting.made
        assert first.closed and not second.closed
        assert holder.load().predict is second  # nothing moved: nothing reloaded
        holder.stop()
        assert second.closed
    finally:
        store.set_alias("demo", "champion", 1)


def test_an_unknown_back_end_names_the_registered_ones(registry: tuple, counting: type
                                                       ) -> None:
    with pytest.raises(RankEngineError, match=r"^demo/1: unknown serving back end 'countng'; "
                                              r"available: counting, onnxruntime, torch; did "
                                              r"you mean 'counting'\?$"):
        ModelHolder(registry[0], "demo@champion", backend="countng")


def test_the_default_back_end_comes_from_the_models_plugins(registry: tuple) -> None:
    holder = ModelHolder(registry[0], "demo@champion")
    served = holder.load()
    default = served.artifact.engine.components.backends.default().factory
    assert type(served.predict) is default


def test_a_reference_that_does_not_resolve_yet_is_checked_at_load(registry: tuple) -> None:
    holder = ModelHolder(registry[0], "demo@nowhere", backend="countng")  # no error yet
    with pytest.raises(Exception, match="nowhere"):
        holder.load()


def test_rankengine_serve_refuses_an_unknown_back_end_before_serving(registry: tuple) -> None:
    from click.testing import CliRunner

    from rankengine.cli import cli

    root = registry[1]
    result = CliRunner().invoke(cli, ["serve", "demo@champion", "--registry",
                                      f"sqlite:///{root / 'reg.db'}", "--backend", "tensorrt"])
    assert result.exit_code == 1, result.output
    assert result.output.strip() == ("Error: demo/1: unknown serving back end 'tensorrt'; "
                                     "available: onnxruntime, torch")


class RefusingBackend(CountingBackend):
    """Refuses to score: a back end's own check (e.g. an out-of-range prediction)."""

    def predict(self, ids: np.ndarray, dense: np.ndarray,
                id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        from rankengine import UnscorableError

        raise UnscorableError(f"row 0 of {len(ids)}: refused by the refusing back end")


def test_a_back_end_refusing_a_candidate_is_a_422_not_a_500(
        served: tuple, counting: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """A back end signals "this candidate cannot be scored" with the public UnscorableError;
    the client gets 422 and the back end's message, as for a non-finite score."""
    _, store, funnel = served
    monkeypatch.setattr(CountingPlugin, "rankengine_register_backends",
                        hookimpl(lambda self, register: register("counting", RefusingBackend)))
    holder = ModelHolder(store, "demo@champion", backend="counting")
    with Server(create_app(holder, ServeSettings(max_candidates=50))) as refusing:
        wait_ready(refusing)
        answer = refusing.post("/v1/rank", json=rank_payload(funnel, 3))
    assert answer.status_code == 422, answer.text
    assert "row 0 of 3: refused by the refusing back end" in answer.text
