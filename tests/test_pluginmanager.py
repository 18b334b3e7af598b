from __future__ import annotations

import types

import pytest

from rankengine import Params, hookimpl
from rankengine.errors import PluginError
from rankengine.pluginmanager import discover_plugins, load_engine, resolve_enabled

BUILTINS = {"backbones", "cascades", "encoders", "fusion", "losses", "metrics", "progress",
            "task_graphs", "towers", "weighting"}


def plugin(name: str, **hooks: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(__name__=name, **hooks)


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
                       match=r"plugin 'typo' is invalid.*rankengine_register_backbone"):
        load_engine([], extra=[("typo", plugin(
            "typo", rankengine_register_backbone=rankengine_register_backbone))])


def test_misspelt_hook_argument_is_refused() -> None:
    @hookimpl
    def rankengine_register_towers(registr):  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(PluginError, match=r"plugin 'typo' is invalid.*registr"):
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
    with pytest.raises(PluginError, match=r"plugin 'old' needs rankengine hook API 0\.3.*1\.0"):
        load_engine([], extra=[("old", plugin("old", RANKENGINE_HOOK_API="0.3"))])


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
