from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from rankengine import HOOK_API_VERSION, Params, hookimpl
from rankengine.errors import PluginError
from rankengine.pluginmanager import (
    PluginInfo,
    check_model_plugins,
    discover_plugins,
    load_engine,
    resolve_enabled,
)

from .conftest import tiny_config_text

BUILTINS = {"backbones", "backends", "calibrators", "cascades", "encoders", "fusion",
            "interactions", "losses", "metrics",
            "progress", "sources",
            "task_graphs", "towers", "weighting"}


def plugin(name: str, **hooks: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, value in hooks.items():
        setattr(module, attr, value)
    return module


def test_builtins_come_from_entry_points() -> None:
    found = discover_plugins()
    assert set(found) >= BUILTINS
    assert all(found[n].origin == "built-in" for n in BUILTINS)
    assert found["cascades"].module == "rankengine_plugins.cascades"


def test_only_enabled_plugins_are_loaded() -> None:
    engine = load_engine(["builtin"], ["progress", "fusion"])
    assert "progress" not in engine.plugins and "fusion" not in engine.plugins
    assert engine.components.fusions.names() == []
    only = load_engine(["backbones"])
    assert set(only.plugins) == {"backbones"}
    assert only.components.cascades.names() == []


def test_unknown_plugin_name_suggests() -> None:
    with pytest.raises(PluginError, match=r"plugin 'cascade' is not installed.*did you mean "
                                          r"'cascades'"):
        resolve_enabled(["cascade"], [], discover_plugins())
    with pytest.raises(PluginError, match="cannot disable plugin 'progres'"):
        resolve_enabled(["builtin"], ["progres"], discover_plugins())


def test_duplicate_component_names_both_plugins() -> None:
    @hookimpl
    def rankengine_register_backbones(register):  # type: ignore[no-untyped-def]
        register("mmoe", lambda params, **kw: None)

    with pytest.raises(PluginError, match=r"backbone 'mmoe' is registered twice: by plugin "
                                          r"'backbones' and by plugin 'mine'"):
        load_engine(["backbones"], extra=[("mine", plugin(
            "mine", rankengine_register_backbones=rankengine_register_backbones))])


def test_misspelt_hook_is_refused() -> None:
    @hookimpl
    def rankengine_register_backbone(register):  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(PluginError,
                       match=r"plugin 'typo' implements unknown hook rankengine_register_backbone; "
                             r"did you mean 'rankengine_register_backbones'\?"):
        load_engine([], extra=[("typo", plugin(
            "typo", rankengine_register_backbone=rankengine_register_backbone))])


def test_misspelt_hook_argument_is_refused() -> None:
    @hookimpl
    def rankengine_register_towers(registr):  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(PluginError, match=r"plugin 'typo': hook rankengine_register_towers has "
                                          r"no argument 'registr'; did you mean 'register'\?; "
                                          r"the hook is rankengine_register_towers\(register\)"):
        load_engine([], extra=[("typo", plugin(
            "typo", rankengine_register_towers=rankengine_register_towers))])


def test_plugin_error_inside_hook_names_plugin_and_hook() -> None:
    @hookimpl
    def rankengine_register_towers(register):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    with pytest.raises(PluginError, match=r"plugin 'bad' failed in hook "
                                          r"rankengine_register_towers: RuntimeError: boom"):
        load_engine([], extra=[("bad", plugin("bad", rankengine_register_towers=
                                              rankengine_register_towers))])


def test_registration_with_bad_params_type() -> None:
    @hookimpl
    def rankengine_register_towers(register):  # type: ignore[no-untyped-def]
        register("t", lambda p, **kw: None, params=dict)

    with pytest.raises(PluginError, match=r"expected a subclass of rankengine\.Params"):
        load_engine([], extra=[("p", plugin("p", rankengine_register_towers=
                                            rankengine_register_towers))])


def test_class_instead_of_instance_is_explained() -> None:
    class MyPlugin:
        pass

    with pytest.raises(PluginError, match="is the class"):
        load_engine([], extra=[("cls", MyPlugin)])


def test_incompatible_hook_api_version() -> None:
    with pytest.raises(PluginError, match=r"plugin 'old' needs rankengine hook API 0\.3, but this "
                                          r"rankengine provides 2\.0; install a version of the "
                                          r"plugin built for hook API 2\.x"):
        load_engine([], extra=[("old", plugin("old", RANKENGINE_HOOK_API="0.3"))])


def test_plugin_built_for_hook_api_1_is_refused_saying_what_changed() -> None:
    with pytest.raises(PluginError, match=r"plugin 'v1' was built for rankengine hook API 1\.2; "
                                          r"this rankengine provides 2\.0, which changed: "
                                          r"cascades are nn\.Modules.*install a version of the "
                                          r"plugin built for hook API 2\.x"):
        load_engine([], extra=[("v1", plugin("v1", RANKENGINE_HOOK_API="1.2"))])


def test_plugin_needing_a_newer_hook_api_is_refused() -> None:
    for wanted in ("2.1", "3.0"):
        with pytest.raises(PluginError, match=rf"plugin 'new' needs rankengine hook API "
                                              rf"{wanted}, but this rankengine provides 2\.0; "
                                              rf"upgrade rankengine"):
            load_engine([], extra=[("new", plugin("new", RANKENGINE_HOOK_API=wanted))])


def test_malformed_hook_api_declaration_is_refused() -> None:
    with pytest.raises(PluginError, match=r"plugin 'odd' declares RANKENGINE_HOOK_API = 1\.0; "
                                          r"expected a string 'MAJOR\.MINOR'"):
        load_engine([], extra=[("odd", plugin("odd", RANKENGINE_HOOK_API=1.0))])


def test_compatible_hook_api_is_accepted() -> None:
    engine = load_engine([], extra=[("ok", plugin("ok", RANKENGINE_HOOK_API=HOOK_API_VERSION))])
    assert "ok" in engine.plugins


def test_hook_without_hookimpl_marker_is_refused() -> None:
    def rankengine_register_fusions(register):  # type: ignore[no-untyped-def]
        register("never", lambda tasks, params: None)

    with pytest.raises(PluginError, match=r"plugin 'bare' defines rankengine_register_fusions "
                                          r"without @rankengine\.hookimpl"):
        load_engine([], extra=[("bare", plugin(
            "bare", rankengine_register_fusions=rankengine_register_fusions))])


def test_in_process_plugin_contributes_components() -> None:
    class Wide(Params):
        width: int = 3

    @hookimpl
    def rankengine_register_fusions(register):  # type: ignore[no-untyped-def]
        register("max_of", lambda tasks, params: None, params=Wide, help="h")

    engine = load_engine(["fusion"], extra=[("mine", plugin(
        "mine", rankengine_register_fusions=rankengine_register_fusions))])
    component = engine.components.fusions.get("max_of")
    assert component.plugin == "mine" and component.parse_params({}).width == 3
    assert engine.plugins["mine"].info.origin == "third-party"
    assert engine.plugins["mine"].hooks == ["rankengine_register_fusions"]


def test_trace_switch_logs_hook_calls(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RANKENGINE_TRACE", "1")
    engine = load_engine(["task_graphs"])
    engine.pm.hook.rankengine_register_task_graphs(register=lambda *a, **k: None)
    assert "rankengine_register_task_graphs" in capsys.readouterr().err


# -- a real third-party plugin, installed (dist-info + entry point) into a sys.path directory ---

EXTERNAL = '''
import torch
from rankengine import Fusion, hookimpl

RANKENGINE_HOOK_API = "2.0"


class FirstTask(Fusion):
    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions[:, 0]


@hookimpl
def rankengine_register_fusions(register):
    register("first_task", FirstTask, help="the first task's probability")
'''


def install_plugin(site: Path, module: str, source: str, *, plugin_name: str, dist: str,
                   version: str) -> None:
    """What ``pip install`` leaves behind: the module and a dist-info with the entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[rankengine]\n{plugin_name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path holding ext_demo 1.2.0 and a plugin that fails at import."""
    directory = tmp_path / "site"
    install_plugin(directory, "rankengine_ext_demo", EXTERNAL, plugin_name="ext_demo",
                   dist="rankengine-ext-demo", version="1.2.0")
    install_plugin(directory, "rankengine_broken", "raise ImportError('no module named zzz')\n",
                   plugin_name="broken", dist="rankengine-broken", version="0.1.0")
    monkeypatch.syspath_prepend(str(directory))
    for env in ("RANKENGINE_PLUGINS", "RANKENGINE_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(env, raising=False)
    yield directory
    for module in ("rankengine_ext_demo", "rankengine_broken"):
        sys.modules.pop(module, None)


def test_installed_third_party_plugin_is_found_and_loaded(site: Path) -> None:
    found = discover_plugins()
    assert found["ext_demo"] == PluginInfo("ext_demo", "rankengine_ext_demo",
                                           "rankengine-ext-demo", "1.2.0")
    assert "rankengine_ext_demo" not in sys.modules  # discovery imports nothing
    engine = load_engine(["builtin", "ext_demo"])
    assert engine.plugins["ext_demo"].info.origin == "third-party"
    assert engine.components.fusions.get("first_task").plugin == "ext_demo"
    assert engine.plugin_distributions()["ext_demo"] == "rankengine-ext-demo"


def test_not_enabled_plugins_are_never_imported(site: Path) -> None:
    engine = load_engine(["builtin"])
    assert "ext_demo" not in engine.plugins and "broken" not in engine.plugins
    assert "rankengine_ext_demo" not in sys.modules and "rankengine_broken" not in sys.modules


def test_plugin_failing_at_import_is_named(site: Path) -> None:
    with pytest.raises(PluginError, match=r'error importing plugin "broken" \(rankengine-broken '
                                          r"0\.1\.0, module rankengine_broken\): ImportError: "
                                          r"no module named zzz"):
        load_engine(["builtin", "broken"])


def test_autoload_switch_refuses_third_party_plugins(site: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKENGINE_DISABLE_PLUGIN_AUTOLOAD", "1")
    with pytest.raises(PluginError, match=r"plugin 'ext_demo' \(rankengine-ext-demo 1\.2\.0\) is "
                                          r"enabled but not imported: "
                                          r"RANKENGINE_DISABLE_PLUGIN_AUTOLOAD is set; allow it "
                                          r"with RANKENGINE_PLUGINS=ext_demo"):
        load_engine(["builtin", "ext_demo"])
    assert "rankengine_ext_demo" not in sys.modules
    assert set(load_engine(["builtin"]).plugins) == BUILTINS  # built-ins ship with rankengine
    monkeypatch.setenv("RANKENGINE_PLUGINS", "ext_demo")  # the allow-list beats the switch
    assert "ext_demo" in load_engine(["builtin", "ext_demo"]).plugins
    monkeypatch.setenv("RANKENGINE_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "ext_demo" in load_engine(["builtin", "ext_demo"]).plugins


def test_allow_list_refuses_plugins_it_does_not_name(site: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANKENGINE_PLUGINS", "other, ext_demo")
    assert "ext_demo" in load_engine(["builtin", "ext_demo"]).plugins
    with pytest.raises(PluginError, match=r"plugin 'broken' .* is enabled but not imported: "
                                          r"RANKENGINE_PLUGINS='other, ext_demo' does not list it"):
        load_engine(["builtin", "broken"])
    assert "rankengine_broken" not in sys.modules


def test_model_plugins_missing_or_of_another_major_version() -> None:
    available = {"fusion": PluginInfo("fusion", "m", "rankengine", "0.1.0"),
                 "ext": PluginInfo("ext", "m", "rankengine-ext", "2.0.1")}
    check_model_plugins({"fusion": "0.1.0", "ext": "2.3.0"}, {}, available)  # same majors
    with pytest.raises(PluginError) as caught:
        check_model_plugins({"fusion": "0.1.0", "ext": "1.4.0", "gone": "3.1.0", "who": "1.0"},
                            {"gone": "rankengine-gone"}, available)
    assert str(caught.value) == (
        "the model needs plugins that are not available: 'ext' is installed in version 2.0.1 "
        "(rankengine-ext), the model needs 1.4.0; 'gone' 3.1.0 is not installed; 'who' 1.0 is "
        "not installed (install the package that provides this rankengine plugin); install "
        "them with: pip install rankengine-ext==1.4.0 rankengine-gone==3.1.0")


def test_model_trained_with_an_in_process_plugin_needs_an_engine() -> None:
    with pytest.raises(PluginError, match=r"'recorder' was an in-process plugin when the model "
                                          r"was trained; pass an engine that has it"):
        check_model_plugins({"recorder": "0"}, {"recorder": "in-process"}, {})


def test_loading_a_model_whose_plugin_is_gone_says_what_to_install(
        site: Path, tmp_path: Path, funnel_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rankengine.artifact import load_artifact, save_artifact
    from rankengine.config import load_config
    from rankengine.errors import ArtifactError
    from rankengine.train import train

    text = tiny_config_text(funnel_dir).replace("[train]\nepochs = 2", "[train]\nepochs = 1")
    text = text.replace('kind = "weighted_product"\nweights = { click = 1.0, order = 1.0 }',
                        'kind = "first_task"')
    text = text.replace('plugins = ["builtin"]', 'plugins = ["builtin", "ext_demo"]')
    (tmp_path / "engine.toml").write_text(text)
    path = save_artifact(train(load_config(tmp_path / "engine.toml"), progress=False),
                         tmp_path / "model")
    assert load_artifact(path).fusion.__class__.__name__ == "FirstTask"

    # The plugin is uninstalled: the message names it, its version and the pip command.
    sys.path.remove(str(site))
    sys.modules.pop("rankengine_ext_demo", None)
    with pytest.raises(ArtifactError, match=r"model: the model needs plugins that are not "
                                            r"available: 'ext_demo' 1\.2\.0 is not installed; "
                                            r"install them with: pip install "
                                            r"rankengine-ext-demo==1\.2\.0$"):
        load_artifact(path)

    # Another major version is installed instead.
    newer = tmp_path / "site2"
    install_plugin(newer, "rankengine_ext_demo", EXTERNAL, plugin_name="ext_demo",
                   dist="rankengine-ext-demo", version="2.0.0")
    monkeypatch.syspath_prepend(str(newer))
    with pytest.raises(ArtifactError, match=r"'ext_demo' is installed in version 2\.0\.0 "
                                            r"\(rankengine-ext-demo\), the model needs 1\.2\.0; "
                                            r"install them with: pip install "
                                            r"rankengine-ext-demo==1\.2\.0"):
        load_artifact(path)
