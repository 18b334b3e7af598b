"""Planning: every component a config names is built once, and a plugin's ValueError is a config
error naming the key."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rankengine import Register, hookimpl
from rankengine.config import load_config
from rankengine.errors import ConfigError
from rankengine.plan import make_plan
from rankengine.pluginmanager import Engine, load_engine
from rankengine.testing import make_engine
from rankengine.train import check_buildable, train

from .conftest import tiny_config_text

#: (family table, hook, built-in name, config text replacing it)
FAMILIES = {
    "encoders": ("rankengine_register_encoders", "categorical"),
    "losses": ("rankengine_register_losses", "bce"),
    "fusions": ("rankengine_register_fusions", "weighted_product"),
    "sample_weightings": ("rankengine_register_sample_weightings", "none"),
    "loss_weightings": ("rankengine_register_loss_weightings", "fixed"),
    "backbones": ("rankengine_register_backbones", "mmoe"),
    "towers": ("rankengine_register_towers", "mlp"),
    "cascades": ("rankengine_register_cascades", "esm2"),
}


class Wrapping:
    """Registers ``wrapped_<name>`` for each family's built-in, calling ``around(family,
    factory, *args)`` instead of the factory."""

    def __init__(self, builtin: Engine, around: Callable[..., Any]) -> None:
        self.builtin, self.around = builtin, around
        for family, (hook, name) in FAMILIES.items():
            setattr(self, hook, hookimpl(self._registrar(family, name), specname=hook))

    def _registrar(self, family: str, name: str) -> Callable[[Register[Any]], None]:
        component = getattr(self.builtin.components, family).get(name)

        def register(register: Register[Any]) -> None:
            def factory(*args: Any, **kwargs: Any) -> Any:
                return self.around(family, component.factory, *args, **kwargs)

            register(f"wrapped_{name}", factory, params=component.params)

        return register


def wrapped_config(tmp_path: Path, funnel_dir: Path) -> Path:
    text = tiny_config_text(funnel_dir, model="""
[model]
backbone = { kind = "wrapped_mmoe", experts = 2, expert_hidden = [16] }
tower = { kind = "wrapped_mlp", hidden = [8] }
cascade = "wrapped_esm2"
""", extra="""
[loss]
weighting = "wrapped_fixed"
sample_weighting = "wrapped_none"
""")
    text = text.replace('kind = "weighted_product"', 'kind = "wrapped_weighted_product"')
    text = text.replace('kind = "categorical"', 'kind = "wrapped_categorical"')
    for task in ("click", "favorite", "pay"):
        text = text.replace(f'{task} = {{ label = "{task}"', f'{task} = {{ label = "{task}", '
                                                             f'loss = "wrapped_bce"')
    text = text.replace('label = "order"\n', 'label = "order"\nloss = "wrapped_bce"\n')
    path = tmp_path / "engine.toml"
    path.write_text(text)
    return path


def test_training_builds_each_component_once(tmp_path: Path, funnel_dir: Path) -> None:
    built: Counter[str] = Counter()

    def count(family: str, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        built[family] += 1
        return factory(*args, **kwargs)

    engine = make_engine(("wrapping", Wrapping(load_engine(), count)))
    config = load_config(wrapped_config(tmp_path, funnel_dir))
    categorical = sum(f.kind == "wrapped_categorical" for f in config.features)
    trained = train(config, engine=engine, progress=False)
    heads = len(trained.model.cascade.heads())
    assert trained.model.cascade.heads()  # a real model was trained through the wrappers
    once = {"encoders": categorical, "losses": 4, "fusions": 1, "sample_weightings": 1,
            "loss_weightings": 1}
    # The model is built twice: on a stand-in feature layout before any data is read (a
    # config that cannot build fails in seconds), then on the fitted features.
    twice = {"backbones": 2, "cascades": 2, "towers": 2 * heads}
    assert dict(built) == {**once, **twice}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_plugin_value_error_is_a_config_error_naming_the_key(
        family: str, tmp_path: Path, funnel_dir: Path) -> None:
    def refuse(failing: str, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if failing == family:
            raise ValueError(f"the {family} plugin refuses these settings")
        return factory(*args, **kwargs)

    engine = make_engine(("wrapping", Wrapping(load_engine(), refuse)))
    config = load_config(wrapped_config(tmp_path, funnel_dir))
    key = {"encoders": "features[0]", "losses": "tasks.click.loss", "fusions": "fusion",
           "sample_weightings": "loss.sample_weighting", "loss_weightings": "loss.weighting",
           "backbones": "model.backbone", "towers": "model.tower",
           "cascades": "model.cascade"}[family]
    with pytest.raises(ConfigError) as caught:
        check_buildable(make_plan(config, engine))
    assert str(caught.value) == (f"{tmp_path / 'engine.toml'}: [{key}]: the {family} plugin "
                                 f"refuses these settings")


def test_fusion_weight_naming_no_task_fails_when_planned(tmp_path: Path,
                                                          funnel_dir: Path) -> None:
    text = tiny_config_text(funnel_dir).replace("weights = { click = 1.0, order = 1.0 }",
                                                "weights = { click = 1.0, odrer = 1.0 }")
    (tmp_path / "engine.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"\[fusion\].*'odrer'"):
        make_plan(load_config(tmp_path / "engine.toml"))
