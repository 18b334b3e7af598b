from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from rankengine.registry import RegistryError, RegistryStore, SchemaOutOfDateError, migrations
from rankengine.registry.schema import Base


def test_single_head_and_sequential_ids() -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config())
    assert script.get_heads() == [migrations.head()]
    revisions = [r.revision for r in script.walk_revisions()]
    assert sorted(revisions) == [f"{i:04d}" for i in range(1, len(revisions) + 1)]


def test_orm_and_migrations_agree(registry_url: str) -> None:
    store = RegistryStore(registry_url)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                Base.metadata)
    store.close()
    assert diff == []


def test_upgrade_from_first_revision_keeps_data(registry_url: str) -> None:
    store = RegistryStore(registry_url, check_schema=False)
    migrations.upgrade(store, "0001")
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO registered_models (name, created_at, description, "
                          "last_version) VALUES ('old', '2026-01-01 00:00:00', '', 1)"))
        conn.execute(text(
            "INSERT INTO model_versions (model_name, version, created_at, status, config, "
            "task_graph, plugins, data_fingerprint, metrics) VALUES ('old', 1, "
            "'2026-01-01 00:00:00', 'ready', '{\"k\": 1}', '{}', '{}', '{}', '{}')"))
    with pytest.raises(SchemaOutOfDateError, match=r"revision 0001.*rankengine db upgrade"):
        RegistryStore(registry_url)
    migrations.upgrade(store)
    upgraded = RegistryStore(registry_url)
    kept = upgraded.get_version("old", 1)
    assert kept.config == {"k": 1} and kept.tags == {}
    assert upgraded.create_version("old", config={}, task_graph={}, plugins={},
                                   data_fingerprint={}).version == 2
    upgraded.close()
    store.close()


def test_upgrade_downgrade_upgrade_round_trip(registry_url: str) -> None:
    store = RegistryStore(registry_url)
    assert migrations.current(store) == migrations.head()
    migrations.downgrade(store, "0001")
    assert migrations.current(store) == "0001"
    assert "model_aliases" not in store.table_names()
    migrations.downgrade(store, "base")
    assert migrations.current(store) is None
    assert not set(store.table_names()) - {"alembic_version"}
    migrations.upgrade(store)
    assert migrations.current(store) == migrations.head()
    store.close()


def test_a_foreign_database_is_not_touched(registry_url: str) -> None:
    store = RegistryStore(registry_url, check_schema=False)
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)"))
    with pytest.raises(SchemaOutOfDateError, match="holds tables but no rankengine schema"):
        RegistryStore(registry_url)
    store.close()


def test_upgrade_to_0003_removes_aliases_to_deleted_versions_and_keeps_the_rest(
        registry_url: str) -> None:
    store = RegistryStore(registry_url, check_schema=False)
    migrations.upgrade(store, "0002")
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO registered_models (name, created_at, description, "
                          "last_version) VALUES ('m', '2026-01-01 00:00:00', '', 2)"))
        conn.execute(text(
            "INSERT INTO model_versions (model_name, version, created_at, status, config, "
            "task_graph, plugins, data_fingerprint, metrics, tags) VALUES ('m', 1, "
            "'2026-01-01 00:00:00', 'ready', '{}', '{}', '{}', '{}', '{}', '{}')"))
        # 'old' points at version 2, deleted in the promote/delete race the FK now prevents
        conn.execute(text("INSERT INTO model_aliases (model_name, alias, version) VALUES "
                          "('m', 'champion', 1), ('m', 'old', 2)"))
    migrations.upgrade(store)
    upgraded = RegistryStore(registry_url)
    assert upgraded.get_model("m").aliases == {"champion": 1}
    (move,) = upgraded.alias_history("m", "old")
    assert (move.from_version, move.to_version) == (2, None)
    assert move.reason == "removed: version 2 had been deleted"
    with pytest.raises(RegistryError, match="still aliased as champion"):
        upgraded.delete_version("m", 1)
    with pytest.raises(IntegrityError), upgraded.engine.begin() as conn:  # the foreign key
        conn.execute(text("DELETE FROM model_versions WHERE model_name = 'm' AND version = 1"))
    upgraded.close()
    store.close()
