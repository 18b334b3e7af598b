"""The registry store: a typed API over SQLAlchemy that returns plain frozen entities.

Every call runs in a managed session that commits or rolls back, and database errors become
:class:`RegistryError` with a message about the registry, not about SQL.
"""

from __future__ import annotations

import getpass
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from rankengine.errors import RankEngineError
from rankengine.registry.schema import SqlAlias, SqlAliasMove, SqlModel, SqlVersion

DEFAULT_URL = "sqlite:///rankengine.db"
URL_ENV = "RANKENGINE_REGISTRY_URL"
STATUSES = ("pending", "ready", "archived", "failed")
ROLLBACK = "rollback from"  # reason prefix that marks a move made by rollback()


class RegistryError(RankEngineError):
    """The registry refused an operation or the database failed."""


class NotFoundError(RegistryError):
    """No such model, version or alias."""


class RegistryBusyError(RegistryError):
    """A lock race or deadlock the database gave up on; the operation may be retried."""


class SchemaOutOfDateError(RegistryError):
    """The database schema is behind the code; ``rankengine db upgrade`` fixes it."""


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    created_at: datetime
    status: str
    config: dict[str, Any]
    task_graph: dict[str, Any]
    plugins: dict[str, str]
    data_fingerprint: dict[str, Any]
    metrics: dict[str, Any]
    artifact_uri: str | None
    artifact_sha256: str | None
    artifact_size: int | None
    parent_version: int | None
    tags: dict[str, Any]
    aliases: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.model}/{self.version}"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    created_at: datetime
    description: str
    last_version: int
    aliases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AliasMove:
    model: str
    alias: str
    from_version: int | None
    to_version: int | None
    moved_at: datetime
    moved_by: str
    reason: str


