"""Planning: one step turns a config into every component it names, each built exactly once.

:func:`make_plan` loads nothing from data: it completes the config (each family's registered
default written in, plugin-owned tables validated), builds the task graph, and resolves and
builds the feature encoders, each task's loss, the sample weighting, the loss weighting, the
ranking objective, the fusion and the metric list. The model needs the *fitted* features
(vocabulary sizes), so the plan holds its cascade, backbone and tower resolved and builds it
with :meth:`Plan.build_model` once a feature layout exists. Training, loading an artifact and
the checks before training all start here, so a config means the same thing everywhere.

Every ``ValueError`` (or :class:`GraphError`) a plugin's factory raises becomes a
:class:`ConfigError` naming the config key the component was named under.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch
from pydantic import ValidationError

from rankengine.components import DEFAULT_KIND, Component, ComponentTable
from rankengine.config import (
    ComponentRef,
    EngineConfig,
    InteractionSpec,
    TaskSpec,
    complete_config,
    default_loss,
    validate_table,
)
from rankengine.data.pipeline import FeatureLayout, FeaturePipeline
from rankengine.errors import ConfigError, GraphError, PluginError, one_line
from rankengine.graph import TaskGraph
from rankengine.interfaces import (
    BackboneFactory,
    Calibrator,
    CalibratorFactory,
    CascadeFactory,
    Fusion,
    InteractionFactory,
    LossFactory,
    LossWeighting,
    Metric,
    NodePrediction,
    PointwiseLoss,
    RankingLoss,
    SampleWeighting,
    TowerFactory,
)
from rankengine.pluginmanager import Engine, load_engine
from rankengine.ranking import RankingObjective

if TYPE_CHECKING:
    from rankengine.model.assembly import RankingModel

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Resolved(Generic[F]):
    """A component the config names: the registered name, its factory, its validated params,
    and the config key it was named under (for errors)."""

    key: str
    name: str
    factory: F
    params: Any

    def build(self, config: EngineConfig, *args: Any, **kwargs: Any) -> Any:
        """``factory(*args, **kwargs)``; a plugin's ``ValueError`` becomes a config error."""
        return construct(self.factory, self.key, config, *args, **kwargs)


def resolve(table: ComponentTable[F], ref: ComponentRef | str, params: Any = None, *,
            key: str, config: EngineConfig) -> Resolved[F]:
    """Look ``ref`` up in ``table`` and validate its parameters against the component's model."""
    kind, raw = (ref, params or {}) if isinstance(ref, str) else (ref.kind, ref.params)
    component = table.get(kind, key=f"{key}.kind", source=config.source)
    parsed = validate_table(component.params, raw, key=key, source=config.source,
                            what=f"parameters of {table.singular} '{component.name}'")
    return Resolved(key, component.name, component.factory, parsed)


def construct(factory: Callable[..., Any], key: str, config: EngineConfig, *args: Any,
              **kwargs: Any) -> Any:
    try:
        return factory(*args, **kwargs)
    except (ValueError, GraphError) as exc:
        raise ConfigError(one_line(str(exc)), source=config.source, key=key) from None


@dataclass
class Plan:
    """Everything a config names, built once (see the module docstring)."""

    config: EngineConfig
    engine: Engine
    graph: TaskGraph
    #: the feature encoders, not fitted yet (training fits them; loading loads their state)
    pipeline: FeaturePipeline
    cascade: Resolved[CascadeFactory]
    backbone: Resolved[BackboneFactory]
    tower: Resolved[TowerFactory]
    #: ``[[model.interactions]]`` in config order, each with its resolved component
    interactions: list[tuple[InteractionSpec, Resolved[InteractionFactory]]]
    #: each task's pointwise loss, in graph order
    losses: list[PointwiseLoss]
    sample_weighting: SampleWeighting
    loss_weighting: LossWeighting
    ranking: RankingObjective | None
    fusion: Fusion
    metrics: list[Component[Metric]]
    #: the calibrators of binary and of regression nodes (None: those stay uncalibrated)
    calibrator: Resolved[CalibratorFactory] | None = None
    regression_calibrator: Resolved[CalibratorFactory] | None = None

    def build_calibrators(self) -> list[Calibrator | None]:
        """A fresh calibrator per node (fitted after training), None where there is none."""
        out: list[Calibrator | None] = []
        for node in self.graph.nodes:
            resolved = self.calibrator if node.type == "binary" else self.regression_calibrator
            out.append(None if resolved is None else resolved.build(self.config, resolved.params))
        return out

    def build_model(self, layout: Sequence[FeatureLayout]) -> RankingModel:
        """The model on ``layout`` (the fitted pipeline's, or a stand-in to check the config);
        regression heads map to values through their losses' links."""
        from rankengine.model.assembly import build_model

        try:
            return build_model(self, layout)
        except (ValueError, GraphError) as exc:  # e.g. a cascade's build() refusing the widths
            raise ConfigError(one_line(str(exc)), source=self.config.source, key="model") \
                from None


