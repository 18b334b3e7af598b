"""The registry store: a typed API over SQLAlchemy that returns plain frozen entities.

Every call runs in a managed session that commits or rolls back, and database errors become
:class:`RegistryError` with a message about the registry, not about SQL.
"""

from __future__ import annotations

import getpass
import os
import random
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, Select, create_engine, event, inspect, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from rankengine.registry import migrations
from rankengine.registry.errors import (
    NotFoundError,
    RegistryBusyError,
    RegistryConflictError,
    RegistryError,
    SchemaOutOfDateError,
    no_registry,
)
from rankengine.registry.errors import reason as _reason
from rankengine.registry.schema import SqlAlias, SqlAliasMove, SqlModel, SqlVersion

if TYPE_CHECKING:
    from rankengine.config import EngineConfig

__all__ = [  # the errors are the registry's (rankengine.registry.errors), re-exported here
    "DEFAULT_URL", "URL_ENV", "AliasMove", "ModelVersion", "NotFoundError", "RegisteredModel",
    "RegistryBusyError", "RegistryConflictError", "RegistryError", "RegistryStore",
    "SchemaOutOfDateError", "check_model_name", "check_name", "make_engine", "no_registry",
    "resolve_url",
]

DEFAULT_URL = "sqlite:///rankengine.db"
URL_ENV = "RANKENGINE_REGISTRY_URL"
STATUSES = ("pending", "ready", "archived", "failed")
ROLLBACK = "rollback from"  # reason prefix that marks a move made by rollback()
#: Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE (the write lock).
WRITE = "rankengine_write"


# -- names ------------------------------------------------------------------------------------

NAME_MAX_CHARS, NAME_MAX_BYTES = 100, 200
#: What every model name and alias must be (after NFC normalisation), in words.
NAME_RULE = ("1-100 characters (at most 200 bytes as UTF-8) after Unicode NFC normalisation: "
             "letters, digits, combining marks, '-', '_' and '.', starting with a letter or "
             "digit, not ending with '.', and not a Windows device name (CON, NUL, COM1, ...)")
_WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$"]
    + [f"{d}{i}" for d in ("com", "lpt") for i in (*"0123456789", "¹", "²", "³")])


def _name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if len(name) > NAME_MAX_CHARS or len(name.encode("utf-8")) > NAME_MAX_BYTES:
        return "it is too long"
    if unicodedata.category(name[0])[0] not in "LN":
        return "it must start with a letter or digit"
    for char in name:
        if char not in "-_." and unicodedata.category(char)[0] not in "LNM":
            return f"{char!r} is not allowed"
    if name.endswith("."):
        return "it must not end with '.'"
    if name.split(".", 1)[0].lower() in _WINDOWS_DEVICES:
        return "it is a Windows device name"
    return None


def check_name(name: str, what: str = "model name") -> str:
    """The NFC form of ``name``, or a one-line :class:`RegistryError` if it breaks the rule.

    Every model name and alias passes through here wherever it enters the registry (creating,
    looking up, resolving, aliasing), so ``démo`` typed in NFC or NFD is one model, and a name
    is always a safe single path component under the artifact root (no ``.``, ``..``, ``/``,
    ``@``, spaces or control characters). Names compare byte-exactly on every back end.
    """
    if not isinstance(name, str):
        raise RegistryError(f"invalid {what} {name!r}: expected a string")
    normal = unicodedata.normalize("NFC", name)
    problem = _name_problem(normal)
    if problem:
        raise RegistryError(f"invalid {what} {name!r}: {problem}; a {what} is {NAME_RULE}")
    return normal


def check_model_name(name: str) -> str:
    """The NFC form of a model name, or a one-line :class:`RegistryError` (see check_name)."""
    return check_name(name, "model name")


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


