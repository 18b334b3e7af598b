"""Every hook, implemented by one in-process plugin and driven through a real training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch
from click.testing import CliRunner

from rankengine import (
    Fusion,
    LossWeighting,
    NoParams,
    Params,
    PointwiseLoss,
    TaskSpec,
    hookimpl,
)
from rankengine.config import load_config
from rankengine.pluginmanager import load_engine
from rankengine.train import train

from .conftest import tiny_config_text


class HalfBCE(PointwiseLoss):
    task_types = ("binary",)

    def __call__(self, pred, y):  # type: ignore[no-untyped-def]
        return 0.5 * -(y * pred.log_p + (1 - y) * pred.log_q)


class HalfParams(Params):
    scale: float = 0.5


class Recorder:
    """A plugin object implementing every hook and recording what it saw."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.epochs: list[dict[str, Any]] = []

    @hookimpl
    def rankengine_register_encoders(self, register) -> None:  # type: ignore[no-untyped-def]
        self.events.append("encoders")

    @hookimpl
    def rankengine_register_task_graphs(self, register) -> None:  # type: ignore[no-untyped-def]
        register("two_step", {"click": {"label": "click"}, "order": {"label": "order",
                                                                       "after": "click"}})

    @hookimpl
    def rankengine_register_backbones(self, register) -> None:  # type: ignore[no-untyped-def]
        self.events.append("backbones")

    @hookimpl
    def rankengine_register_towers(self, register) -> None:  # type: ignore[no-untyped-def]
        self.events.append("towers")

    @hookimpl
    def rankengine_register_cascades(self, register) -> None:  # type: ignore[no-untyped-def]
        self.events.append("cascades")

    @hookimpl
    def rankengine_register_losses(self, register) -> None:  # type: ignore[no-untyped-def]
        register("half_bce", HalfBCE)

    @hookimpl
    def rankengine_register_loss_weightings(self, register) -> None:  # type: ignore[no-untyped-def]
        register("halved", Halved, params=HalfParams)

    @hookimpl
    def rankengine_register_sample_weightings(self, register) -> None:  # type: ignore[no-untyped-def]
        self.events.append("sample_weightings")

    @hookimpl
    def rankengine_register_fusions(self, register) -> None:  # type: ignore[no-untyped-def]
        register("click_only", ClickOnly, params=NoParams)

    @hookimpl
    def rankengine_register_metrics(self, register) -> None:  # type: ignore[no-untyped-def]
        from rankengine import Metric

        register("positive_rate", Metric(lambda y, p, g: float(y.mean())))

    @hookimpl
    def rankengine_modify_task_graph(self, tasks: dict[str, TaskSpec], config) -> None:  # type: ignore[no-untyped-def]
        tasks["order"] = tasks["order"].model_copy(update={"loss": "half_bce"})
        self.events.append("modify_task_graph")

    @hookimpl
    def rankengine_before_train(self, context) -> None:  # type: ignore[no-untyped-def]
        self.events.append(f"before_train:{context.rows['train']}")

    @hookimpl
    def rankengine_after_epoch(self, context, epoch: int, metrics) -> None:  # type: ignore[no-untyped-def]
        self.epochs.append(metrics)
        self.events.append(f"after_epoch:{epoch}")

    @hookimpl
    def rankengine_after_train(self, context, result) -> None:  # type: ignore[no-untyped-def]
        self.events.append(f"after_train:{result.best_epoch}")

    @hookimpl
    def rankengine_register_commands(self, cli: click.Group) -> None:
        @cli.command(name="hello")
        def hello() -> None:
            click.echo("hello from a plugin")


class Halved(LossWeighting):
    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.sum() * self.params.scale

    def current_weights(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, self.params.scale)


class ClickOnly(Fusion):
    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions[:, 0]


def test_every_hook_is_called_by_the_core(tmp_path: Path, funnel_dir: Path) -> None:
    recorder = Recorder()
    engine = load_engine(["builtin"], extra=[("recorder", recorder)])
    text = tiny_config_text(funnel_dir, tasks='[task_graph]\ntemplate = "two_step"\n',
                            extra='[loss]\nweighting = { kind = "halved", scale = 0.25 }\n'
                                  '[evaluate]\nmetrics = ["auc", "positive_rate"]\n')
    text = text.replace('kind = "weighted_product"\nweights = { click = 1.0, order = 1.0 }',
                        'kind = "click_only"')
    (tmp_path / "engine.toml").write_text(text)
    config = load_config(tmp_path / "engine.toml")
    trained = train(config, engine=engine, progress=False)
    for name in ("encoders", "backbones", "towers", "cascades", "sample_weightings",
                 "modify_task_graph"):
        assert name in recorder.events
    assert recorder.events[-3:] == ["after_epoch:1", "after_epoch:2",
                                    f"after_train:{trained.result.best_epoch}"]
    assert any(e.startswith("before_train:") for e in recorder.events)
    assert trained.graph.names == ["click", "order"]
    assert trained.graph.node("order").spec.loss.kind == "half_bce"
    assert recorder.epochs[0]["loss_weights"] == {"click": 0.25, "order": 0.25}
    valid = trained.result.metrics["valid"]
    assert set(valid["click"]) >= {"auc", "positive_rate"} and "logloss" not in valid["click"]
    assert 0 < valid["click"]["positive_rate"] < 1


def test_register_commands_adds_a_subcommand() -> None:
    from rankengine.cli import cli

    group = click.Group(commands=dict(cli.commands))
    engine = load_engine([], extra=[("recorder", Recorder())])
    engine.hooks.register_commands(group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output
