"""The registry fixtures (a fresh SQLite, PostgreSQL or MariaDB database per test) for the
commands that read or write one."""

from __future__ import annotations

from ..registry.conftest import registry_url, store

__all__ = ["registry_url", "store"]