def engine_for(config: EngineConfig) -> Engine:
    """Load the plugins the config enables."""
    try:
        return load_engine(config.engine.plugins, config.engine.disable)
    except PluginError as exc:
        raise ConfigError(str(exc), source=config.source, key="engine.plugins") from exc


def make_plan(config: EngineConfig, engine: Engine | None = None, *,
              graph: TaskGraph | None = None) -> Plan:
    """Complete ``config`` (in place) and build every component it names, once. ``graph``:
    the task graph as saved with a model (default: built from the config, template and
    ``rankengine_modify_task_graph``)."""
    engine = engine or engine_for(config)
    complete_config(config, engine)
    c = engine.components
    encoders = [resolve(c.encoders, feature.kind, feature.params, key=f"features[{i}]",
                        config=config) for i, feature in enumerate(config.features)]
    pipeline = FeaturePipeline(config.features, [
        r.build(config, feature, r.params) for r, feature in zip(encoders, config.features,
                                                                   strict=True)])
    share_encoders(config, pipeline)
    interactions = resolve_interactions(config, engine, pipeline)
    graph = graph or build_graph(config, engine)
    fusion = build_fusion(config, engine, graph)
    metric_key = "evaluate.metrics"
    metrics = [c.metrics.get(n, key=metric_key, source=config.source)
               for n in config.evaluate.metrics] if config.evaluate.metrics is not None \
        else list(c.metrics)
    sample_weighting = resolve(c.sample_weightings, config.loss.sample_weighting,
                               key="loss.sample_weighting", config=config)
    loss_weighting = resolve(c.loss_weightings, config.loss.weighting, key="loss.weighting",
                             config=config)
    return Plan(
        config=config, engine=engine, graph=graph, pipeline=pipeline,
        cascade=resolve(c.cascades, config.model.cascade, key="model.cascade", config=config),
        backbone=resolve(c.backbones, config.model.backbone, key="model.backbone",
                         config=config),
        tower=resolve(c.towers, config.model.tower, key="model.tower", config=config),
        interactions=interactions,
        losses=build_losses(config, engine, graph),
        sample_weighting=sample_weighting.build(config, graph, sample_weighting.params),
        loss_weighting=loss_weighting.build(config, graph, loss_weighting.params),
        ranking=build_ranking(config, engine, graph, fusion),
        fusion=fusion, metrics=metrics, **resolve_calibrators(config, engine, graph),
    )