def resolve_url(option: str | None = None, config: EngineConfig | None = None) -> str:
    """The registry URL of every command, the first of these that is given:

    1. ``option``: the command's ``--registry`` / ``--url`` (an empty one is an error, not the
       default used unasked);
    2. ``$RANKENGINE_REGISTRY_URL`` (an empty variable counts as unset);
    3. ``[registry] url`` of ``config`` when the command reads one;
    4. :data:`DEFAULT_URL`.

    A relative SQLite path from the config (or the default, when there is a config) is relative
    to the config file's directory; one from the option or the environment is relative to the
    working directory.
    """
    if option is not None:
        if not option.strip():
            raise RegistryError("empty registry URL (--registry / --url); give a URL or leave "
                                "the option out for the default")
        return option
    from_env = os.environ.get(URL_ENV)
    if from_env:
        return from_env
    if config is None:
        return DEFAULT_URL
    url = config.registry.url or DEFAULT_URL
    relative = url.startswith("sqlite:///") and not url.startswith("sqlite:////") \
        and url != "sqlite:///:memory:"
    if relative:
        return "sqlite:///" + str(config.resolve_path(url.removeprefix("sqlite:///")))
    return url


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi: Any, _record: Any) -> None:
            # pysqlite's own implicit BEGIN (deferred, and none before DDL) is switched off;
            # _sqlite_begin below starts every transaction instead.
            dbapi.isolation_level = None
            cursor = dbapi.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # A deferred transaction reads a snapshot and cannot upgrade to a writer once
            # another process has written since: read-modify-writes would work on stale data
            # or fail. Writing transactions take the write lock before their first read.
            immediate = conn.get_execution_options().get(WRITE)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

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
        # SQLite would create the file on connect: a typo'd URL must not leave one behind.
        missing = None if create_if_empty else _missing_sqlite_file(self.url)
        if missing is not None:
            raise no_registry(self.url, f"{missing} does not exist")
        try:
            self.engine = make_engine(self.url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise RegistryError(f"cannot open registry {self.url}: {_reason(exc)}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Sessions that write: on SQLite they begin with the write lock (BEGIN IMMEDIATE);
        # elsewhere the rows they read-modify-write are locked FOR UPDATE.
        self.write_engine = self.engine.execution_options(**{WRITE: True})
        self._write_sessions = sessionmaker(self.write_engine, expire_on_commit=False)
        if check_schema:
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
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """Commit on success, roll back on error, translate database errors.

        ``write=True`` for every transaction that changes rows: on SQLite it holds the write
        lock from its first statement, so what it reads is what it updates.
        """
        session = (self._write_sessions if write else self._sessions)()
        try:
            yield session
            session.commit()
        except RegistryError:
            session.rollback()
            raise
        except IntegrityError as exc:
            session.rollback()
            raise RegistryConflictError(f"registry conflict ({self.url}): "
                                        f"{_reason(exc)}") from exc
        except OperationalError as exc:
            session.rollback()
            error = RegistryBusyError if _retryable(exc) else RegistryError
            raise error(f"registry database error ({self.url}): {_reason(exc)}") from exc
        except SQLAlchemyError as exc:
            session.rollback()
            raise RegistryError(f"registry database error ({self.url}): "
                                f"{_reason(exc)}") from exc
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
        model = check_model_name(model)
        if parent_version is not None:
            self.get_version(model, parent_version)
        for attempt in range(200):
            try:
                with self.session(write=True) as s:
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
            except (RegistryConflictError, RegistryBusyError):
                # a lost race for the first version row, or a deadlock/lock timeout
                time.sleep(min(0.5, 0.005 * (attempt + 1)) * random.random())
        raise RegistryError(f"could not allocate a version of '{model}' after 200 attempts")

    def mark_ready(self, model: str, version: int, *, artifact_uri: str, artifact_sha256: str,
                   artifact_size: int, metrics: dict[str, Any]) -> ModelVersion:
        model = check_model_name(model)
        with self.session(write=True) as s:
            row = self._version_row(s, model, version, lock=True)
            if row.status != "pending":
                raise RegistryError(f"{model}/{version} is {row.status}, not pending")
            row.artifact_uri, row.artifact_sha256 = artifact_uri, artifact_sha256
            row.artifact_size, row.metrics, row.status = artifact_size, metrics, "ready"
            return _version(row, self._aliases_of(s, model, version))

    def set_status(self, model: str, version: int, status: str) -> ModelVersion:
        if status not in STATUSES:
            raise RegistryError(f"unknown status '{status}'; expected one of {STATUSES}")
        model = check_model_name(model)
        with self.session(write=True) as s:
            row = self._version_row(s, model, version, lock=True)
            row.status = status
            return _version(row, self._aliases_of(s, model, version))

    def fail_stale_pending(self, older_than: float) -> list[ModelVersion]:
        """Mark failed every version still pending ``older_than`` seconds after creation.

        A registration that was killed (SIGKILL, power loss) leaves its version pending
        forever; a live one finishes within minutes. Only rows still pending at the moment of
        the update change (a registration that completes meanwhile stays ready).
        """
        cutoff = _now() - timedelta(seconds=older_than)
        with self.session(write=True) as s:
            rows = s.scalars(_locked(select(SqlVersion).where(SqlVersion.status == "pending")
                                     .order_by(SqlVersion.model_name, SqlVersion.version),
                                     True)).all()
            stale = [r for r in rows if _aware(r.created_at) <= cutoff]
            for row in stale:
                row.status = "failed"
            return [_version(r, ()) for r in stale]

    def list_all_versions(self) -> list[ModelVersion]:
        """Every version of every model, without aliases."""
        with self.session() as s:
            query = select(SqlVersion).order_by(SqlVersion.model_name, SqlVersion.version)
            return [_version(r, ()) for r in s.scalars(query).all()]

    def patch_version(self, model: str, version: int, *, metrics: dict[str, Any] | None = None,
                      tags: dict[str, Any] | None = None) -> ModelVersion:
        """Set top-level keys of a version's ``metrics`` and ``tags`` in one transaction.

        A key whose value is None is removed. Nothing else (config, artifact, status) changes.
        The read-modify-write is atomic: the row is locked FOR UPDATE on PostgreSQL and
        MariaDB, and on SQLite the transaction holds the write lock before it reads.
        """
        model = check_model_name(model)
        with self.session(write=True) as s:
            row = self._version_row(s, model, version, lock=True)
            if metrics:
                row.metrics = _patched(row.metrics, metrics)  # a new dict: JSON change tracked
            if tags:
                row.tags = _patched(row.tags, tags)
            s.flush()
            return _version(row, self._aliases_of(s, model, version))

    def get_version(self, model: str, version: int) -> ModelVersion:
        model = check_model_name(model)
        with self.session() as s:
            row = self._version_row(s, model, version)
            return _version(row, self._aliases_of(s, model, version))

    def list_versions(self, model: str) -> list[ModelVersion]:
        model = check_model_name(model)
        with self.session() as s:
            self._model_row(s, model)
            rows = s.scalars(select(SqlVersion).where(SqlVersion.model_name == model)
                             .order_by(SqlVersion.version)).all()
            aliases = self._alias_map(s, model)
            return [_version(r, tuple(a for a, v in aliases.items() if v == r.version))
                    for r in rows]

    def delete_version(self, model: str, version: int) -> ModelVersion:
        """Delete a version's row; refused while an alias points at it.

        Serialised with alias moves: both lock the model row first, and a foreign key from
        the alias to the version makes a dangling alias impossible in any case.
        """
        model = check_model_name(model)
        with self.session(write=True) as s:
            self._model_row(s, model, lock=True)
            row = self._version_row(s, model, version, lock=True)
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
        name = check_model_name(name)
        with self.session() as s:
            return _model(self._model_row(s, name), self._alias_map(s, name))

    # -- aliases ----------------------------------------------------------------------------

    def set_alias(self, model: str, alias: str, version: int, *, reason: str = "",
                  moved_by: str | None = None) -> AliasMove:
        model, alias = check_model_name(model), check_name(alias, "alias")
        with self.session(write=True) as s:
            self._model_row(s, model, lock=True)  # one alias move or delete at a time
            row = self._version_row(s, model, version, lock=True)
            if row.status != "ready":
                raise RegistryError(f"{model}/{version} is {row.status}; only ready versions "
                                    f"can carry an alias")
            current = self._alias_row(s, model, alias)
            previous = current.version if current else None
            if current is None:
                s.add(SqlAlias(model_name=model, alias=alias, version=version))
            else:
                current.version = version
            move = SqlAliasMove(model_name=model, alias=alias, from_version=previous,
                                to_version=version, moved_at=_now(),
                                moved_by=moved_by or _user(), reason=reason)
            s.add(move)
            s.flush()
            return _move(move)

    def delete_alias(self, model: str, alias: str, *, reason: str = "") -> AliasMove:
        model, alias = check_model_name(model), check_name(alias, "alias")
        with self.session(write=True) as s:
            self._model_row(s, model, lock=True)
            current = self._alias_row(s, model, alias)
            if current is None:
                raise NotFoundError(self._unknown_alias(s, model, alias))
            move = SqlAliasMove(model_name=model, alias=alias, from_version=current.version,
                                to_version=None, moved_at=_now(), moved_by=_user(),
                                reason=reason)
            s.delete(current)
            s.add(move)
            s.flush()
            return _move(move)

    def alias_history(self, model: str, alias: str | None = None) -> list[AliasMove]:
        model = check_model_name(model)
        with self.session() as s:
            query = select(SqlAliasMove).where(SqlAliasMove.model_name == model)
            if alias is not None:
                query = query.where(SqlAliasMove.alias == check_name(alias, "alias"))
            return [_move(m) for m in s.scalars(query.order_by(SqlAliasMove.id)).all()]

    def rollback(self, model: str, alias: str) -> AliasMove:
        """Undo the latest move of ``alias`` that is not itself undone; repeatable."""
        model, alias = check_model_name(model), check_name(alias, "alias")
        with self.session(write=True) as s:
            self._model_row(s, model, lock=True)
            current = self._alias_row(s, model, alias)
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
            target = self._version_row(s, model, undo[-1], lock=True)
            if target.status != "ready":
                raise RegistryError(f"cannot roll back to {model}/{target.version}: it is "
                                    f"{target.status}")
            move = SqlAliasMove(model_name=model, alias=alias, from_version=current.version,
                                to_version=target.version, moved_at=_now(), moved_by=_user(),
                                reason=f"{ROLLBACK} {current.version}")
            current.version = target.version
            s.add(move)
            s.flush()
            return _move(move)

    def resolve(self, ref: str) -> ModelVersion:
        """``name@alias``, ``name/3`` or ``name`` (the latest ready version)."""
        if "@" in ref:
            model, alias = ref.split("@", 1)
            model, alias = check_model_name(model), check_name(alias, "alias")
            with self.session() as s:
                row = self._alias_row(s, model, alias)
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
            raise NotFoundError(f"model '{check_model_name(ref)}' has no ready version")
        return ready[-1]

    # -- helpers ----------------------------------------------------------------------------
    # Names reaching these are already NFC and valid (checked by the public methods).

    def _model_row(self, s: Session, name: str, *, lock: bool = False) -> SqlModel:
        row = s.scalars(_locked(select(SqlModel).where(SqlModel.name == name), lock)).first()
        if row is None:
            names = list(s.scalars(select(SqlModel.name)).all())
            from rankengine.errors import suggest

            raise NotFoundError(f"no model named '{name}' in {self.url}; models: "
                                f"{', '.join(names) or '(none)'}{suggest(name, names)}")
        return row

    def _version_row(self, s: Session, model: str, version: int, *,
                     lock: bool = False) -> SqlVersion:
        self._model_row(s, model)
        row = s.scalars(_locked(select(SqlVersion).where(SqlVersion.model_name == model,
                                                         SqlVersion.version == version),
                                lock)).first()
        if row is None:
            raise NotFoundError(f"model '{model}' has no version {version}")
        return row

    def _alias_row(self, s: Session, model: str, alias: str) -> SqlAlias | None:
        return s.scalars(select(SqlAlias).where(SqlAlias.model_name == model,
                                                SqlAlias.alias == alias)).first()

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


_Query = TypeVar("_Query", bound="Select[Any]")


def _locked(query: _Query, lock: bool) -> _Query:
    """``query`` locking its rows FOR UPDATE (and re-reading them) when ``lock``."""
    return query.with_for_update().execution_options(populate_existing=True) if lock else query


def _missing_sqlite_file(url: str) -> str | None:
    """The database file a ``sqlite:///`` URL names, when it does not exist yet."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # make_engine reports the malformed URL
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database or database == ":memory:" \
            or database.startswith("file:"):
        return None
    return None if os.path.exists(database) else os.path.abspath(database)


def _retryable(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(t in text for t in ("locked", "busy", "deadlock", "serialize", "lock wait"))


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

