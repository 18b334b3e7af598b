"""Helpers for the files rankengine writes."""

from __future__ import annotations

import os
from pathlib import Path

from rankengine.files import os_reason, umask


def test_umask_is_the_process_umask_and_leaves_it_unchanged() -> None:
    previous = os.umask(0o027)
    try:
        assert umask() == 0o027
        assert umask() == 0o027  # reading it did not change it
    finally:
        os.umask(previous)


def test_os_reason_says_when_a_part_of_the_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    try:
        (tmp_path / "file" / "sub").mkdir(parents=True)
    except OSError as exc:
        assert os_reason(exc) == "a part of the path is a file, not a folder"
    else:
        raise AssertionError("mkdir under a file succeeded")