def _choices(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "the config has none"


def share_encoders(config: EngineConfig, pipeline: FeaturePipeline) -> None:
    """Hand each encoder that :attr:`~rankengine.FeatureEncoder.shares_with` a feature that
    feature's encoder (an ``ids`` feature of the same embedding dim)."""
    specs = {f.name: (i, f, e) for i, (f, e) in enumerate(
        zip(pipeline.features, pipeline.encoders, strict=True))}
    for i, (feature, encoder) in enumerate(zip(pipeline.features, pipeline.encoders,
                                               strict=True)):
        name = encoder.shares_with
        if name is None:
            continue
        key = f"features[{i}].share_with"
        if name not in specs or specs[name][2].output != "ids":
            ids = [f.name for f, e in zip(pipeline.features, pipeline.encoders, strict=True)
                   if e.output == "ids"]
            raise ConfigError(f"expected an ids feature ({_choices(ids)}); found "
                              f"{name!r}", source=config.source, key=key)
        target = specs[name][1]
        if target.dim != feature.dim:
            raise ConfigError(f"a shared table has one embedding dim: '{name}' has dim "
                              f"{target.dim}, '{feature.name}' has dim {feature.dim}",
                              source=config.source, key=f"features[{i}].dim")
        encoder.share(specs[name][2])


def resolve_interactions(config: EngineConfig, engine: Engine, pipeline: FeaturePipeline
                         ) -> list[tuple[InteractionSpec, Resolved[InteractionFactory]]]:
    """``[[model.interactions]]`` checked against the features, each sequence's columns
    declared aligned to the pipeline."""
    outputs = {f.name: (f, e) for f, e in zip(pipeline.features, pipeline.encoders,
                                              strict=True)}
    out: list[tuple[InteractionSpec, Resolved[InteractionFactory]]] = []
    read: dict[str, str] = {}
    for i, spec in enumerate(config.model.interactions):
        key = f"model.interactions[{i}]"
        if spec.name in outputs or any(s.name == spec.name for s, _ in out):
            raise ConfigError(f"name '{spec.name}' is already a feature or interaction",
                              source=config.source, key=f"{key}.name")
        lengths = set()
        for name in spec.sequence:
            feature, encoder = outputs.get(name, (None, None))
            if feature is None or encoder is None or encoder.output != "id_list":
                lists = [n for n, (_, e) in outputs.items() if e.output == "id_list"]
                raise ConfigError(f"expected an id_list feature ({_choices(lists)})"
                                  f"; found {name!r}", source=config.source,
                                  key=f"{key}.sequence")
            if name in read:
                raise ConfigError(f"feature '{name}' is already read by interaction "
                                  f"'{read[name]}'", source=config.source,
                                  key=f"{key}.sequence")
            read[name] = spec.name
            lengths.add(int(encoder.length))
        if len(lengths) > 1:
            raise ConfigError(f"the features of one sequence are aligned element by element "
                              f"and need one max_len; found {sorted(lengths)}",
                              source=config.source, key=f"{key}.sequence")
        for name in spec.target:
            feature, encoder = outputs.get(name, (None, None))
            if feature is None or encoder is None or encoder.output != "ids":
                ids = [n for n, (_, e) in outputs.items() if e.output == "ids"]
                raise ConfigError(f"expected an ids feature ({_choices(ids)}); "
                                  f"found {name!r}", source=config.source, key=f"{key}.target")
        resolved = resolve(engine.components.interactions, spec.kind, spec.params, key=key,
                           config=config)
        pipeline.aligned[spec.name] = list(spec.sequence)
        out.append((spec, resolved))
    return out


def resolve_calibrators(config: EngineConfig, engine: Engine,
                        graph: TaskGraph) -> dict[str, Resolved[CalibratorFactory] | None]:
    """``[calibration]``'s calibrators, each checked to calibrate the node type it is for."""
    section, table = config.calibration, engine.components.calibrators
    if section.kind == DEFAULT_KIND:  # no calibrator plugin enabled (see complete_config)
        return {"calibrator": None, "regression_calibrator": None}
    found: dict[str, Resolved[CalibratorFactory] | None] = {}
    for field, ref, node_type, key in (
            ("calibrator", ComponentRef(kind=section.kind, **section.params), "binary",
             "calibration"),
            ("regression_calibrator", section.regression, "regression",
             "calibration.regression")):
        if ref is None:
            found[field] = None
            continue
        resolved = resolve(table, ref, key=key, config=config)
        types = getattr(resolved.factory, "task_types", ("binary",))
        if node_type not in types and any(n.type == node_type for n in graph.nodes):
            raise ConfigError(f"calibrator '{resolved.name}' is for {' / '.join(types)} "
                              f"nodes; {key} calibrates {node_type} nodes",
                              source=config.source, key=key)
        found[field] = resolved
    return found


def build_graph(config: EngineConfig, engine: Engine) -> TaskGraph:
    """Template (if any) + ``[tasks]``, edited by ``rankengine_modify_task_graph``, validated."""
    specs: dict[str, TaskSpec] = {}
    if config.task_graph.template is not None:
        template = engine.components.task_graphs.get(
            config.task_graph.template, key="task_graph.template", source=config.source
        ).factory
        for name, table in template.items():
            merged = {**table, **config.tasks[name].model_dump(exclude_unset=True)} \
                if name in config.tasks else dict(table)
            specs[name] = TaskSpec.model_validate(merged)
    for name, spec in config.tasks.items():
        specs.setdefault(name, spec)
    engine.hooks.modify_task_graph(specs, config)
    for name, spec in specs.items():  # a hook's model_copy(update=...) skips validation
        try:
            specs[name] = TaskSpec.model_validate(dict(spec))
        except ValidationError as exc:
            raise ConfigError(f"after rankengine_modify_task_graph: {one_line(str(exc))}",
                              source=config.source, key=f"tasks.{name}") from None
    try:
        return TaskGraph(specs)
    except GraphError as exc:
        raise GraphError(f"{config.source}: [tasks] {exc}") from None


def build_fusion(config: EngineConfig, engine: Engine, graph: TaskGraph) -> Fusion:
    """The configured fusion over the graph's tasks. Its ``Params`` model validates the
    values; its constructor, given the task names, refuses what names no task: that
    ``ValueError`` becomes a :class:`ConfigError` on ``[fusion]``, whichever plugin
    registered the fusion. (Also used to rebuild a fusion with other weights.)"""
    fusion = resolve(engine.components.fusions, config.fusion.kind, config.fusion.params,
                     key="fusion", config=config)
    built: Fusion = fusion.build(config, list(graph.names), fusion.params)
    return built


def build_losses(config: EngineConfig, engine: Engine, graph: TaskGraph) -> list[PointwiseLoss]:
    """Each task's pointwise loss, in graph order (a template's tasks included); a task with
    several is their weighted sum (:class:`WeightedLosses`)."""
    table = engine.components.losses
    losses: list[PointwiseLoss] = []
    for node in graph.nodes:
        key = f"tasks.{node.name}.loss"
        refs: list[ComponentRef | str] = list(node.spec.losses) or [
            default_loss(table, node.type, key=key, source=config.source)]
        several = isinstance(node.spec.loss, list)
        parts = [build_loss(config, table, node.name, node.type, ref,
                            f"{key}[{i}]" if several else key)
                 for i, ref in enumerate(refs)]
        if len(parts) == 1:
            losses.append(parts[0])
            continue
        links = {(type(p).to_value, type(p).from_value) for p in parts}
        if len(links) > 1:
            raise ConfigError(f"the losses of '{node.name}' map its head to values differently "
                              f"(their links differ); combine losses of one link",
                              source=config.source, key=key)
        losses.append(WeightedLosses(parts, node.spec.loss_weights or [1.0] * len(parts)))
    return losses


def build_loss(config: EngineConfig, table: ComponentTable[LossFactory], task: str,
               task_type: str, ref: ComponentRef | str, key: str) -> PointwiseLoss:
    """One pointwise loss of a task, checked to be pointwise and to fit the task's type."""
    resolved = resolve(table, ref, key=key, config=config)
    pointwise = resolved.build(config, resolved.params)
    if isinstance(pointwise, RankingLoss):
        raise ConfigError(f"'{resolved.name}' is a ranking loss; use it in [loss.ranking] "
                          f"and give the task a pointwise loss", source=config.source,
                          key=key)
    if not isinstance(pointwise, PointwiseLoss):
        raise ConfigError(f"'{resolved.name}' is a {type(pointwise).__name__}, not a "
                          f"rankengine.PointwiseLoss", source=config.source, key=key)
    if task_type not in pointwise.task_types:
        default = default_loss(table, task_type, key=key, source=config.source)
        raise ConfigError(f"loss '{resolved.name}' is for "
                          f"{' / '.join(pointwise.task_types)} tasks, but '{task}' is "
                          f"a {task_type} task (its default loss is '{default}')",
                          source=config.source, key=key)
    return pointwise


class WeightedLosses(PointwiseLoss):
    """Several pointwise losses of one task: ``sum_k w_k loss_k`` per sample, with the link
    they share."""

    def __init__(self, losses: Sequence[PointwiseLoss], weights: Sequence[float]) -> None:
        super().__init__()
        self.losses, self.weights = list(losses), list(weights)

    def __call__(self, prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor:
        total = self.weights[0] * self.losses[0](prediction, target)
        for weight, loss in zip(self.weights[1:], self.losses[1:], strict=True):
            total = total + weight * loss(prediction, target)
        return total

    def to_value(self, head_output: torch.Tensor) -> torch.Tensor:
        return self.losses[0].to_value(head_output)

    def from_value(self, value: torch.Tensor) -> torch.Tensor:
        return self.losses[0].from_value(value)


def build_ranking(config: EngineConfig, engine: Engine, graph: TaskGraph,
                  fusion: Fusion) -> RankingObjective | None:
    """``[loss.ranking]``'s objective (None without one); it scores with the plan's fusion."""
    spec = config.loss.ranking
    if spec is None:
        return None
    if not config.data.group:
        raise ConfigError("a ranking loss needs request groups: set [data] group (e.g. "
                          "\"request_id\")", source=config.source, key="loss.ranking")
    resolved = resolve(engine.components.losses, spec.kind, spec.params, key="loss.ranking",
                       config=config)
    loss = resolved.build(config, resolved.params)
    if not isinstance(loss, RankingLoss):
        what = "a pointwise loss" if isinstance(loss, PointwiseLoss) \
            else f"a {type(loss).__name__}"
        raise ConfigError(f"'{resolved.name}' is {what}; [loss.ranking] needs a ranking loss "
                          f"(a rankengine.RankingLoss; `rankengine plugins` lists the losses)",
                          source=config.source, key="loss.ranking.kind")
    return RankingObjective(config, graph, loss, fusion)


__all__ = ["Plan", "Resolved", "build_fusion", "build_graph", "build_losses", "construct",
           "engine_for", "make_plan", "resolve"]
