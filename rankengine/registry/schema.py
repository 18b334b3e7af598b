"""ORM tables of the model registry (SQLAlchemy 2.0 typed mappings).

The schema itself changes only through Alembic revisions in ``migrations/``; a test checks
that these mappings and the migrations agree.

Model names and aliases compare byte-exactly on every back end: SQLite's BINARY collation and
PostgreSQL's deterministic collations do that already; on MariaDB / MySQL the name columns use
``utf8mb4_bin`` (revision 0003). The store normalises every name to Unicode NFC before it
reaches a query (:func:`rankengine.registry.store.check_name`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine


def name_type(length: int) -> TypeEngine[str]:
    """VARCHAR that compares byte for byte: ``utf8mb4_bin`` on MariaDB / MySQL."""
    binary = mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin")
    return String(length).with_variant(binary, "mysql", "mariadb")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class SqlModel(Base):
    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(name_type(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    description: Mapped[str] = mapped_column(String(2000), default="")
    #: Highest version number ever handed out; versions are never reused, even after deletes.
    last_version: Mapped[int] = mapped_column(Integer, default=0)


class SqlVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_name", "version", name="uq_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(
        name_type(200), ForeignKey("registered_models.name", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(20))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    task_graph: Mapped[dict[str, Any]] = mapped_column(JSON)
    plugins: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact_uri: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artifact_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON)


class SqlAlias(Base):
    __tablename__ = "model_aliases"
    __table_args__ = (
        # An alias points at an existing version, whatever two processes do at once.
        ForeignKeyConstraint(["model_name", "version"],
                             ["model_versions.model_name", "model_versions.version"],
                             name="fk_model_aliases_version"),
        Index("ix_model_aliases_version", "model_name", "version"),
    )

    model_name: Mapped[str] = mapped_column(
        name_type(200), ForeignKey("registered_models.name", ondelete="CASCADE"),
        primary_key=True)
    alias: Mapped[str] = mapped_column(name_type(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class SqlAliasMove(Base):
    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(
        name_type(200), ForeignKey("registered_models.name", ondelete="CASCADE"), index=True)
    alias: Mapped[str] = mapped_column(name_type(100))
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    moved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    moved_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(1000), default="")
