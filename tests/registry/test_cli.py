"""``rankengine db`` and ``rankengine models`` on a real registry."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from rankengine.cli import cli
from rankengine.registry import RegistryStore


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
    assert code == 0 and "(empty)" in out and "behind" in out
    code, out = invoke("db", "upgrade", "--url", registry_url)
    assert code == 0 and "→ 0002" in out
    code, out = invoke("db", "downgrade", "--url", registry_url, "0001")
    assert code == 0 and "0002 → 0001" in out
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
