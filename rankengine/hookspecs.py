"""Hook specifications: the whole contract between rankengine and its plugins.

Specs are docstring-only and fully typed. Implementations may accept fewer arguments than a spec
(pluggy passes them by name), so specs can grow without breaking plugins. Registration hooks get
a typed ``register`` object: call it once per component, the core owns the name table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from rankengine.components import (
        BackboneFactory,
        CascadeFactory,
        EncoderFactory,
        FusionFactory,
        LossFactory,
        LossWeightingFactory,
        Metric,
        Register,
        SampleWeightingFactory,
        TaskGraphTemplate,
        TowerFactory,
    )
    from rankengine.config import EngineConfig, TaskSpec
    from rankengine.train import TrainContext, TrainResult

PROJECT = "rankengine"
#: Version of this hook API; plugins built against another major version are refused.
HOOK_API_VERSION = "1.0"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --------------------------------------------------------------------------------------------
# Registration: called once when the plugin manager is built
# --------------------------------------------------------------------------------------------


@hookspec
def rankengine_register_encoders(register: Register[EncoderFactory]) -> None:
    """Register feature encoder kinds (``kind = "..."`` under ``[[features]]``).

    The factory is called as ``factory(feature, params)`` and returns a
    :class:`rankengine.FeatureEncoder`.

    :param register: call ``register(name, factory, params=ParamsModel, help="...")``.
    """


@hookspec
def rankengine_register_task_graphs(register: Register[TaskGraphTemplate]) -> None:
    """Register named task graph templates (``[task_graph] template = "..."``).

    A template maps node names to task tables as written under ``[tasks]``; entries under
    ``[tasks]`` in engine.toml are merged over it key by key.

    :param register: call ``register(name, {"click": {"label": "click"}, ...})``.
    """


@hookspec
def rankengine_register_backbones(register: Register[BackboneFactory]) -> None:
    """Register backbones (``[model] backbone = { kind = "..." }``).

    The factory is called as ``factory(params, input_dim=D, num_outputs=H)`` and returns a
    :class:`rankengine.Backbone` mapping ``[B, D]`` to ``H`` tensors ``[B, output_dim]``.

    :param register: call ``register(name, factory, params=ParamsModel)``.
    """


@hookspec
def rankengine_register_towers(register: Register[TowerFactory]) -> None:
    """Register per-head towers (``[model] tower = { kind = "..." }``).

    The factory is called as ``factory(params, input_dim=D)`` and returns an ``nn.Module``
    mapping ``[B, D]`` to one output ``[B]`` (a logit, or a value for regression heads).

    :param register: call ``register(name, factory, params=ParamsModel)``.
    """


@hookspec
def rankengine_register_cascades(register: Register[CascadeFactory]) -> None:
    """Register cascades (``[model] cascade = "..."``) that compose heads into probabilities.

    The factory is called as ``factory(graph, params)`` and returns a
    :class:`rankengine.Cascade`.

    :param register: call ``register(name, factory, params=ParamsModel)``.
    """


@hookspec
def rankengine_register_losses(register: Register[LossFactory]) -> None:
    """Register pointwise losses (``loss = "..."`` on a task).

    The factory is called as ``factory(params)`` and returns
    ``loss(prediction: NodePrediction, target[B]) -> per-sample loss [B]``.

    :param register: call ``register(name, factory, params=ParamsModel)``.
    """


@hookspec
def rankengine_register_loss_weightings(register: Register[LossWeightingFactory]) -> None:
    """Register loss weightings (``[loss] weighting = { kind = "..." }``).

    The factory is called as ``factory(graph, params)`` and returns a
    :class:`rankengine.LossWeighting`.

    :param register: call ``register(name, factory, params=ParamsModel)``.
    """


@hookspec
def rankengine_register_sample_weightings(register: Register[SampleWeightingFactory]) -> None:
    """Register sample weightings (``[loss] sample_weighting = { kind = "..." }``).

    The factory is called as ``factory(graph, params)`` and returns a
    :class:`rankengine.SampleWeighting`.

    :param register: call ``register(name, factory, params=ParamsModel)``.
    """


@hookspec
def rankengine_register_fusions(register: Register[FusionFactory]) -> None:
    """Register fusion strategies (``[fusion] kind = "..."``) that blend tasks into one score.

    The factory is called as ``factory(task_names, params)`` and returns a
    :class:`rankengine.Fusion`.

    :param register: call ``register(name, factory, params=ParamsModel)``.
    """


@hookspec
def rankengine_register_metrics(register: Register[Metric]) -> None:
    """Register evaluation metrics, computed per task node by ``evaluate``.

    :param register: call ``register(name, Metric(fn, task_type=..., needs_group=...))``.
    """


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@hookspec
def rankengine_modify_task_graph(tasks: dict[str, TaskSpec], config: EngineConfig) -> None:
    """Edit the task nodes in place before the graph is validated.

    Called after the template (if any) and ``[tasks]`` have been merged. Add, remove or change
    nodes; validation (acyclic, parents exist, ``via`` siblings) runs afterwards.

    :param tasks: node name → :class:`rankengine.TaskSpec`, mutable.
    :param config: the validated engine configuration.
    """


# --------------------------------------------------------------------------------------------
# Training lifecycle observers
# --------------------------------------------------------------------------------------------


@hookspec
def rankengine_before_train(context: TrainContext) -> None:
    """Called once the data is encoded and the model built, before the first epoch.

    :param context: config, task graph, feature pipeline, model and data sizes.
    """


@hookspec
def rankengine_after_epoch(context: TrainContext, epoch: int, metrics: dict[str, Any]) -> None:
    """Called after each epoch with the training losses and validation metrics.

    :param epoch: 1-based epoch number.
    :param metrics: ``{"train_loss": {...}, "valid": {...}, "loss_weights": {...}}``.
    """


@hookspec
def rankengine_after_train(context: TrainContext, result: TrainResult) -> None:
    """Called after training and the final evaluation, before the artifact is written.

    :param result: best epoch, history and per-split metrics.
    """


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


@hookspec
def rankengine_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``rankengine`` command line.

    :param cli: the top-level click group; call ``cli.add_command(...)`` or use ``@cli.command``.
    """
