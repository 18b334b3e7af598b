"""Process-wide tuning for a serving process: the allocator and the garbage collector.

Scoring 500 candidates allocates a few activation buffers of 1-4 MB and frees them again. glibc
serves blocks that large with a fresh ``mmap`` and gives them back on ``free`` (or trims the
heap top), so every request page-faults its activations in anew: measured about 1,500 minor
faults and 3 ms of a 9 ms forward pass. Raising the mmap and trim thresholds keeps those pages
in the heap for the next request (the forward pass then takes what it takes in a warm loop).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os

log = logging.getLogger("rankengine.serve")

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses larger values (HEAP_MAX_SIZE / 2 on 64-bit)


def retain_freed_memory(mmap_threshold: int = MMAP_THRESHOLD_MAX,
                        trim_threshold: int = 512 << 20) -> bool:
    """Serve allocations below ``mmap_threshold`` from the heap and keep up to ``trim_threshold``
    bytes of freed heap instead of returning it to the OS. Returns False (and changes nothing)
    where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and \
        bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if not ok:
        log.warning("mallopt refused the serving memory thresholds; requests may page-fault "
                    "their activations")
    return ok


def freeze_startup_objects() -> int:
    """Move every object alive now (torch, FastAPI, pydantic, ...: about 250k) out of the
    collector's reach. A full collection over them took 127 ms here, a stall an unlucky
    request would wait for; they live as long as the process anyway. Returns how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, cgroup cpusets), not the
    machine's core count, so a server pinned to 2 of 16 cores splits 2 between its threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
