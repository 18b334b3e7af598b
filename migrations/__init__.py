"""Alembic environment and revisions of the registry schema (installed as rankengine_migrations)."""
