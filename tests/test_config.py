from __future__ import annotations

from pathlib import Path

import pytest

from rankengine.config import load_config, parse_config
from rankengine.errors import ConfigError, UnknownComponentError
from rankengine.plan import make_plan
from rankengine.pluginmanager import Engine

from .conftest import REPO

MINIMAL = """
[data]
train = "train.parquet"

[[features]]
name = "user"
kind = "categorical"

[tasks]
click = { label = "click" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "engine.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", ["engine.toml", "examples/census/engine.toml",
                                  "examples/sequences/engine.toml"])
def test_shipped_configs_are_valid(path: str, engine: Engine) -> None:
    config = load_config(REPO / path)
    make_plan(config, engine)
    assert config.features and config.tasks


def test_minimal_config_gets_defaults(tmp_path: Path, engine: Engine) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.model.backbone.kind == "default"  # until the plugins say which
    make_plan(config, engine)
    assert config.model.backbone.kind == "mmoe"
    assert config.model.cascade.kind == "esmm"
    assert config.engine.plugins == ["builtin"]
    assert config.resolve_path("train.parquet") == tmp_path / "train.parquet"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"configuration file not found: .*nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"engine\.toml: not valid TOML"):
        load_config(write(tmp_path, "[data\ntrain = 1"))


def test_unknown_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + "\n[trian]\nepochs = 2\n"))
    message = str(info.value)
    assert "engine.toml" in message
    assert "unknown key 'trian'" in message
    assert "did you mean 'train'?" in message


def test_unknown_nested_key_names_the_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + "\n[train]\nepoch = 2\n"))
    assert "[train]" in str(info.value)
    assert "unknown key 'epoch'" in str(info.value)
    assert "did you mean 'epochs'?" in str(info.value)


def test_wrong_type_says_expected_and_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + '\n[train]\nepochs = "three"\n'))
    message = str(info.value)
    assert "[train.epochs]" in message
    assert "integer" in message
    assert "'three' (str)" in message


def test_task_key_typo_names_the_task(tmp_path: Path) -> None:
    text = MINIMAL.replace('click = { label = "click" }',
                           'click = { label = "click" }\nbuy = { label = "buy", aftr = "click" }')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "[tasks.buy]" in str(info.value)
    assert "did you mean 'after'?" in str(info.value)


def test_missing_required_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[data\]: required key is missing"):
        load_config(write(tmp_path, '[[features]]\nname = "a"\nkind = "numeric"\n'))


def test_duplicate_feature_names(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[features]]\nname = "user"\nkind = "numeric"\n'
    with pytest.raises(ConfigError, match="feature name 'user' appears twice"):
        load_config(write(tmp_path, text))


def test_unknown_backbone_lists_available_and_suggests(tmp_path: Path, engine: Engine) -> None:
    config = load_config(write(tmp_path, MINIMAL + '\n[model]\nbackbone = "mmeo"\n'))
    with pytest.raises(UnknownComponentError) as info:
        make_plan(config, engine)
    message = str(info.value)
    assert "[model.backbone.kind]" in message
    assert "unknown backbone 'mmeo'" in message
    assert "mmoe, omoe, ple, shared_bottom" in message
    assert "did you mean 'mmoe'?" in message


def test_backbone_parameter_typo(tmp_path: Path, engine: Engine) -> None:
    config = load_config(write(
        tmp_path, MINIMAL + '\n[model]\nbackbone = { kind = "mmoe", expert = 4 }\n'))
    with pytest.raises(ConfigError) as info:
        make_plan(config, engine)
    message = str(info.value)
    assert "[model.backbone.expert]" in message
    assert "did you mean 'experts'?" in message
    assert "backbone 'mmoe'" in message


def test_backbone_parameter_wrong_type(tmp_path: Path, engine: Engine) -> None:
    config = load_config(write(
        tmp_path, MINIMAL + '\n[model]\nbackbone = { kind = "mmoe", experts = "four" }\n'))
    with pytest.raises(ConfigError, match=r"\[model\.backbone\.experts\].*'four' \(str\)"):
        make_plan(config, engine)


def test_encoder_parameter_typo_names_the_feature_index(tmp_path: Path, engine: Engine) -> None:
    text = MINIMAL.replace('kind = "categorical"', 'kind = "categorical"\nhash_bucket = 10')
    config = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError) as info:
        make_plan(config, engine)
    assert "[features[0].hash_bucket]" in str(info.value)
    assert "did you mean 'hash_buckets'?" in str(info.value)


def test_unknown_task_loss_and_metric(tmp_path: Path, engine: Engine) -> None:
    text = MINIMAL.replace('{ label = "click" }', '{ label = "click", loss = "bec" }')
    with pytest.raises(UnknownComponentError,
                       match=r"\[tasks\.click\.loss\.kind\].*did you mean 'bce'"):
        make_plan(load_config(write(tmp_path, text)), engine)
    text = MINIMAL + '\n[evaluate]\nmetrics = ["acu"]\n'
    with pytest.raises(UnknownComponentError, match="did you mean 'auc'"):
        make_plan(load_config(write(tmp_path, text)), engine)


def test_resolved_config_round_trips() -> None:
    config = load_config(REPO / "engine.toml")
    again = parse_config(config.resolved_dict())
    assert again.resolved_dict() == config.resolved_dict()


def test_an_empty_equals_or_backbone_groups_names_the_inner_key() -> None:
    base = {"data": {"train": "t.csv"}, "features": [{"name": "a", "kind": "numeric"}]}
    with pytest.raises(ConfigError) as caught:
        parse_config({**base, "tasks": {"click": {"label": {"column": "c", "equals": []}}}})
    # the str / list members of the label union do not drown the real defect
    assert str(caught.value).startswith("<config>: [tasks.click.label.equals]: list should have "
                                        "at least 1 item")
    with pytest.raises(ConfigError, match=r"\[model\.backbone_groups\]: list should have at least"):
        parse_config({**base, "model": {"backbone_groups": []}})


# -- plugin-owned tables and registered defaults ------------------------------------------------


class _Owner:
    """A third-party plugin owning the table [plugins.audit]."""

    from rankengine import Params as _Params

    class Settings(_Params):
        sink: str = "stderr"
        every: int = 1

    from rankengine import hookimpl as _hookimpl

    @_hookimpl
    def rankengine_register_config_tables(self, register) -> None:  # type: ignore[no-untyped-def]
        register("audit", self.Settings)


def test_plugin_owned_table_is_validated_by_the_plugin_model(tmp_path: Path) -> None:
    from rankengine.pluginmanager import load_engine

    engine = load_engine(extra=[("audit", _Owner())])
    config = load_config(write(tmp_path, MINIMAL + '\n[plugins.audit]\nsink = "file"\n'))
    make_plan(config, engine)
    assert config.plugin_settings("audit").sink == "file"
    assert config.plugin_settings("audit").every == 1
    assert config.plugin_settings("epoch_log").metrics == ["auc"]  # a built-in's own table

    bad = load_config(write(tmp_path, MINIMAL + "\n[plugins.audit]\nevry = 2\n"))
    with pytest.raises(ConfigError, match=r"\[plugins\.audit\.evry\]: unknown key 'evry'; "
                                          r"expected one of: every, sink; did you mean 'every'"):
        make_plan(bad, engine)
    wrong = load_config(write(tmp_path, MINIMAL + '\n[plugins.audit]\nevery = "often"\n'))
    with pytest.raises(ConfigError, match=r"\[plugins\.audit\.every\]: .*found 'often'"):
        make_plan(wrong, engine)


def test_table_no_plugin_owns_is_an_error_naming_the_owned_ones(tmp_path: Path,
                                                                engine: Engine) -> None:
    config = load_config(write(tmp_path, MINIMAL + "\n[plugins.epoch_lg]\nquiet = true\n"))
    with pytest.raises(UnknownComponentError, match=r"\[plugins\.epoch_lg\]: unknown plugin "
                                                    r"config table 'epoch_lg'.*'epoch_log'"):
        make_plan(config, engine)


def test_left_out_components_become_the_registered_defaults(tmp_path: Path,
                                                            engine: Engine) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    make_plan(config, engine)
    tables = engine.components
    assert config.model.backbone.kind == tables.backbones.default().name
    assert config.fusion.kind == tables.fusions.default().name
    loss = config.tasks["click"].loss
    assert loss is not None and "binary" in tables.losses.get(loss.kind).factory.task_types
