"""Small helpers for files rankengine writes through a temporary name."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(path: Path) -> None:
    """Make the renames and new files in ``path`` durable: a crash right after a rename must
    not lose it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process umask, read from /proc (``os.umask`` would have to change it for a moment,
    and it is process-wide state another thread could create a file under); 0o022 where it
    cannot be read. mkstemp / mkdtemp create 0600 / 0700: chmod to ``0o666 & ~umask()``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def os_reason(exc: OSError) -> str:
    """Why a path could not be written, in words; mkdir says 'File exists' when a part of the
    path is a file."""
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return "a part of the path is a file, not a folder"
    return exc.strerror or str(exc)
