"""Hook specifications: the whole contract between rankengine and its plugins.

This module is the catalogue a plugin author reads: every extension point is one hook below,
with its contract in the docstring. Specs are docstring-only and fully typed. Implementations
may accept fewer arguments than a spec (pluggy passes them by name), so specs can grow without
breaking plugins.

Every call goes through pluggy (``pm.hook.<name>``), so ``RANKENGINE_TRACE=1`` prints each call
and pluggy's ``wrapper=True`` / ``tryfirst`` / ``trylast`` markers work on every hook.

Registration hooks get a typed ``register`` object: call it once per component, the core owns
the name table. ``register(name, factory, params=ParamsModel, help="...", default=False)``:
``params`` is the pydantic model of the component's table in engine.toml, ``default=True``
makes it the family's choice where the config names none.

Hook API 2.0 (changes from 1.x): cascades are ``nn.Module`` s (``build``, ``forward``,
``auxiliary_loss``); the model's forward takes a :class:`rankengine.ModelInput` (no labels);
losses are :class:`rankengine.PointwiseLoss` objects with a link (``to_value``/``from_value``)
and ``task_types``; encoders say ``output`` as ``ids`` / ``dense`` / ``id_list`` and describe
``length``, ``pooling`` and ``raw_datatype``; metrics declare ``direction`` and ``label``;
fusions expose ``weights()`` / ``with_weights()``; new hooks for data sources, serving back
ends and plugin-owned config tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from pydantic import BaseModel

    from rankengine.backend import ServingBackend
    from rankengine.bundle import TrainContext, TrainResult
    from rankengine.components import Register
    from rankengine.config import EngineConfig, TaskSpec
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

PROJECT = "rankengine"
#: Version of this hook API; plugins built against another major version are refused.
HOOK_API_VERSION = "2.0"

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
def rankengine_register_interactions(register: Register[InteractionFactory]) -> None:
    """Register sequence interactions (``[[model.interactions]] kind = "..."``): modules that
    read a behaviour sequence against the candidate (DIN's target attention, ...).

    The factory is called as ``factory(params, sequence_dim=Ds, target_dim=Dt, max_len=L)``
    and returns a :class:`rankengine.Interaction`: ``encode(sequence, mask)`` runs once per
    context row (once per served request), ``forward(encoded, target)`` per candidate.
    """


@hookspec
def rankengine_register_backbones(register: Register[BackboneFactory]) -> None:
    """Register backbones (``[model] backbone = { kind = "..." }``).

    The factory is called as ``factory(params, input_dim=D, num_outputs=H)`` and returns a
    :class:`rankengine.Backbone` mapping ``[B, D]`` to ``H`` tensors ``[B, output_dim]``;
    its ``auxiliary_loss()`` (a load-balancing loss) is added while training.

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
    """Register cascades (``[model] cascade = "..."``) that turn head inputs into probabilities.

    The factory is called as ``factory(graph, params)`` and returns a
    :class:`rankengine.Cascade`, an ``nn.Module``: the model calls ``cascade.build(dims)`` once
    (create layers; return each tower's input width), then ``cascade(head_inputs, towers)``
    per forward. Its parameters are trained, saved, exported and served with the model;
    ``auxiliary_loss()`` adds a training loss (e.g. a calibrator penalty).

    :param register: call ``register(name, factory, params=ParamsModel)``.
    """


@hookspec
def rankengine_register_losses(register: Register[LossFactory]) -> None:
    """Register losses: pointwise ones (``loss = "..."`` on a task) and ranking ones
    (``[loss.ranking] kind = "..."``).

    The factory is called as ``factory(params)`` and returns a :class:`rankengine.PointwiseLoss`
    (``loss(prediction, target[B]) -> [B]``, its ``task_types`` and its link ``to_value`` /
    ``from_value``) or a :class:`rankengine.RankingLoss`. Register the default loss of a task
    type with ``default=True``; a task that names no loss gets the default whose
    ``task_types`` include its type.

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

    A :class:`rankengine.Metric` declares its ``direction`` (``higher``, ``lower``, or
    ``target`` with a ``target`` value such as 1.0), its ``label`` (column header) and whether
    it is a ``headline`` metric of the per-task table.

    :param register: call ``register(name, Metric(fn, task_type=..., direction=..., label=...))``.
    """


@hookspec
def rankengine_register_calibrators(register: Register[CalibratorFactory]) -> None:
    """Register calibrators: what maps a task node's conditional prediction to a calibrated
    one after training (``[calibration] kind = "NAME"`` for binary nodes, ``regression =
    "NAME"`` for regression nodes).

    The factory is called as ``factory(params)`` once per node it calibrates and returns a
    :class:`rankengine.Calibrator` (an ``nn.Module`` saved, exported and served with the model;
    see its docstring for ``fit`` and ``forward``). One registration may say ``default=True``:
    it is used when the config has no ``[calibration]`` table.

    :param register: call ``register(name, factory, params=ParamsModel, help="...")``.
    """


@hookspec
def rankengine_register_sources(register: Register[type[DataSource]]) -> None:
    """Register data sources: file formats (or directories, streams) rankengine reads.

    The factory is a :class:`rankengine.DataSource` subclass; see its docstring for what the
    core asks of a source (which paths it reads, columns, whole-table and streaming reads,
    row counts and the fingerprint that keys the encoding cache). ``[data] format = "NAME"``
    picks one; otherwise the first source whose ``accepts(path)`` is true is used.

    :param register: call ``register(name, SourceClass, params=ParamsModel, help="...")``.
    """


@hookspec
def rankengine_register_backends(register: Register[type[ServingBackend]]) -> None:
    """Register serving back ends (``rankengine serve --backend NAME``).

    The factory is a :class:`rankengine.ServingBackend` subclass, constructed once per served
    model version as ``BackendClass(loaded, threads=N)`` and then called per request:
    ``(ids, dense, id_lists)`` numpy arrays → ``(entire [N, T], conditional [N, T])`` float64
    (fusion stays outside). Back ends are looked up in the served model's plugins; the one
    registered with ``default=True`` serves when ``--backend`` is not given. A back end that
    sets ``reads = "FORMAT"`` and implements ``run_exported`` also checks the files of
    ``rankengine export --format FORMAT``.

    :param register: call ``register(name, BackendClass, help="...", default=False)``.
    """


@hookspec
def rankengine_register_config_tables(register: Register[type[BaseModel]]) -> None:
    """Register a pydantic model for a plugin-owned table ``[plugins.NAME]`` of engine.toml.

    The table is validated with the same precise errors as the core's keys (file, dotted key,
    expected and found) and the validated object is ``config.plugin_settings(NAME)``. A table
    nobody registered is an error naming the registered ones.

    :param register: call ``register(name, SettingsModel, help="...")``.
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
