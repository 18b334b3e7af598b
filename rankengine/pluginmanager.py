"""Finds plugins through the ``rankengine`` entry-point group, loads the enabled ones, and fills
the component tables by calling their registration hooks.

Built-ins take exactly this path: they are entry points of the ``rankengine`` distribution.
Entry points are only imported when enabled, so a broken third-party package that is not
enabled cannot break a run. Two environment variables restrict third-party code further:
``RANKENGINE_DISABLE_PLUGIN_AUTOLOAD=1`` imports no third-party entry point at all, and
``RANKENGINE_PLUGINS=a,b`` is an allow-list (the only third-party plugins that may be imported,
even with autoload disabled).
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import inspect
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from rankengine import hookspecs
from rankengine.components import Components, ComponentTable, Register
from rankengine.errors import PluginError, suggest

if TYPE_CHECKING:
    import click

    from rankengine.bundle import TrainContext, TrainResult
    from rankengine.config import EngineConfig, TaskSpec

BUILTIN_DISTRIBUTION = "rankengine"
BUILTIN_ALIAS = "builtin"
IN_PROCESS = "in-process"
TRACE_ENV = "RANKENGINE_TRACE"
#: Set to a non-empty value other than 0/false/no: no third-party entry point is imported.
DISABLE_AUTOLOAD_ENV = "RANKENGINE_DISABLE_PLUGIN_AUTOLOAD"
#: Comma-separated allow-list: the only third-party plugins that may be imported.
ALLOW_ENV = "RANKENGINE_PLUGINS"

# Registration hook name → attribute of Components it fills.
REGISTRATION_HOOKS: dict[str, str] = {
    "rankengine_register_encoders": "encoders",
    "rankengine_register_task_graphs": "task_graphs",
    "rankengine_register_interactions": "interactions",
    "rankengine_register_backbones": "backbones",
    "rankengine_register_towers": "towers",
    "rankengine_register_cascades": "cascades",
    "rankengine_register_losses": "losses",
    "rankengine_register_loss_weightings": "loss_weightings",
    "rankengine_register_sample_weightings": "sample_weightings",
    "rankengine_register_fusions": "fusions",
    "rankengine_register_calibrators": "calibrators",
    "rankengine_register_metrics": "metrics",
    "rankengine_register_sources": "sources",
    "rankengine_register_backends": "backends",
    "rankengine_register_config_tables": "config_tables",
}

#: What changed since hook API 1.x, said when a 1.x plugin is refused.
API_2_CHANGES = (
    "cascades are nn.Modules (build/forward/auxiliary_loss) and the model's forward takes a "
    "ModelInput without labels; losses are PointwiseLoss objects with a link and task_types; "
    "encoder outputs are ids/dense/id_list; metrics declare direction and label; fusions "
    "expose weights()/with_weights(); see the migration section of docs/plugins.md"
)


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


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def check_trusted(plugins: Sequence[PluginInfo]) -> None:
    """Refuse third-party plugins that the environment does not allow to be imported.

    ``RANKENGINE_PLUGINS`` (comma-separated names), when set, is the allow-list; otherwise
    ``RANKENGINE_DISABLE_PLUGIN_AUTOLOAD`` allows none; otherwise every enabled plugin is allowed.
    Built-ins ship inside rankengine itself and are always allowed.
    """
    raw = os.environ.get(ALLOW_ENV)
    if raw is None and not _env_flag(DISABLE_AUTOLOAD_ENV):
        return
    allowed = {n.strip() for n in (raw or "").split(",") if n.strip()}
    for info in plugins:
        if info.origin == "built-in" or info.name in allowed:
            continue
        if raw is not None:
            why = f"{ALLOW_ENV}={raw!r} does not list it"
            fix = f"add it to {ALLOW_ENV}"
        else:
            why = f"{DISABLE_AUTOLOAD_ENV} is set"
            fix = f"allow it with {ALLOW_ENV}={info.name} or unset {DISABLE_AUTOLOAD_ENV}"
        raise PluginError(
            f"plugin '{info.name}' ({info.distribution} {info.version}) is enabled but not "
            f"imported: {why}; {fix}"
        )


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
        try:
            hash(plugin)
        except TypeError:  # pluggy keys plugins by identity in sets (subset callers)
            raise PluginError(
                f"plugin '{info.name}' is an unhashable {type(plugin).__name__}; register a "
                f"module or an instance of a class") from None
        _check_api_version(info.name, plugin)
        _check_unmarked_hooks(info.name, plugin)
        try:
            self.pm.register(plugin, name=info.name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(_explain_invalid(info.name, plugin, exc)) from exc
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
        """Call this plugin's registration hooks only, through pluggy's subset callers (so
        tracing and hook wrappers see them), each with a ``register`` bound to its table."""
        others = [p for name, p in self.pm.list_name_plugin() if name != plugin_name]
        for hook_name, attr in REGISTRATION_HOOKS.items():
            table: ComponentTable[Any] = getattr(self.components, attr)
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            if not caller.get_hookimpls():
                continue
            with _naming_plugin(caller, hook_name):
                caller(register=Register(table, plugin_name))

    def plugin_versions(self) -> dict[str, str]:
        return {name: p.info.version for name, p in sorted(self.plugins.items())}

    def plugin_distributions(self) -> dict[str, str]:
        """Plugin name → the distribution (pip package) that provides it."""
        return {name: p.info.distribution for name, p in sorted(self.plugins.items())}

    @property
    def hooks(self) -> Hooks:
        """The typed facade: one method per non-registration hook."""
        return Hooks(self.pm)


class Hooks:
    """One typed method per non-registration hook; each calls ``pm.hook.<name>`` and turns a
    plugin's exception into a :class:`PluginError` naming the plugin and the hook."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm

    def _call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        caller = getattr(self._pm.hook, hook_name)
        with _naming_plugin(caller, hook_name):
            result: list[Any] = caller(**kwargs)
        return result

    def modify_task_graph(self, tasks: dict[str, TaskSpec], config: EngineConfig) -> None:
        self._call("rankengine_modify_task_graph", tasks=tasks, config=config)

    def before_train(self, context: TrainContext) -> None:
        self._call("rankengine_before_train", context=context)

    def after_epoch(self, context: TrainContext, epoch: int, metrics: dict[str, Any]) -> None:
        self._call("rankengine_after_epoch", context=context, epoch=epoch, metrics=metrics)

    def after_train(self, context: TrainContext, result: TrainResult) -> None:
        self._call("rankengine_after_train", context=context, result=result)

    def register_commands(self, cli: click.Group) -> None:
        self._call("rankengine_register_commands", cli=cli)


