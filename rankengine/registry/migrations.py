"""Alembic, driven from code: the schema lives in ``migrations/`` (``rankengine_migrations``).

Every schema change (creating the schema on first use, ``rankengine db upgrade`` and
``downgrade``) runs under one lock per database, and re-reads the revision once it holds it,
so many processes opening an empty registry at the same moment create the schema once and
all succeed: a PostgreSQL transaction-level advisory lock, a MariaDB / MySQL named lock
(``GET_LOCK``), the SQLite write lock (``BEGIN IMMEDIATE``; SQLite DDL is transactional).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from rankengine.registry.errors import (
    RegistryBusyError,
    RegistryError,
    SchemaOutOfDateError,
    no_registry,
    reason,
)

if TYPE_CHECKING:
    from rankengine.registry.store import RegistryStore

#: Key of the PostgreSQL advisory lock (advisory locks are per database).
PG_LOCK_KEY = 0x72616E6B656E67  # "rankeng"
LOCK_TIMEOUT_S = 300


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
    with _translated(store), store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(store: RegistryStore, revision: str = "head") -> None:
    _run(store, lambda cfg: command.upgrade(cfg, revision))


def downgrade(store: RegistryStore, revision: str) -> None:
    _run(store, lambda cfg: command.downgrade(cfg, revision))


def _run(store: RegistryStore, action: Callable[[Config], None]) -> None:
    with _translated(store), schema_lock(store) as conn:
        _run_on(conn, action)


def _run_on(conn: Connection, action: Callable[[Config], None]) -> None:
    config = alembic_config()
    config.attributes["connection"] = conn
    action(config)


@contextmanager
def _translated(store: RegistryStore) -> Iterator[None]:
    """Database and Alembic failures as one-line registry errors naming the URL."""
    try:
        yield
    except CommandError as exc:
        raise RegistryError(f"{store.url}: {exc}") from exc
    except SQLAlchemyError as exc:
        raise RegistryError(f"cannot use registry {store.url}: {reason(exc)}") from exc


@contextmanager
def schema_lock(store: RegistryStore) -> Iterator[Connection]:
    """A connection in a transaction that holds this database's schema lock."""
    engine = store.engine
    dialect = engine.dialect.name
    if dialect == "sqlite":
        with store.write_engine.begin() as conn:  # BEGIN IMMEDIATE
            yield conn
    elif dialect == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            yield conn
    elif dialect in ("mysql", "mariadb"):
        # Named locks are per server and per session, so the name carries the database's,
        # and the lock is taken outside the transaction (MariaDB DDL commits implicitly).
        with engine.connect() as conn:
            database = conn.exec_driver_sql("SELECT DATABASE()").scalar() or ""
            name = f"rankengine.schema.{hashlib.sha256(database.encode()).hexdigest()[:32]}"
            got = conn.execute(text("SELECT GET_LOCK(:name, :wait)"),
                               {"name": name, "wait": LOCK_TIMEOUT_S}).scalar()
            conn.commit()
            if got != 1:
                raise RegistryBusyError(f"{store.url}: another process held the schema lock "
                                        f"for {LOCK_TIMEOUT_S}s; try again")
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                conn.commit()
    else:
        with engine.begin() as conn:
            yield conn


def ensure_current(store: RegistryStore, *, create_if_empty: bool) -> None:
    """Create the schema in an empty database; refuse one whose schema is behind."""
    want = head()
    if current(store) == want:
        return
    with _translated(store), schema_lock(store) as conn:
        # What another process did while this one waited for the lock counts.
        have = MigrationContext.configure(conn).get_current_revision()
        if have == want:
            return
        _refuse_or_create(store, conn, have, want, create_if_empty)


def _refuse_or_create(store: RegistryStore, conn: Connection, have: str | None, want: str,
                      create_if_empty: bool) -> None:
    fix = f"rankengine db upgrade --url '{store.url}'"
    if have is None and not inspect(conn).get_table_names():
        if create_if_empty:
            _run_on(conn, lambda cfg: command.upgrade(cfg, "head"))
            return
        raise no_registry(store.url)
    if have is None:
        raise SchemaOutOfDateError(
            f"{store.url} holds tables but no rankengine schema version; if it is a registry "
            f"created before migrations, run: {fix}")
    raise SchemaOutOfDateError(
        f"the registry schema in {store.url} is at revision {have}, this rankengine needs "
        f"{want}; run: {fix}")
