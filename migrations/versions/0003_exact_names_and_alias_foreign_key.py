"""Names compare byte-exactly; an alias can only point at an existing version.

- MariaDB / MySQL: the name columns (model name, alias, and the columns that refer to them)
  get the binary collation ``utf8mb4_bin``. Under the default ``utf8mb4_general_ci``,
  ``Demo``, ``demo``, ``DEMO`` and ``démo`` were one model. The foreign keys over those
  columns are dropped and re-created around the change (MariaDB refuses to alter a column a
  foreign key uses). SQLite (``BINARY``) and PostgreSQL (deterministic collations) already
  compare names byte for byte; nothing changes there.
- Every back end: a foreign key from ``model_aliases (model_name, version)`` to
  ``model_versions (model_name, version)``, so a version cannot be deleted while an alias
  points at it, whatever the race. Aliases that already point at a deleted version (that race
  was possible before) are removed first, each with an alias_history entry saying so.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (table, column, length) of every column that holds a model name or an alias.
NAME_COLUMNS = [
    ("registered_models", "name", 200),
    ("model_versions", "model_name", 200),
    ("model_aliases", "model_name", 200),
    ("model_aliases", "alias", 100),
    ("alias_history", "model_name", 200),
    ("alias_history", "alias", 100),
]
FK_NAME = "fk_model_aliases_version"
FK_INDEX = "ix_model_aliases_version"


def _is_mysql() -> bool:
    return op.get_bind().dialect.name in ("mysql", "mariadb")


def _set_name_collation(collation: str | None) -> None:
    """MariaDB / MySQL: re-type every name column, foreign keys dropped and re-created."""
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    tables = sorted({table for table, _, _ in NAME_COLUMNS})
    foreign_keys: list[tuple[str, dict[str, Any]]] = [
        (table, fk) for table in tables for fk in inspector.get_foreign_keys(table)]
    for table, fk in foreign_keys:
        op.execute(f"ALTER TABLE {table} DROP FOREIGN KEY {fk['name']}")
    for table, column, length in NAME_COLUMNS:
        collate = f" COLLATE {collation}" if collation else ""
        op.execute(f"ALTER TABLE {table} MODIFY {column} VARCHAR({length}) "
                   f"CHARACTER SET utf8mb4{collate} NOT NULL")
    for table, fk in foreign_keys:
        ondelete = (fk.get("options") or {}).get("ondelete")
        op.create_foreign_key(fk["name"], table, fk["referred_table"],
                              fk["constrained_columns"], fk["referred_columns"],
                              ondelete=ondelete)


def _drop_dangling_aliases() -> None:
    bind = op.get_bind()
    dangling = bind.execute(sa.text(
        "SELECT a.model_name, a.alias, a.version FROM model_aliases a WHERE NOT EXISTS "
        "(SELECT 1 FROM model_versions v WHERE v.model_name = a.model_name "
        "AND v.version = a.version)")).all()
    for model, alias, version in dangling:
        bind.execute(sa.text(
            "INSERT INTO alias_history (model_name, alias, from_version, to_version, moved_at, "
            "moved_by, reason) VALUES (:model, :alias, :version, NULL, :now, 'migration 0003', "
            ":reason)"),
            {"model": model, "alias": alias, "version": version, "now": datetime.now(UTC),
             "reason": f"removed: version {version} had been deleted"})
        bind.execute(sa.text("DELETE FROM model_aliases WHERE model_name = :model AND "
                             "alias = :alias"), {"model": model, "alias": alias})


def upgrade() -> None:
    if _is_mysql():
        _set_name_collation("utf8mb4_bin")
    _drop_dangling_aliases()
    with op.batch_alter_table("model_aliases") as batch:
        batch.create_index(FK_INDEX, ["model_name", "version"])
        batch.create_foreign_key(FK_NAME, "model_versions", ["model_name", "version"],
                                 ["model_name", "version"])


def downgrade() -> None:
    with op.batch_alter_table("model_aliases") as batch:
        batch.drop_constraint(FK_NAME, type_="foreignkey")
        batch.drop_index(FK_INDEX)
    if _is_mysql():
        _set_name_collation(None)  # utf8mb4's default collation (utf8mb4_general_ci on MariaDB)