def resolve_url(url: str | None) -> str:
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi: Any, _record: Any) -> None:
            cursor = dbapi.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class RegistryStore:
    """Models, versions and aliases in one SQL database."""

    def __init__(self, url: str | None = None, *, check_schema: bool = True,
                 create_if_empty: bool = True) -> None:
        self.url = resolve_url(url)
        try:
            self.engine = make_engine(self.url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise RegistryError(f"cannot open registry {self.url}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if check_schema:
            from rankengine.registry import migrations

            try:
                migrations.ensure_current(self, create_if_empty=create_if_empty)
            except BaseException:
                self.engine.dispose()
                raise

    def close(self) -> None:
        self.engine.dispose()

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Commit on success, roll back on error, translate database errors."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except RegistryError:
            session.rollback()
            raise
        except IntegrityError:
            session.rollback()
            raise
        except OperationalError as exc:
            session.rollback()
            error = RegistryBusyError if _retryable(exc) else RegistryError
            raise error(f"registry database error ({self.url}): "
                                f"{type(exc.orig).__name__}: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            session.rollback()
            cause = getattr(exc, "orig", None) or exc
            raise RegistryError(f"registry database error ({self.url}): "
                                f"{type(cause).__name__}: {cause}") from exc
        finally:
            session.close()

    # -- versions ---------------------------------------------------------------------------

    def create_version(
        self, model: str, *, config: dict[str, Any], task_graph: dict[str, Any],
        plugins: dict[str, str], data_fingerprint: dict[str, Any],
        metrics: dict[str, Any] | None = None, parent_version: int | None = None,
        tags: dict[str, Any] | None = None, status: str = "pending",
    ) -> ModelVersion:
        """Allocate the next version number of ``model`` (never reused) and record it.

        Safe under concurrent registration from many processes: the model row's counter is
        bumped with one UPDATE (a row lock on PostgreSQL / MariaDB, the write lock on SQLite),
        and lost races or busy databases are retried.
        """
        _check_name(model)
        if parent_version is not None:
            self.get_version(model, parent_version)
        for attempt in range(200):
            try:
                with self.session() as s:
                    result = s.execute(
                        update(SqlModel).where(SqlModel.name == model)
                        .values(last_version=SqlModel.last_version + 1)
                    )
                    bumped = getattr(result, "rowcount", 0)
                    if not bumped:
                        s.add(SqlModel(name=model, created_at=_now(), description="",
                                       last_version=1))
                        s.flush()
                    number = s.scalar(select(SqlModel.last_version)
                                      .where(SqlModel.name == model))
                    assert number is not None
                    row = SqlVersion(
                        model_name=model, version=number, created_at=_now(), status=status,
                        config=config, task_graph=task_graph, plugins=plugins,
                        data_fingerprint=data_fingerprint, metrics=metrics or {},
                        artifact_uri=None, artifact_sha256=None, artifact_size=None,
                        parent_version=parent_version, tags=tags or {},
                    )
                    s.add(row)
                    s.flush()
                    return _version(row, ())
            except (IntegrityError, RegistryBusyError):
                # a lost race for the first version row, or a deadlock/lock timeout
                time.sleep(min(0.5, 0.005 * (attempt + 1)) * random.random())
        raise RegistryError(f"could not allocate a version of '{model}' after 200 attempts")

    def mark_ready(self, model: str, version: int, *, artifact_uri: str, artifact_sha256: str,
                   artifact_size: int, metrics: dict[str, Any]) -> ModelVersion:
        with self.session() as s:
            row = self._version_row(s, model, version)
            if row.status != "pending":
                raise RegistryError(f"{model}/{version} is {row.status}, not pending")
            row.artifact_uri, row.artifact_sha256 = artifact_uri, artifact_sha256
            row.artifact_size, row.metrics, row.status = artifact_size, metrics, "ready"
            return _version(row, self._aliases_of(s, model, version))

    def set_status(self, model: str, version: int, status: str) -> ModelVersion:
        if status not in STATUSES:
            raise RegistryError(f"unknown status '{status}'; expected one of {STATUSES}")
        with self.session() as s:
            row = self._version_row(s, model, version)
            row.status = status
            return _version(row, self._aliases_of(s, model, version))

    def patch_version(self, model: str, version: int, *, metrics: dict[str, Any] | None = None,
                      tags: dict[str, Any] | None = None) -> ModelVersion:
        """Set top-level keys of a version's ``metrics`` and ``tags`` in one transaction.

        A key whose value is None is removed. Nothing else (config, artifact, status) changes.
        The row is locked for the read-modify-write (FOR UPDATE where the database has it;
        SQLite serialises writers itself).
        """
        with self.session() as s:
            self._model_row(s, model)
            row = s.scalars(select(SqlVersion).where(SqlVersion.model_name == model,
                                                     SqlVersion.version == version)
                            .with_for_update()).first()
            if row is None:
                raise NotFoundError(f"model '{model}' has no version {version}")
            if metrics:
                row.metrics = _patched(row.metrics, metrics)  # a new dict: JSON change tracked
            if tags:
                row.tags = _patched(row.tags, tags)
            s.flush()
            return _version(row, self._aliases_of(s, model, version))

    def get_version(self, model: str, version: int) -> ModelVersion:
        with self.session() as s:
            row = self._version_row(s, model, version)
            return _version(row, self._aliases_of(s, model, version))

    def list_versions(self, model: str) -> list[ModelVersion]:
        with self.session() as s:
            self._model_row(s, model)
            rows = s.scalars(select(SqlVersion).where(SqlVersion.model_name == model)
                             .order_by(SqlVersion.version)).all()
            aliases = self._alias_map(s, model)
            return [_version(r, tuple(a for a, v in aliases.items() if v == r.version))
                    for r in rows]

    def delete_version(self, model: str, version: int) -> ModelVersion:
        with self.session() as s:
            row = self._version_row(s, model, version)
            pointing = self._aliases_of(s, model, version)
            if pointing:
                raise RegistryError(
                    f"{model}/{version} is still aliased as {', '.join(pointing)}; move or "
                    f"delete those aliases first")
            entity = _version(row, ())
            s.delete(row)
            return entity

    # -- models -----------------------------------------------------------------------------

    def list_models(self) -> list[RegisteredModel]:
        with self.session() as s:
            rows = s.scalars(select(SqlModel).order_by(SqlModel.name)).all()
            return [_model(r, self._alias_map(s, r.name)) for r in rows]

    def get_model(self, name: str) -> RegisteredModel:
        with self.session() as s:
            return _model(self._model_row(s, name), self._alias_map(s, name))

    # -- aliases ----------------------------------------------------------------------------

    def set_alias(self, model: str, alias: str, version: int, *, reason: str = "",
                  moved_by: str | None = None) -> AliasMove:
        _check_name(alias, "alias")
        with self.session() as s:
            row = self._version_row(s, model, version)
            if row.status != "ready":
                raise RegistryError(f"{model}/{version} is {row.status}; only ready versions "
                                    f"can carry an alias")
            current = s.get(SqlAlias, (model, alias))
            previous = current.version if current else None
            if current is None:
                s.add(SqlAlias(model_name=model, alias=alias, version=version))
            else:
                current.version = version
            move = SqlAliasMove(model_name=model, alias=alias, from_version=previous,
                                to_version=version, moved_at=_now(),
                                moved_by=moved_by or _user(), reason=reason)
            s.add(move)
            return _move(move)

    def delete_alias(self, model: str, alias: str, *, reason: str = "") -> AliasMove:
        with self.session() as s:
            current = s.get(SqlAlias, (model, alias))
            if current is None:
                raise NotFoundError(self._unknown_alias(s, model, alias))
            move = SqlAliasMove(model_name=model, alias=alias, from_version=current.version,
                                to_version=None, moved_at=_now(), moved_by=_user(),
                                reason=reason)
            s.delete(current)
            s.add(move)
            return _move(move)

    def alias_history(self, model: str, alias: str | None = None) -> list[AliasMove]:
        with self.session() as s:
            query = select(SqlAliasMove).where(SqlAliasMove.model_name == model)
            if alias is not None:
                query = query.where(SqlAliasMove.alias == alias)
            return [_move(m) for m in s.scalars(query.order_by(SqlAliasMove.id)).all()]

    def rollback(self, model: str, alias: str) -> AliasMove:
        """Undo the latest move of ``alias`` that is not itself undone; repeatable."""
        with self.session() as s:
            current = s.get(SqlAlias, (model, alias))
            if current is None:
                raise NotFoundError(self._unknown_alias(s, model, alias))
            moves = s.scalars(select(SqlAliasMove).where(
                SqlAliasMove.model_name == model, SqlAliasMove.alias == alias,
            ).order_by(SqlAliasMove.id)).all()
            undo: list[int | None] = []  # where each still-standing move came from
            for m in moves:
                if m.reason.startswith(ROLLBACK):
                    if undo:
                        undo.pop()
                else:
                    undo.append(m.from_version)
            if not undo or undo[-1] is None:
                raise RegistryError(f"alias '{alias}' of '{model}' has no earlier version to "
                                    f"roll back to")
            target = self._version_row(s, model, undo[-1])
            if target.status != "ready":
                raise RegistryError(f"cannot roll back to {model}/{target.version}: it is "
                                    f"{target.status}")
            move = SqlAliasMove(model_name=model, alias=alias, from_version=current.version,
                                to_version=target.version, moved_at=_now(), moved_by=_user(),
                                reason=f"{ROLLBACK} {current.version}")
            current.version = target.version
            s.add(move)
            return _move(move)

    def resolve(self, ref: str) -> ModelVersion:
        """``name@alias``, ``name/3`` or ``name`` (the latest ready version)."""
        if "@" in ref:
            model, alias = ref.split("@", 1)
            with self.session() as s:
                row = s.get(SqlAlias, (model, alias))
                if row is None:
                    self._model_row(s, model)
                    raise NotFoundError(self._unknown_alias(s, model, alias))
                version = row.version
            return self.get_version(model, version)
        if "/" in ref:
            model, _, number = ref.rpartition("/")
            if not number.isdigit():
                raise RegistryError(f"'{ref}': expected NAME/VERSION with a version number")
            return self.get_version(model, int(number))
        ready = [v for v in self.list_versions(ref) if v.status == "ready"]
        if not ready:
            raise NotFoundError(f"model '{ref}' has no ready version")
        return ready[-1]

    # -- helpers ----------------------------------------------------------------------------

    def _model_row(self, s: Session, name: str) -> SqlModel:
        row = s.get(SqlModel, name)
        if row is None:
            names = list(s.scalars(select(SqlModel.name)).all())
            from rankengine.errors import suggest

            raise NotFoundError(f"no model named '{name}' in {self.url}; models: "
                                f"{', '.join(names) or '(none)'}{suggest(name, names)}")
        return row

    def _version_row(self, s: Session, model: str, version: int) -> SqlVersion:
        self._model_row(s, model)
        row = s.scalars(select(SqlVersion).where(SqlVersion.model_name == model,
                                                 SqlVersion.version == version)).first()
        if row is None:
            raise NotFoundError(f"model '{model}' has no version {version}")
        return row

    def _alias_map(self, s: Session, model: str) -> dict[str, int]:
        rows = s.scalars(select(SqlAlias).where(SqlAlias.model_name == model)).all()
        return {r.alias: r.version for r in rows}

    def _aliases_of(self, s: Session, model: str, version: int) -> tuple[str, ...]:
        return tuple(sorted(a for a, v in self._alias_map(s, model).items() if v == version))

    def _unknown_alias(self, s: Session, model: str, alias: str) -> str:
        known = sorted(self._alias_map(s, model))
        return (f"model '{model}' has no alias '{alias}'; aliases: "
                f"{', '.join(known) or '(none)'}")



def _patched(current: dict[str, Any] | None, patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(current or {})
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _retryable(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(t in text for t in ("locked", "busy", "deadlock", "serialize", "lock wait"))


def _check_name(name: str, what: str = "model name") -> None:
    if not name or len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name):
        raise RegistryError(f"invalid {what} {name!r}: use letters, digits, '-', '_' or '.'")


def _version(row: SqlVersion, aliases: tuple[str, ...]) -> ModelVersion:
    return ModelVersion(
        model=row.model_name, version=row.version, created_at=_aware(row.created_at),
        status=row.status, config=row.config, task_graph=row.task_graph, plugins=row.plugins,
        data_fingerprint=row.data_fingerprint, metrics=row.metrics,
        artifact_uri=row.artifact_uri, artifact_sha256=row.artifact_sha256,
        artifact_size=row.artifact_size, parent_version=row.parent_version, tags=row.tags,
        aliases=aliases,
    )


def _model(row: SqlModel, aliases: dict[str, int]) -> RegisteredModel:
    return RegisteredModel(row.name, _aware(row.created_at), row.description, row.last_version,
                           aliases)


def _move(row: SqlAliasMove) -> AliasMove:
    return AliasMove(row.model_name, row.alias, row.from_version, row.to_version,
                     _aware(row.moved_at), row.moved_by, row.reason)


def _aware(value: datetime) -> datetime:
    # SQLite and MariaDB hand back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)

