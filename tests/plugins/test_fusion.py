"""Fusions: validated before training (values by their Params, task names by their
constructors), so a config whose model could never be loaded or served fails in seconds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from rankengine.config import load_config
from rankengine.errors import ConfigError
from rankengine.pluginmanager import Engine
from rankengine.train import train

from ..conftest import tiny_config_text

TASKS = "click, favorite, order, pay, dwell"


@pytest.mark.parametrize(("fusion", "message"), [
    ('kind = "weighted_sum"\nweights = { clik = 1.0 }',
     f"[fusion]: weights: unknown task 'clik'; tasks: {TASKS}; did you mean 'click'?"),
    ('kind = "weighted_product"\nweights = { click = 1.0, oder = 0.5 }',
     f"[fusion]: weights: unknown task 'oder'; tasks: {TASKS}; did you mean 'order'?"),
    ('kind = "weighted_sum"\nweights = { click = nan }',
     "[fusion.weights.click]: expected a finite number >= 0; found nan"),
    ('kind = "weighted_sum"\nweights = { click = inf }',
     "[fusion.weights.click]: expected a finite number >= 0; found inf"),
    ('kind = "weighted_product"\nweights = { order = -1.0 }',
     "[fusion.weights.order]: expected a finite number >= 0; found -1.0"),
    ('kind = "expected_value"\nprobability = "clik"\nvalue = "dwell"',
     f"[fusion]: probability: unknown task 'clik'; tasks: {TASKS}; did you mean 'click'?"),
    ('kind = "expected_value"\nprobability = "click"\nvalue = "dwel"',
     f"[fusion]: value: unknown task 'dwel'; tasks: {TASKS}; did you mean 'dwell'?"),
    ('kind = "expected_value"\nprobability = "click"\nvalue = "dwell"\ntiebreak = inf',
     "[fusion.tiebreak]: expected a finite number >= 0; found inf"),
])
def test_an_unservable_fusion_fails_before_any_data_is_read(tmp_path: Path, fusion: str,
                                                           message: str) -> None:
    # The data files do not exist: the fusion must be refused before they are looked for.
    text = tiny_config_text(tmp_path / "nowhere")
    text = re.sub(r"\[fusion\]\n.*?\n.*?\n", f"[fusion]\n{fusion}\n", text, count=1,
                  flags=re.S)
    (tmp_path / "engine.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        train(load_config(tmp_path / "engine.toml"), progress=False)
    assert str(caught.value).startswith(f"{tmp_path / 'engine.toml'}: {message}"), caught.value
    assert "\n" not in str(caught.value)


def test_weighted_fusions_validate_their_own_parameters(engine: Engine) -> None:
    component = engine.components.fusions.get("weighted_sum")
    for bad in (float("nan"), float("inf"), -0.5, "x", True):
        with pytest.raises(ValidationError, match="expected a finite number >= 0"):
            component.parse_params({"weights": {"click": bad}})
    params = component.parse_params({"weights": {"click": 1, "order": 0.5}})
    with pytest.raises(ValueError, match=r"^weights: unknown task 'ordr'; tasks: click, order; "
                                         r"did you mean 'order'\?$"):
        component.factory(["click", "order"], component.parse_params({"weights": {"ordr": 1}}))
    fused = component.factory(["click", "order"], params)(torch.tensor([[0.5, 0.2]]))
    assert fused.item() == pytest.approx(0.6)


def test_a_third_party_fusion_refusing_the_graph_is_a_config_error(tmp_path: Path,
                                                                   funnel_dir: Path) -> None:
    """The core, not each plugin, turns a constructor's ValueError into a ConfigError."""
    from rankengine import Fusion, Params
    from rankengine.plan import build_fusion, build_graph
    from rankengine.pluginmanager import load_engine

    class Picky(Fusion):
        def __init__(self, tasks: list[str], params: Params) -> None:
            super().__init__(tasks, params)
            raise ValueError("needs a task called 'gmv'")

        def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
            return predictions[:, 0]

    engine = load_engine()
    engine.components.fusions._items["picky"] = engine.components.fusions.get(
        "weighted_sum").__class__("fusions", "picky", Picky, Params, "test")
    text = tiny_config_text(funnel_dir).replace('kind = "weighted_product"', 'kind = "picky"')
    text = text.replace("weights = { click = 1.0, order = 1.0 }\n", "")
    (tmp_path / "engine.toml").write_text(text)
    config = load_config(tmp_path / "engine.toml")
    with pytest.raises(ConfigError, match=r"engine\.toml: \[fusion\]: needs a task called 'gmv'"):
        build_fusion(config, engine, build_graph(config, engine))
