"""``rankengine plugin new``: the generated package installs, lints and its own tests pass."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import rankengine
from rankengine.cli import cli
from rankengine.scaffold import ScaffoldError, plugin_files, write_plugin


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_new_writes_a_package_with_an_entry_point_and_a_test(tmp_path: Path) -> None:
    code, output = invoke("plugin", "new", "rank_blend", "--dir", str(tmp_path))
    assert code == 0, output
    root = tmp_path / "rankengine-rank-blend"
    assert f"created {root}" in output
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "src/rankengine_rank_blend/__init__.py",
        "tests/test_rank_blend.py"]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "rankengine-rank-blend"' in pyproject
    assert '[project.entry-points.rankengine]\nrank_blend = "rankengine_rank_blend"' in pyproject
    module = (root / "src/rankengine_rank_blend/__init__.py").read_text()
    assert f'RANKENGINE_HOOK_API = "{rankengine.HOOK_API_VERSION}"' in module


def test_generated_plugin_imports_only_the_public_api() -> None:
    for relative, text in plugin_files("rank_blend").items():
        if not relative.endswith(".py") or relative.startswith("tests/"):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rankengine"):
                assert node.module == "rankengine", relative
                assert {a.name for a in node.names} <= set(rankengine.__all__), relative


@pytest.mark.parametrize(("name", "message"), [
    ("Rank-Blend", "use lower-case letters, digits and '_'"),
    ("2fast", "starting with a letter"),
    ("class", "use lower-case letters"),
    ("builtin", "'builtin' is reserved"),
    ("fusion", r"a plugin named 'fusion' is already installed \(rankengine 0\.1\.0\)"),
])
def test_bad_names_are_refused(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ScaffoldError, match=message):
        write_plugin(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_is_never_overwritten(tmp_path: Path) -> None:
    write_plugin("mine", tmp_path)
    marker = tmp_path / "rankengine-mine" / "README.md"
    marker.write_text("my edits")
    code, output = invoke("plugin", "new", "mine", "--dir", str(tmp_path))
    assert code != 0 and "rankengine-mine already exists" in output
    assert marker.read_text() == "my edits"


@pytest.mark.integration
def test_generated_package_builds_and_its_tests_pass(tmp_path: Path) -> None:
    """Install the generated package (non-editable, into a throwaway directory: the shared
    environment stays untouched) and run the package's own tests against it."""
    root = write_plugin("rank_blend", tmp_path / "work")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(site), str(root)],
                   check=True, capture_output=True, text=True)
    assert (site / "rankengine_rank_blend").is_dir()
    shutil.rmtree(root / "src")  # the tests must run against the installed copy
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_generated_code_passes_ruff(tmp_path: Path) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed in this environment")
    root = write_plugin("rank_blend", tmp_path)
    result = subprocess.run([ruff, "check", "--isolated", "--line-length", "100", "--select",
                             "E,F,W,I,B,UP,RUF,SIM,N", "."],
                            cwd=root, capture_output=True, text=True)  # as in its own repo
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_dir_under_a_file_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["plugin", "new", "rank_blend", "--dir",
                                      str(blocker / "x")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0] == (f"Error: {blocker / 'x'}: cannot create the package here: a part of the "
                        f"path is a file, not a folder")


def test_a_failed_write_leaves_no_half_package(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.write_text
    written: list[Path] = []

    def full_disk(self: Path, *args: object, **kwargs: object) -> int:
        if written:
            raise OSError(28, "No space left on device")
        written.append(self)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(ScaffoldError, match="cannot write the package: No space left on device"):
        write_plugin("rank_blend", tmp_path)
    assert written and list(tmp_path.iterdir()) == []  # no rankengine-rank-blend, no staging
    monkeypatch.undo()
    root = write_plugin("rank_blend", tmp_path)
    assert oct(root.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
