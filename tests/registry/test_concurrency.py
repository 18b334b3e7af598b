"""Many processes on one registry at the same time: nothing lost, nothing left dangling."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from rankengine.registry import RegistryError, RegistryStore, migrations

PROCESSES, EACH = 8, 10


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def register_many(url: str, start_at: float) -> list[int]:
    store = RegistryStore(url)
    time.sleep(max(0.0, start_at - time.time()))  # all processes start together
    numbers = [
        store.create_version("race", config={"i": i}, task_graph={}, plugins={},
                             data_fingerprint={}).version
        for i in range(EACH)
    ]
    store.close()
    return numbers


def test_concurrent_registration_numbers_every_version_once(registry_url: str) -> None:
    RegistryStore(registry_url).close()  # schema first, so the race is about versions only
    start_at = time.time() + 3.0
    with _spawn_pool(PROCESSES) as pool:
        results = list(pool.map(register_many, [registry_url] * PROCESSES,
                                [start_at] * PROCESSES))
    numbers = sorted(n for chunk in results for n in chunk)
    assert numbers == list(range(1, PROCESSES * EACH + 1))
    store = RegistryStore(registry_url)
    assert [v.version for v in store.list_versions("race")] == numbers
    assert store.get_model("race").last_version == PROCESSES * EACH
    store.close()


PATCHES = 20


def patch_many(url: str, worker: int, start_at: float) -> None:
    store = RegistryStore(url)
    time.sleep(max(0.0, start_at - time.time()))
    for i in range(PATCHES):
        store.patch_version("race", 1, metrics={f"w{worker}.{i}": i},
                            tags={f"w{worker}.{i}": str(i)})
    store.close()


def test_concurrent_patches_lose_no_update(registry_url: str) -> None:
    """Eight writers x 20 read-modify-writes of one version's metrics and tags."""
    store = RegistryStore(registry_url)
    store.create_version("race", config={}, task_graph={}, plugins={}, data_fingerprint={})
    start_at = time.time() + 3.0
    with _spawn_pool(PROCESSES) as pool:
        list(pool.map(patch_many, [registry_url] * PROCESSES, range(PROCESSES),
                      [start_at] * PROCESSES))
    v = store.get_version("race", 1)
    store.close()
    expected = {f"w{w}.{i}" for w in range(PROCESSES) for i in range(PATCHES)}
    assert len(expected - set(v.metrics)) == 0, f"{len(expected - set(v.metrics))} lost"
    assert len(expected - set(v.tags)) == 0, f"{len(expected - set(v.tags))} lost"


RACES = 150


def promote_or_delete(url: str, role: str, barrier: Any) -> list[str]:
    """One side of RACES races: promote version i to alias a<i> / delete version i."""
    store = RegistryStore(url)
    outcomes = []
    for i in range(1, RACES + 1):
        barrier.wait()
        try:
            if role == "promote":
                store.set_alias("race", f"a{i}", i)
            else:
                store.delete_version("race", i)
            outcomes.append("done")
        except RegistryError as exc:  # the loser is refused with a registry error
            outcomes.append(type(exc).__name__)
    store.close()
    return outcomes


def test_promote_and_delete_of_one_version_never_leave_a_dangling_alias(
        registry_url: str) -> None:
    store = RegistryStore(registry_url)
    for _ in range(RACES):
        v = store.create_version("race", config={}, task_graph={}, plugins={},
                                 data_fingerprint={})
        store.mark_ready("race", v.version, artifact_uri=f"file:///nowhere/{v.version}",
                         artifact_sha256="0" * 64, artifact_size=1, metrics={})
    with multiprocessing.get_context("spawn").Manager() as manager, _spawn_pool(2) as pool:
        barrier = manager.Barrier(2)
        promoted, deleted = pool.map(promote_or_delete, [registry_url] * 2,
                                     ["promote", "delete"], [barrier] * 2)
    aliases = store.get_model("race").aliases
    existing = {v.version for v in store.list_versions("race")}
    store.close()
    dangling = {a: n for a, n in aliases.items() if n not in existing}
    assert not dangling, f"{len(dangling)} of {RACES} aliases point at deleted versions"
    for i, (p, d) in enumerate(zip(promoted, deleted, strict=True), start=1):
        assert (p == "done") != (d == "done"), (i, p, d)  # exactly one side wins each race
        assert (f"a{i}" in aliases) == (p == "done")
        assert (i in existing) == (p == "done")


def open_empty(url: str, start_at: float) -> str:
    time.sleep(max(0.0, start_at - time.time()))
    try:
        store = RegistryStore(url)
    except RegistryError as exc:
        return f"{type(exc).__name__}: {exc}"
    revision = migrations.current(store)
    store.close()
    return revision or "(none)"


def test_concurrent_first_use_of_an_empty_registry_creates_the_schema_once(
        registry_url: str) -> None:
    start_at = time.time() + 4.0
    with _spawn_pool(PROCESSES) as pool:
        results = list(pool.map(open_empty, [registry_url] * PROCESSES,
                                [start_at] * PROCESSES))
    assert results == [migrations.head()] * PROCESSES
