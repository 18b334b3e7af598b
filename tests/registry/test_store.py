from __future__ import annotations

from pathlib import Path

import pytest

from rankengine.registry import NotFoundError, RegistryError, RegistryStore


def version(store: RegistryStore, model: str = "demo", **kw: object):
    return store.create_version(model, config={"a": 1}, task_graph={"click": {}},
                                plugins={"cascades": "0.1.0"}, data_fingerprint={"rows": {}},
                                **kw)


def ready(store: RegistryStore, model: str = "demo", auc: float = 0.7):
    v = version(store, model)
    return store.mark_ready(model, v.version, artifact_uri=f"file:///x/{v.version}",
                            artifact_sha256="0" * 64, artifact_size=10,
                            metrics={"splits": {"test": {"click": {"auc": auc}}}})


def test_versions_count_up_per_model_and_are_never_reused(store: RegistryStore) -> None:
    assert [version(store).version for _ in range(3)] == [1, 2, 3]
    assert version(store, "other").version == 1
    store.delete_version("demo", 3)
    assert version(store).version == 4
    assert [v.version for v in store.list_versions("demo")] == [1, 2, 4]


def test_entities_are_plain_and_complete(store: RegistryStore) -> None:
    v = ready(store)
    assert v.status == "ready" and v.artifact_size == 10
    again = store.get_version("demo", v.version)
    assert again.config == {"a": 1} and again.plugins == {"cascades": "0.1.0"}
    assert again.created_at.tzinfo is not None
    assert again.metrics["splits"]["test"]["click"]["auc"] == 0.7
    with pytest.raises(RegistryError, match="not pending"):
        store.mark_ready("demo", v.version, artifact_uri="u", artifact_sha256="1" * 64,
                         artifact_size=1, metrics={})


def test_aliases_history_and_rollback(store: RegistryStore) -> None:
    v1, v2, v3 = ready(store), ready(store), ready(store)
    store.set_alias("demo", "champion", v1.version)
    store.set_alias("demo", "champion", v2.version, reason="better")
    store.set_alias("demo", "champion", v3.version)
    assert store.resolve("demo@champion").version == 3
    assert store.get_version("demo", 3).aliases == ("champion",)
    move = store.rollback("demo", "champion")
    assert (move.from_version, move.to_version) == (3, 2)
    assert store.resolve("demo@champion").version == 2
    history = store.alias_history("demo", "champion")
    assert [(m.from_version, m.to_version) for m in history] == [(None, 1), (1, 2), (2, 3),
                                                                (3, 2)]
    assert history[1].reason == "better" and history[0].moved_by
    store.rollback("demo", "champion")
    assert store.resolve("demo@champion").version == 1
    with pytest.raises(RegistryError, match="no earlier version"):
        store.rollback("demo", "champion")


def test_references_and_not_found_messages(store: RegistryStore) -> None:
    ready(store)
    version(store)  # pending: not "latest ready"
    assert store.resolve("demo").version == 1
    assert store.resolve("demo/2").status == "pending"
    with pytest.raises(NotFoundError, match=r"no model named 'dmeo'.*did you mean 'demo'"):
        store.resolve("dmeo@champion")
    with pytest.raises(NotFoundError, match="has no alias 'champion'; aliases: \\(none\\)"):
        store.resolve("demo@champion")
    with pytest.raises(NotFoundError, match="has no version 9"):
        store.resolve("demo/9")


def test_only_ready_versions_take_aliases_and_aliased_ones_cannot_be_deleted(
        store: RegistryStore) -> None:
    pending = version(store)
    with pytest.raises(RegistryError, match="only ready versions"):
        store.set_alias("demo", "champion", pending.version)
    v = ready(store)
    store.set_alias("demo", "champion", v.version)
    with pytest.raises(RegistryError, match="still aliased as champion"):
        store.delete_version("demo", v.version)


def test_invalid_names_and_parent(store: RegistryStore) -> None:
    with pytest.raises(RegistryError, match="invalid model name"):
        version(store, "bad name; drop table")
    with pytest.raises(NotFoundError):
        version(store, parent_version=7)
    parent = ready(store)
    child = version(store, parent_version=parent.version, tags={"team": "feed"})
    assert store.get_version("demo", child.version).parent_version == parent.version
    assert store.get_version("demo", child.version).tags == {"team": "feed"}


def test_opening_a_missing_sqlite_registry_without_creating_leaves_no_file(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    with pytest.raises(NotFoundError, match=r"holds no registry yet \(.*typo\.db does not exist"):
        RegistryStore(url, create_if_empty=False)
    assert list(tmp_path.iterdir()) == []  # SQLite would have created the file on connect
