"""The SQL model registry: versions, aliases with history, artifacts with checksums."""

from rankengine.registry.errors import (
    NotFoundError,
    RegistryBusyError,
    RegistryConflictError,
    RegistryError,
    SchemaOutOfDateError,
)
from rankengine.registry.store import (
    AliasMove,
    ModelVersion,
    RegisteredModel,
    RegistryStore,
    check_model_name,
    check_name,
    resolve_url,
)

__all__ = [
    "AliasMove",
    "ModelVersion",
    "NotFoundError",
    "RegisteredModel",
    "RegistryBusyError",
    "RegistryConflictError",
    "RegistryError",
    "RegistryStore",
    "SchemaOutOfDateError",
    "check_model_name",
    "check_name",
    "resolve_url",
]
