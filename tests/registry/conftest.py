"""Registry back ends: SQLite always; PostgreSQL and MariaDB when their URLs are set.

``.ci/run`` sets RANKENGINE_TEST_POSTGRES_URL and RANKENGINE_TEST_MYSQL_URL, so CI exercises
all three. Each test gets a fresh, empty database that is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from rankengine.registry import RegistryStore

SERVER_ENV = {"postgresql": "RANKENGINE_TEST_POSTGRES_URL", "mysql": "RANKENGINE_TEST_MYSQL_URL"}
BACKENDS = ["sqlite", "postgresql", "mysql"]


def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    base = os.environ.get(SERVER_ENV[backend])
    if not base:
        pytest.skip(f"{SERVER_ENV[backend]} is not set: no {backend} server to test against")
    name = f"re_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if backend == "postgresql":
                conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
            else:
                conn.execute(text(f"DROP DATABASE {name}"))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database(request.param, tmp_path)


@pytest.fixture
def store(registry_url: str) -> Iterator[RegistryStore]:
    opened = RegistryStore(registry_url)
    yield opened
    opened.close()
