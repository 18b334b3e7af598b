"""Finds plugins through the ``rankengine`` entry-point group, loads the enabled ones, and fills
the component tables by calling their registration hooks.

Built-ins take exactly this path: they are entry points of the ``rankengine`` distribution.
Entry points are only imported when enabled, so a broken third-party package that is not
enabled cannot break a run.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import inspect
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from rankengine import hookspecs
from rankengine.components import Components, ComponentTable, Register
from rankengine.errors import PluginError, suggest

BUILTIN_DISTRIBUTION = "rankengine"
BUILTIN_ALIAS = "builtin"
TRACE_ENV = "RANKENGINE_TRACE"

# Registration hook name → attribute of Components it fills.
REGISTRATION_HOOKS: dict[str, str] = {
    "rankengine_register_encoders": "encoders",
    "rankengine_register_task_graphs": "task_graphs",
    "rankengine_register_backbones": "backbones",
    "rankengine_register_towers": "towers",
    "rankengine_register_cascades": "cascades",
    "rankengine_register_losses": "losses",
    "rankengine_register_loss_weightings": "loss_weightings",
    "rankengine_register_sample_weightings": "sample_weightings",
    "rankengine_register_fusions": "fusions",
    "rankengine_register_metrics": "metrics",
}


@dataclass(frozen=True)
class PluginInfo:
    """What is known about a plugin without importing it."""

    name: str
    module: str
    distribution: str
    version: str

    @property
    def origin(self) -> str:
        return "built-in" if self.distribution == BUILTIN_DISTRIBUTION else "third-party"


def discover_plugins() -> dict[str, PluginInfo]:
    """All plugins installed in the ``rankengine`` entry-point group (nothing is imported)."""
    found: dict[str, PluginInfo] = {}
    for ep in importlib_metadata.entry_points(group=hookspecs.PROJECT):
        dist = ep.dist
        info = PluginInfo(
            name=ep.name,
            module=ep.value,
            distribution=dist.name if dist is not None else "unknown",
            version=dist.version if dist is not None else "unknown",
        )
        previous = found.get(ep.name)
        if previous is not None and previous.module != info.module:
            raise PluginError(
                f"two installed packages claim plugin name '{ep.name}': "
                f"{previous.distribution} ({previous.module}) and {info.distribution} "
                f"({info.module}); uninstall one of them"
            )
        found[ep.name] = info
    return found


def resolve_enabled(
    enabled: Sequence[str], disabled: Sequence[str], available: dict[str, PluginInfo]
) -> list[PluginInfo]:
    """Expand ``builtin`` and check every name, answering typos with the available names."""
    builtin = [p.name for p in available.values() if p.origin == "built-in"]
    names: list[str] = []
    for name in enabled:
        expanded = sorted(builtin) if name == BUILTIN_ALIAS else [name]
        for item in expanded:
            if item not in available:
                choices = sorted([*available, BUILTIN_ALIAS])
                raise PluginError(
                    f"plugin '{item}' is not installed; installed plugins: "
                    f"{', '.join(choices)}{suggest(item, choices)}"
                )
            if item not in names:
                names.append(item)
    for name in disabled:
        if name not in available:
            raise PluginError(
                f"cannot disable plugin '{name}': it is not installed{suggest(name, available)}"
            )
    return [available[n] for n in names if n not in disabled]


@dataclass
class LoadedPlugin:
    info: PluginInfo
    module: Any
    hooks: list[str] = field(default_factory=list)


class Engine:
    """A plugin manager with its filled component tables and a typed facade over the hooks."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.components = Components()
        self.plugins: dict[str, LoadedPlugin] = {}
        if os.environ.get(TRACE_ENV):
            self.pm.trace.root.setwriter(lambda msg: sys.stderr.write(f"[rankengine] {msg}"))
            self.pm.enable_tracing()

    # -- loading ---------------------------------------------------------------------------

    def add_plugin(self, info: PluginInfo, plugin: Any) -> None:
        """Register an imported plugin object (a module or an instance) under ``info.name``."""
        if inspect.isclass(plugin):
            raise PluginError(
                f"plugin '{info.name}' is the class {plugin.__qualname__}; register a module "
                f"or an instance of it"
            )
        _check_api_version(info.name, plugin)
        try:
            self.pm.register(plugin, name=info.name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=info.name)
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise PluginError(f"plugin '{info.name}' is invalid: {detail}") from exc
        except ValueError as exc:
            raise PluginError(f"plugin '{info.name}': {exc}") from exc
        hooks = sorted(
            caller.name
            for caller in self.pm.get_hookcallers(plugin) or []
            if caller.name.startswith("rankengine_")
        )
        self.plugins[info.name] = LoadedPlugin(info, plugin, hooks)
        self._register_components(info.name)

    def _register_components(self, plugin_name: str) -> None:
        for hook_name, attr in REGISTRATION_HOOKS.items():
            table: ComponentTable[Any] = getattr(self.components, attr)
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue
                try:
                    impl.function(register=Register(table, plugin_name))
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"plugin '{plugin_name}' failed in hook {hook_name}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc

    def plugin_versions(self) -> dict[str, str]:
        return {name: p.info.version for name, p in sorted(self.plugins.items())}

    # -- typed facade over the non-registration hooks -----------------------------------------

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a hook, naming the plugin when one of its implementations raises."""
        caller = getattr(self.pm.hook, hook_name)
        results = []
        for impl in reversed(caller.get_hookimpls()):
            args = {k: v for k, v in kwargs.items() if k in impl.argnames}
            try:
                results.append(impl.function(**args))
            except Exception as exc:
                raise PluginError(
                    f"plugin '{impl.plugin_name}' failed in hook {hook_name}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        return results


def _check_api_version(name: str, plugin: Any) -> None:
    wanted = getattr(plugin, "RANKENGINE_HOOK_API", None)
    if wanted is None:
        return
    have_major = hookspecs.HOOK_API_VERSION.split(".")[0]
    if str(wanted).split(".")[0] != have_major:
        raise PluginError(
            f"plugin '{name}' needs rankengine hook API {wanted}, but this rankengine provides "
            f"{hookspecs.HOOK_API_VERSION}; install a version of the plugin built for "
            f"API {have_major}.x"
        )


def load_engine(
    enabled: Sequence[str] = (BUILTIN_ALIAS,),
    disabled: Sequence[str] = (),
    extra: Iterable[tuple[str, Any]] = (),
) -> Engine:
    """Build an :class:`Engine` with the enabled entry-point plugins plus ``extra`` objects.

    ``extra`` is ``(name, plugin)`` pairs registered in-process (tests, notebooks).
    """
    engine = Engine()
    available = discover_plugins()
    for info in resolve_enabled(enabled, disabled, available):
        try:
            module: ModuleType = importlib_metadata.EntryPoint(
                name=info.name, value=info.module, group=hookspecs.PROJECT
            ).load()
        except Exception as exc:
            raise PluginError(
                f'error importing plugin "{info.name}" ({info.distribution} {info.version}, '
                f"module {info.module}): {type(exc).__name__}: {exc}"
            ) from exc
        engine.add_plugin(info, module)
    for name, plugin in extra:
        engine.add_plugin(PluginInfo(name, repr(plugin), "in-process", "0"), plugin)
    return engine
