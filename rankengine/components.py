"""Typed name tables for everything plugins contribute.

The core owns each table: a registration hook receives a :class:`Register` bound to one table and
one plugin, so duplicates are caught with both plugins named and unknown names are answered with
the available ones and a close match. The interfaces the registered components implement are in
:mod:`rankengine.interfaces`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from rankengine.errors import (
    ConfigError,
    PluginError,
    UnknownComponentError,
    unknown_name_message,
)

if TYPE_CHECKING:
    from rankengine.backend import ServingBackend
    from rankengine.data.source import DataSource
    from rankengine.interfaces import (
        BackboneFactory,
        CalibratorFactory,
        CascadeFactory,
        EncoderFactory,
        FusionFactory,
        InteractionFactory,
        LossFactory,
        LossWeightingFactory,
        Metric,
        SampleWeightingFactory,
        TaskGraphTemplate,
        TowerFactory,
    )


class Params(BaseModel):
    """Base for a component's parameters: unknown keys are errors, values are type-checked."""

    # A non-finite parameter is always a mistake; refusing it here covers third-party plugins.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoParams(Params):
    """A component that takes no parameters."""


F = TypeVar("F")

#: ``kind = "default"`` (and a kind left out) means the family's registered default; the
#: planner writes the concrete name into the config, so a saved model records what it used.
DEFAULT_KIND = "default"


@dataclass(frozen=True)
class Component(Generic[F]):
    """One registered component: its factory, its parameter model and who registered it."""

    family: str
    name: str
    factory: F
    params: type[Params]
    plugin: str
    help: str = ""
    default: bool = False

    def parse_params(self, raw: Mapping[str, Any]) -> Params:
        return self.params.model_validate(dict(raw))


class ComponentTable(Generic[F]):
    """Name → component for one family (backbones, towers, ...)."""

    def __init__(self, family: str, singular: str) -> None:
        self.family = family
        self.singular = singular
        self._items: dict[str, Component[F]] = {}

    def add(self, component: Component[F]) -> None:
        if not component.name or not component.name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(
                f"plugin '{component.plugin}' registered {self.singular} name "
                f"{component.name!r}; names must be non-empty letters, digits, '_' or '-'"
            )
        existing = self._items.get(component.name)
        if existing is not None:
            raise PluginError(
                f"{self.singular} '{component.name}' is registered twice: by plugin "
                f"'{existing.plugin}' and by plugin '{component.plugin}'; disable one of them "
                f"in [engine] disable or rename the component"
            )
        self._items[component.name] = component

    def get(self, name: str, *, key: str | None = None, source: str | None = None) -> Component[F]:
        if name == DEFAULT_KIND and name not in self._items:
            return self.default(key=key, source=source)
        try:
            return self._items[name]
        except KeyError:
            raise UnknownComponentError(
                unknown_name_message(self.singular, name, self._items), source=source, key=key
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Component[F]]:
        return iter(sorted(self._items.values(), key=lambda c: c.name))

    def names(self) -> list[str]:
        return sorted(self._items)

    def defaults(self) -> list[Component[F]]:
        """The components registered with ``default=True`` (used where the config names none)."""
        return [c for c in self if c.default]

    def default(self, *, key: str | None = None, source: str | None = None) -> Component[F]:
        """The one default of this family; a config error naming ``key`` if there is none or
        several (then the config must name one)."""
        found = self.defaults()
        if len(found) == 1:
            return found[0]
        if not found:
            why = f"no enabled plugin registers a default {self.singular}"
        else:
            why = (f"{len(found)} {self.family} are registered as the default (" +
                   ", ".join(f"'{c.name}' by plugin '{c.plugin}'" for c in found) + ")")
        raise ConfigError(f"expected a {self.singular} name: {why}; available: "
                          f"{', '.join(self.names()) or '(nothing)'}", source=source, key=key)


class Register(Generic[F]):
    """The ``register`` object a registration hook receives.

    Call it once per component: ``register("mmoe", build_mmoe, params=MMoEParams, help="...")``.
    """

    def __init__(self, table: ComponentTable[F], plugin: str) -> None:
        self._table = table
        self._plugin = plugin

    @property
    def family(self) -> str:
        return self._table.family

    def __repr__(self) -> str:  # what RANKENGINE_TRACE=1 prints for the argument
        return f"<register {self._table.family} for plugin '{self._plugin}'>"

    def __call__(
        self, name: str, factory: F, *, params: type[Params] = NoParams, help: str = "",
        default: bool = False,
    ) -> None:
        """Add ``name``. ``default=True`` makes it the family's choice where the config names
        none (a loss is the default for the task types it fits)."""
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise PluginError(
                f"plugin '{self._plugin}' registered {self._table.singular} '{name}' with "
                f"params={params!r}; expected a subclass of rankengine.Params"
            )
        self._table.add(Component(self._table.family, name, factory, params, self._plugin, help,
                                  bool(default)))


class Components:
    """All name tables, filled by the registration hooks of the enabled plugins."""

    def __init__(self) -> None:
        self.encoders: ComponentTable[EncoderFactory] = ComponentTable(
            "encoders", "feature encoder")
        self.task_graphs: ComponentTable[TaskGraphTemplate] = ComponentTable(
            "task_graphs", "task graph template")
        self.interactions: ComponentTable[InteractionFactory] = ComponentTable(
            "interactions", "sequence interaction")
        self.backbones: ComponentTable[BackboneFactory] = ComponentTable("backbones", "backbone")
        self.towers: ComponentTable[TowerFactory] = ComponentTable("towers", "tower")
        self.cascades: ComponentTable[CascadeFactory] = ComponentTable("cascades", "cascade")
        self.losses: ComponentTable[LossFactory] = ComponentTable("losses", "loss")
        self.loss_weightings: ComponentTable[LossWeightingFactory] = ComponentTable(
            "loss_weightings", "loss weighting")
        self.sample_weightings: ComponentTable[SampleWeightingFactory] = ComponentTable(
            "sample_weightings", "sample weighting")
        self.fusions: ComponentTable[FusionFactory] = ComponentTable("fusions", "fusion")
        self.calibrators: ComponentTable[CalibratorFactory] = ComponentTable(
            "calibrators", "calibrator")
        self.metrics: ComponentTable[Metric] = ComponentTable("metrics", "metric")
        self.sources: ComponentTable[type[DataSource]] = ComponentTable(
            "sources", "data source")
        self.backends: ComponentTable[type[ServingBackend]] = ComponentTable(
            "backends", "serving back end")
        self.config_tables: ComponentTable[type[BaseModel]] = ComponentTable(
            "config_tables", "plugin config table")

    def tables(self) -> list[ComponentTable[Any]]:
        return [t for t in vars(self).values() if isinstance(t, ComponentTable)]
