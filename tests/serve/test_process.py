"""Serving-process memory tuning, checked in a fresh interpreter (it changes process state)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
from rankengine.serve.process import retain_freed_memory
if sys.argv[1] == "tuned":
    assert retain_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def forward():  # three live 4 MiB buffers, as in a 1000-candidate forward pass
    a, b, c = np.ones(1 << 19), np.ones(1 << 19), np.ones(1 << 19)
    return float(a[0] + b[0] + c[0])
for _ in range(3):
    forward()
before = faults()
for _ in range(50):
    forward()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_activation_memory_is_reused_instead_of_page_faulted_again() -> None:
    def faults(mode: str) -> int:
        return int(subprocess.run([sys.executable, "-c", PROBE, mode], check=True,
                                  capture_output=True, text=True).stdout)

    default, tuned = faults("default"), faults("tuned")
    # By default glibc trims the freed 12 MiB off the heap after every call, so each call
    # faults 1,000+ of its pages in again; tuned, the pages stay and are reused.
    assert default > 50 * 1_000
    assert tuned < 500


FREEZE = """
import gc
import torch, fastapi  # noqa: F401  (what a serving process has imported)
from rankengine.serve.process import freeze_startup_objects
before = len(gc.get_objects())
frozen = freeze_startup_objects()
print(before, frozen, len(gc.get_objects()))
"""


def test_startup_objects_are_frozen_out_of_the_collectors_reach() -> None:
    out = subprocess.run([sys.executable, "-c", FREEZE], check=True, capture_output=True,
                         text=True).stdout
    before, frozen, after = map(int, out.split())
    assert before > 50_000 and frozen >= before * 0.9
    assert after < 1_000  # what a full collection still walks


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_usable_cores_follow_the_cpu_affinity_not_the_machine() -> None:
    code = ("import os; from rankengine.serve.process import usable_cores; "
            "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cores())")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert int(out) == 1
