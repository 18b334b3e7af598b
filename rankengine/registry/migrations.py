"""Alembic, driven from code: the schema lives in ``migrations/`` (``rankengine_migrations``)."""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

if TYPE_CHECKING:
    from rankengine.registry.store import RegistryStore


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location",
                           str(resources.files("rankengine_migrations")))
    return config


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current(store: RegistryStore) -> str | None:
    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store: RegistryStore, revision: str = "head") -> None:
    _run(store, lambda cfg: command.upgrade(cfg, revision))


def downgrade(store: RegistryStore, revision: str) -> None:
    _run(store, lambda cfg: command.downgrade(cfg, revision))


def _run(store: RegistryStore, action: object) -> None:
    config = alembic_config()
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        action(config)  # type: ignore[operator]


def ensure_current(store: RegistryStore, *, create_if_empty: bool) -> None:
    """Create the schema in an empty database; refuse one whose schema is behind."""
    from rankengine.registry.store import SchemaOutOfDateError

    have, want = current(store), head()
    if have == want:
        return
    fix = f"rankengine db upgrade --url '{store.url}'"
    if have is None and not store.table_names():
        if create_if_empty:
            upgrade(store)
            return
        from rankengine.registry.store import NotFoundError

        raise NotFoundError(f"{store.url} holds no registry yet; train a model first, pass "
                            f"--registry URL, or create it with: {fix}")
    if have is None:
        raise SchemaOutOfDateError(
            f"{store.url} holds tables but no rankengine schema version; if it is a registry "
            f"created before migrations, run: {fix}")
    raise SchemaOutOfDateError(
        f"the registry schema in {store.url} is at revision {have}, this rankengine needs "
        f"{want}; run: {fix}")