@contextmanager
def _naming_plugin(caller: Any, hook_name: str) -> Iterator[None]:
    """A plugin's exception inside a hook call → PluginError naming that plugin: the plugin is
    the one whose implementation's code object is on the traceback."""
    try:
        yield
    except PluginError:
        raise
    except Exception as exc:
        codes = {getattr(impl.function, "__code__", None): impl.plugin_name
                 for impl in caller.get_hookimpls()}
        plugin = None
        tb = exc.__traceback__
        while tb is not None:
            plugin = codes.get(tb.tb_frame.f_code, plugin)
            tb = tb.tb_next
        who = f"plugin '{plugin}'" if plugin else "a plugin"
        raise PluginError(f"{who} failed in hook {hook_name}: {type(exc).__name__}: {exc}") \
            from exc


def _api_version(text: str) -> tuple[int, int] | None:
    parts = text.strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def _check_api_version(name: str, plugin: Any) -> None:
    """A plugin declaring ``RANKENGINE_HOOK_API = "M.m"`` needs the same major version M and
    a minor version of at least m (minor versions only add hooks and arguments)."""
    wanted = getattr(plugin, "RANKENGINE_HOOK_API", None)
    if wanted is None:
        return
    have_text = hookspecs.HOOK_API_VERSION
    have = _api_version(have_text)
    need = _api_version(str(wanted)) if isinstance(wanted, str) else None
    assert have is not None
    if need is None:
        raise PluginError(
            f"plugin '{name}' declares RANKENGINE_HOOK_API = {wanted!r}; expected a string "
            f"'MAJOR.MINOR' such as '{have_text}'"
        )
    if need[0] == have[0] and need[1] <= have[1]:
        return
    if need[0] < have[0] and need[0] == 1:
        raise PluginError(
            f"plugin '{name}' was built for rankengine hook API {wanted}; this rankengine "
            f"provides {have_text}, which changed: {API_2_CHANGES}; install a version of the "
            f"plugin built for hook API {have[0]}.x")
    if need > have:
        fix = f"upgrade rankengine to one providing hook API {need[0]}.{need[1]} or later"
    else:
        fix = f"install a version of the plugin built for hook API {have[0]}.x"
    raise PluginError(
        f"plugin '{name}' needs rankengine hook API {wanted}, but this rankengine provides "
        f"{have_text}; {fix}"
    )


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith(f"{hookspecs.PROJECT}_")]


