"""The registry's errors, and the one-line texts shared by the store and the migrations."""

from __future__ import annotations

from rankengine.errors import RankEngineError, one_line


class RegistryError(RankEngineError):
    """The registry refused an operation or the database failed."""


class NotFoundError(RegistryError):
    """No such model, version or alias."""


class RegistryBusyError(RegistryError):
    """A lock race or deadlock the database gave up on; the operation may be retried."""


class SchemaOutOfDateError(RegistryError):
    """The database schema is behind the code; ``rankengine db upgrade`` fixes it."""


class RegistryConflictError(RegistryError):
    """A write broke a uniqueness or foreign-key rule (a lost race, or a row deleted meanwhile)."""


def no_registry(url: str, detail: str = "") -> NotFoundError:
    """The error for a database that holds no registry where one must exist already.

    Only ``rankengine train`` and ``rankengine db upgrade`` create a registry; every command
    that reads one refuses a database without it (and never creates a SQLite file).
    """
    return NotFoundError(f"{url} holds no registry yet{f' ({detail})' if detail else ''}; train a "
                         f"model first, pass --registry URL, or create it with: rankengine db "
                         f"upgrade --url '{url}'")


def reason(exc: BaseException) -> str:
    """The driver's own message on one line, e.g. ``OperationalError: connection refused``."""
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__name__}: {one_line(str(cause))}"


__all__ = [
    "NotFoundError",
    "RegistryBusyError",
    "RegistryConflictError",
    "RegistryError",
    "SchemaOutOfDateError",
    "no_registry",
    "reason",
]
