"""``rankengine db`` and ``rankengine models`` (rankengine.cli.registry) on a real registry."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rankengine.cli import cli
from rankengine.registry import RegistryStore, migrations


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def seed(url: str) -> None:
    store = RegistryStore(url)
    for auc in (0.7, 0.75):
        v = store.create_version("m", config={"train": {"lr": auc}}, task_graph={},
                                 plugins={"p": "1"}, data_fingerprint={})
        store.mark_ready("m", v.version, artifact_uri=f"file:///nowhere/{v.version}",
                         artifact_sha256="0" * 64, artifact_size=1,
                         metrics={"splits": {"test": {"click": {"auc": auc}}}})
    store.close()


def test_db_commands_round_trip(registry_url: str) -> None:
    code, out = invoke("db", "current", "--url", registry_url)
    if registry_url.startswith("sqlite"):  # no file yet: `db current` does not create one
        assert code == 1 and "holds no registry yet" in out
        assert not Path(registry_url.removeprefix("sqlite:///")).exists()
    else:  # an empty server database
        assert code == 0 and "(empty)" in out and "behind" in out
    code, out = invoke("db", "upgrade", "--url", registry_url)
    assert code == 0 and f"→ {migrations.head()}" in out
    code, out = invoke("db", "downgrade", "--url", registry_url, "0001")
    assert code == 0 and f"{migrations.head()} → 0001" in out
    code, out = invoke("models", "list", "--url", registry_url)
    assert code == 1 and "revision 0001" in out and "rankengine db upgrade --url" in out
    assert invoke("db", "upgrade", "--url", registry_url)[0] == 0
    code, out = invoke("db", "current", "--url", registry_url)
    assert "up to date" in out


def test_models_commands(registry_url: str) -> None:
    seed(registry_url)
    code, out = invoke("models", "list", "--url", registry_url, "--json")
    assert code == 0 and json.loads(out)[0]["last_version"] == 2
    code, out = invoke("models", "promote", "m/2", "champion", "--url", registry_url, "--json")
    assert code == 0 and json.loads(out)["to"] == 2
    code, out = invoke("models", "show", "m@champion", "--url", registry_url, "--json")
    shown = json.loads(out)
    assert shown["version"] == 2 and shown["aliases"] == ["champion"]
    assert shown["metrics"]["splits"]["test"]["click"]["auc"] == 0.75
    code, out = invoke("models", "diff", "m/1", "m/2", "--url", registry_url, "--json")
    diff = json.loads(out)
    assert diff["config"] == {"train.lr": [0.7, 0.75]}
    assert abs(diff["metrics"]["test.click.auc"]["delta"] - 0.05) < 1e-9
    code, out = invoke("models", "delete", "m/2", "--yes", "--url", registry_url)
    assert code == 1 and "still aliased as champion" in out
    code, out = invoke("models", "delete", "m/1", "--yes", "--url", registry_url)
    assert code == 0 and "deleted m/1" in out
    code, out = invoke("models", "versions", "m", "--url", registry_url)
    assert code == 0 and "champion" in out and "ready" in out


def test_unknown_references_are_one_line(registry_url: str, tmp_path: Path) -> None:
    seed(registry_url)
    code, out = invoke("models", "show", "n@champion", "--url", registry_url)
    assert code == 1 and "no model named 'n'" in out and "Traceback" not in out
    code, out = invoke("evaluate", "m@nope", "--registry", registry_url, "--data", "x.parquet")
    assert code == 1 and "has no alias 'nope'" in out
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    code, out = invoke("rank", "m@champion", "--registry", empty, "--data", "x.parquet")
    assert code == 1 and "holds no registry yet" in out


def test_bad_input_is_one_line_naming_the_url(registry_url: str, tmp_path: Path) -> None:
    seed(registry_url)
    unreachable = ["postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
                   "mysql+pymysql://root@127.0.0.1:1/nowhere",
                   f"sqlite:///{tmp_path}/no/such/dir/registry.db", "nonsense://x"]
    for url in unreachable:
        for command in (["models", "list"], ["db", "current"], ["db", "upgrade"]):
            code, out = invoke(*command, "--url", url)
            assert code == 1 and url in out and len(out.strip().splitlines()) == 1, out
    for args in (["models", "promote", "m/1", "no good"], ["models", "versions", "../m"],
                 ["models", "show", "m@."], ["db", "downgrade", "nope"],
                 ["models", "delete", "m/x", "--yes"], ["models", "rollback", "m", "nope"]):
        code, out = invoke(*args, "--url", registry_url)
        assert code == 1 and out.startswith("Error: ") and len(out.strip().splitlines()) == 1, \
            (args, out)


def test_gc_fails_stale_pending_versions_and_removes_their_leftovers(
        registry_url: str, tmp_path: Path) -> None:
    store = RegistryStore(registry_url)
    root = tmp_path / "artifacts"
    old = time.time() - 7200

    def version(status: str) -> int:
        v = store.create_version("m", config={}, task_graph={}, plugins={},
                                 data_fingerprint={})
        if status == "ready":
            folder = root / "m" / str(v.version)
            folder.mkdir(parents=True)
            store.mark_ready("m", v.version, artifact_uri=folder.resolve().as_uri(),
                             artifact_sha256="0" * 64, artifact_size=1, metrics={})
        elif status == "failed":
            store.set_status("m", v.version, "failed")
        return v.version

    def leftover(name: str) -> Path:
        path = root / "m" / name
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"half")
        os.utime(path, (old, old))
        return path

    killed, ready, failed = version("pending"), version("ready"), version("failed")
    temp_killed, temp_ready = leftover(f".{killed}.x1y2"), leftover(f".{ready}.abcd")
    partial_failed = leftover(str(failed))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the registry's")
    os.symlink(outside, root / "m" / f".{killed}.link")
    os.utime(root / "m" / f".{killed}.link", (old, old), follow_symlinks=False)
    args = ["models", "gc", "--url", registry_url, "--artifacts", str(root), "--json"]

    code, out = invoke(*args)  # --older-than 3600: the fresh pending one may be running
    assert code == 0 and json.loads(out)["failed"] == []
    assert store.get_version("m", killed).status == "pending" and temp_killed.exists()
    assert not partial_failed.exists()  # a failed version's partial artifact goes at once

    code, out = invoke(*args, "--older-than", "0")
    assert code == 0, out
    done = json.loads(out)
    assert done["failed"] == [f"m/{killed}"]
    assert sorted(Path(p).name for p in done["removed"]) == sorted(
        [temp_killed.name, f".{killed}.link"])
    assert store.get_version("m", killed).status == "failed"
    assert not temp_killed.exists() and not (root / "m" / f".{killed}.link").is_symlink()
    assert (outside / "keep.txt").is_file()  # the link went, not what it pointed at
    assert temp_ready.exists() and (root / "m" / str(ready)).is_dir()  # ready: untouched
    assert store.get_version("m", ready).status == "ready"
    code, out = invoke("models", "versions", "m", "--url", registry_url)
    assert code == 0 and out.count("failed") == 2 and "ready" in out
    code, out = invoke(*args[:-1])
    assert code == 0 and "nothing to clean up" in out
    store.close()


def one_error(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1, (args, result.output)
    assert lines[0].startswith("Error: ") and "internal error" not in lines[0], lines
    return lines[0]


def test_hostile_options_are_one_line(registry_url: str, tmp_path: Path) -> None:
    seed(registry_url)
    # Alembic asserted on an empty revision; gc turned nan / inf into an int
    assert "REVISION': empty" in one_error("db", "downgrade", "", "--url", registry_url)
    assert "empty; give a revision" in one_error("db", "upgrade", "", "--url", registry_url)
    assert "nan is not a number" in one_error("models", "gc", "--older-than", "nan",
                                              "--url", registry_url)
    assert "inf is not in the range" in one_error("models", "gc", "--older-than", "inf",
                                                  "--url", registry_url)
    # an empty URL used the default registry, unasked
    assert "empty registry URL" in one_error("models", "list", "--url", "")
    # NAME alone deleted the latest version of m
    assert "'m' names a model, not a version" in one_error("models", "delete", "m", "--yes",
                                                           "--url", registry_url)
    store = RegistryStore(registry_url)
    assert [v.version for v in store.list_versions("m")] == [1, 2]
    store.close()


def test_models_commands_never_create_a_registry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    for args in (["list"], ["versions", "m"], ["show", "m"], ["diff", "m/1", "m/2"],
                 ["promote", "m/1", "x"], ["rollback", "m", "x"], ["delete", "m/1", "--yes"],
                 ["gc", "--artifacts", str(tmp_path)]):
        assert "holds no registry yet" in one_error("models", *args, "--url", url)
    store = RegistryStore(url, check_schema=False)
    assert migrations.current(store) is None and store.table_names() == []
    store.close()


#: Every command that reads a registry: none of them may create one (only `train` and
#: `db upgrade` do).
READ_COMMANDS = [
    ["models", "list"], ["models", "versions", "m"], ["models", "show", "m@champion"],
    ["models", "diff", "m/1", "m/2"], ["models", "promote", "m/1", "champion"],
    ["models", "rollback", "m", "champion"], ["models", "delete", "m/1", "--yes"],
    ["models", "gc"], ["db", "current"], ["db", "downgrade", "base"],
    ["evaluate", "m@champion", "--data", "x.parquet"],
    ["predict", "m@champion", "--data", "x.parquet", "-o", "scores.csv"],
    ["rank", "m@champion", "--data", "x.parquet"],
    ["export", "m@champion", "--format", "torchscript", "-o", "m.pt"],
    ["serve", "m@champion"], ["report", "m@champion"],
    ["tune-fusion", "m@champion", "--data", "x.parquet"],
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_read_commands_never_create_the_default_registry(
        args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANKENGINE_REGISTRY_URL", raising=False)
    (tmp_path / "x.parquet").write_bytes(b"")  # tune-fusion checks the data exists first
    error = one_error(*args)
    assert (f"sqlite:///rankengine.db holds no registry yet ({tmp_path / 'rankengine.db'} does "
            f"not exist); train a model first") in error
    assert "rankengine db upgrade --url 'sqlite:///rankengine.db'" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.parquet"]


def test_read_commands_name_the_url_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    monkeypatch.setenv("RANKENGINE_REGISTRY_URL", url)
    for args in (["models", "list"], ["evaluate", "m@champion", "--data", "x.parquet"]):
        assert f"{url} holds no registry yet" in one_error(*args)
    assert list(tmp_path.iterdir()) == []


def test_read_commands_refuse_a_database_without_a_registry(registry_url: str) -> None:
    for args in (["models", "list", "--url"], ["report", "m@champion", "--url"],
                 ["evaluate", "m@champion", "--data", "x.parquet", "--registry"]):
        assert f"{registry_url} holds no registry yet" in one_error(*args, registry_url)
    if registry_url.startswith("sqlite"):
        assert not Path(registry_url.removeprefix("sqlite:///")).exists()
        return
    store = RegistryStore(registry_url, check_schema=False)  # the server database stays empty
    assert migrations.current(store) is None and store.table_names() == []
    store.close()


def test_db_upgrade_creates_the_default_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANKENGINE_REGISTRY_URL", raising=False)
    code, out = invoke("db", "upgrade")
    assert code == 0 and (tmp_path / "rankengine.db").is_file(), out
    code, out = invoke("models", "list", "--json")
    assert code == 0 and json.loads(out) == []