def _check_unmarked_hooks(name: str, plugin: Any) -> None:
    """A ``rankengine_*`` function without ``@hookimpl`` would silently never be called."""
    for attr in dir(plugin):
        if not attr.startswith(f"{hookspecs.PROJECT}_"):
            continue
        value = getattr(plugin, attr, None)
        if callable(value) and not hasattr(value, f"{hookspecs.PROJECT}_impl"):
            raise PluginError(
                f"plugin '{name}' defines {attr} without @rankengine.hookimpl, so it would "
                f"never be called; decorate it with @hookimpl"
            )


def _explain_invalid(name: str, plugin: Any, exc: pluggy.PluginValidationError) -> str:
    """Turn pluggy's validation errors into one line with the fix (and a close match)."""
    hooks = _hook_names()
    for attr in dir(plugin):
        if not attr.startswith(f"{hookspecs.PROJECT}_") or attr in hooks:
            continue
        if hasattr(getattr(plugin, attr, None), f"{hookspecs.PROJECT}_impl"):
            return (f"plugin '{name}' implements unknown hook {attr}{suggest(attr, hooks)} "
                    f"(hooks are listed in docs/plugins.md)")
    for hook in hooks:
        impl = getattr(plugin, hook, None)
        if impl is None or not callable(impl):
            continue
        spec_args = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        impl_args = [p for p in inspect.signature(impl).parameters if p != "self"]
        extra = [a for a in impl_args if a not in spec_args]
        if extra:
            return (f"plugin '{name}': hook {hook} has no argument '{extra[0]}'"
                    f"{suggest(extra[0], spec_args)}; the hook is "
                    f"{hook}({', '.join(spec_args)})")
    detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"plugin '{name}' is invalid: {detail}"


def check_model_plugins(recorded: dict[str, str], distributions: dict[str, str] | None = None,
                        available: dict[str, PluginInfo] | None = None) -> None:
    """Check that the plugins a model was trained with are installed in a compatible version.

    ``recorded`` is plugin name → version (an artifact's manifest, a registry version);
    ``distributions`` plugin name → pip package, when recorded. A plugin that is missing, or
    installed with another major version, is refused, naming every such plugin and the
    ``pip install`` command that brings the recorded version back.
    """
    available = discover_plugins() if available is None else available
    distributions = distributions or {}
    problems: list[str] = []
    installs: dict[str, str] = {}
    for name, version in sorted(recorded.items()):
        found = available.get(name)
        dist = distributions.get(name) or (found.distribution if found else None)
        if dist == IN_PROCESS:
            if found is None:
                problems.append(f"'{name}' was an in-process plugin when the model was trained; "
                                f"pass an engine that has it")
            continue
        if found is not None and _major(found.version) == _major(version):
            continue
        if found is None:
            problems.append(f"'{name}' {version} is not installed")
        else:
            problems.append(f"'{name}' is installed in version {found.version} "
                            f"({found.distribution}), the model needs {version}")
        if dist is not None:
            installs[dist] = version
        else:
            problems[-1] += " (install the package that provides this rankengine plugin)"
    if problems:
        fix = ""
        if installs:
            fix = "; install them with: pip install " + " ".join(
                f"{d}=={v}" for d, v in sorted(installs.items()))
        raise PluginError(
            f"the model needs plugins that are not available: "
            f"{'; '.join(problems)}{fix}"
        )


def _major(version: str) -> str:
    head = version.split(".")[0]
    digits = "".join(ch for ch in head if ch.isdigit()) if head[:1].isdigit() else head
    return digits or version


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
    selected = resolve_enabled(enabled, disabled, available)
    check_trusted(selected)
    for info in selected:
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
        engine.add_plugin(PluginInfo(name, repr(plugin), IN_PROCESS, "0"), plugin)
    return engine
