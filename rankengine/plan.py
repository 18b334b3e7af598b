"""Planning: turn a validated config into built components, each plugin ``ValueError``
becoming a config error that names the key."""

from __future__ import annotations

from typing import Any

from rankengine.config import EngineConfig, default_loss, resolve_component
from rankengine.errors import ConfigError, GraphError
from rankengine.graph import TaskGraph
from rankengine.interfaces import Fusion, PointwiseLoss, RankingLoss
from rankengine.pluginmanager import Engine


def construct(factory: Any, key: str, config: EngineConfig, *args: Any) -> Any:
    try:
        return factory(*args)
    except (ValueError, GraphError) as exc:
        raise ConfigError(str(exc), source=config.source, key=key) from None


def build_fusion(config: EngineConfig, engine: Engine, graph: TaskGraph) -> Fusion:
    """The configured fusion over the graph's tasks (training, loading and serving build it
    here). Its ``Params`` model validates the values; its constructor, given the task names,
    refuses what names no task: that ``ValueError`` becomes a :class:`ConfigError` on
    ``[fusion]``, whichever plugin registered the fusion."""
    factory, params = resolve_component(engine.components.fusions, config.fusion.kind,
                                        config.fusion.params, key="fusion", source=config.source)
    fusion: Fusion = construct(factory, "fusion", config, list(graph.names), params)
    return fusion


def build_losses(config: EngineConfig, engine: Engine, graph: TaskGraph) -> list[PointwiseLoss]:
    """Each task's pointwise loss, in graph order."""
    losses = []
    for node in graph.nodes:
        key = f"tasks.{node.name}.loss"
        ref = node.spec.loss
        name = ref.kind if ref else default_loss(engine.components.losses, node.type, key=key,
                                                 source=config.source)
        factory, params = resolve_component(engine.components.losses, name,
                                            ref.params if ref else {}, key=key,
                                            source=config.source)
        pointwise = construct(factory, key, config, params)
        if isinstance(pointwise, RankingLoss):
            raise ConfigError(f"'{name}' is a ranking loss; use it in [loss.ranking] and give "
                              f"the task a pointwise loss", source=config.source, key=key)
        if not isinstance(pointwise, PointwiseLoss):
            raise ConfigError(f"'{name}' is a {type(pointwise).__name__}, not a "
                              f"rankengine.PointwiseLoss", source=config.source, key=key)
        if node.type not in pointwise.task_types:
            default = default_loss(engine.components.losses, node.type, key=key,
                                   source=config.source)
            raise ConfigError(f"loss '{name}' is for {' / '.join(pointwise.task_types)} "
                              f"tasks, but '{node.name}' is a {node.type} task (its default "
                              f"loss is '{default}')", source=config.source, key=key)
        losses.append(pointwise)
    return losses
