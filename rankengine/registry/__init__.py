"""The SQL model registry: versions, aliases with history, artifacts with checksums."""

from rankengine.registry.store import (
    AliasMove,
    ModelVersion,
    NotFoundError,
    RegisteredModel,
    RegistryBusyError,
    RegistryConflictError,
    RegistryError,
    RegistryStore,
    SchemaOutOfDateError,
    check_model_name,
    check_name,
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
]
