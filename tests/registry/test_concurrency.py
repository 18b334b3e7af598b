"""Eight processes registering versions of one model at the same time."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from rankengine.registry import RegistryStore

PROCESSES, EACH = 8, 10


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
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        results = list(pool.map(register_many, [registry_url] * PROCESSES,
                                [start_at] * PROCESSES))
    numbers = sorted(n for chunk in results for n in chunk)
    assert numbers == list(range(1, PROCESSES * EACH + 1))
    store = RegistryStore(registry_url)
    assert [v.version for v in store.list_versions("race")] == numbers
    assert store.get_model("race").last_version == PROCESSES * EACH
    store.close()
