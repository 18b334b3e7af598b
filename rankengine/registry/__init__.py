"""The SQL model registry: versions, aliases with history, artifacts with checksums."""

from rankengine.registry.store import (
    AliasMove,
    ModelVersion,
    NotFoundError,
    RegisteredModel,
    RegistryBusyError,
    RegistryError,
    RegistryStore,
    SchemaOutOfDateError,
)

__all__ = [
    "AliasMove",
    "ModelVersion",
    "NotFoundError",
    "RegisteredModel",
    "RegistryBusyError",
    "RegistryError",
    "RegistryStore",
    "SchemaOutOfDateError",
]
