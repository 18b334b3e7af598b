"""Fusion weights that a registry version's tag sets: written by ``rankengine tune-fusion
--write`` or ``rankengine train --tag fusion_weights=...``, applied wherever a version loads
(predict, rank, evaluate, serve).

The tag value is ``task=w,...`` (or a JSON object of task → weight); it replaces the weights of
the version's own fusion kind, validated exactly like ``[fusion] weights``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rankengine.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from rankengine.bundle import ModelBundle
    from rankengine.config import EngineConfig
    from rankengine.graph import TaskGraph
    from rankengine.interfaces import Fusion
    from rankengine.pluginmanager import Engine

#: Version tag holding fusion weights that replace the config's at load time (``task=w,...``).
FUSION_WEIGHTS_TAG = "fusion_weights"


def format_fusion_weights(weights: Mapping[str, float]) -> str:
    """``click=1,order=0.35`` (the ``fusion_weights`` tag value)."""
    return ",".join(f"{task}={w:.6g}" for task, w in weights.items())


def parse_fusion_weights(raw: Any, *, where: str) -> dict[str, float]:
    """A ``fusion_weights`` tag: ``task=w,...`` or a JSON object of task → weight."""
    items: list[tuple[str, Any]]
    if isinstance(raw, Mapping):
        items = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, str):
        items = []
        for part in raw.split(","):
            task, sep, value = part.partition("=")
            if not sep or not task.strip():
                raise ArtifactError(f"{where}: expected task=weight,... , found {raw!r}")
            items.append((task.strip(), value.strip()))
    else:
        raise ArtifactError(f"{where}: expected task=weight,... , found {raw!r}")
    out: dict[str, float] = {}
    for task, value in items:
        try:
            weight = float(value)
        except (TypeError, ValueError):
            raise ArtifactError(f"{where}: weight of '{task}' is not a number: {value!r}") from None
        if not math.isfinite(weight):
            raise ArtifactError(f"{where}: weight of '{task}' is not finite: {value!r}")
        out[task] = weight
    return out


def fusion_with_weights(config: EngineConfig, engine: Engine, graph: TaskGraph, raw: Any, *,
                        where: str) -> tuple[EngineConfig, Fusion]:
    """``config`` with its fusion's weights replaced by the tag value ``raw``, and that fusion
    built: validated exactly like ``[fusion] weights`` (each a finite number >= 0 naming a
    task), errors naming ``where``."""
    from rankengine.config import FusionSection
    from rankengine.plan import build_fusion

    weights = parse_fusion_weights(raw, where=where)
    kind = config.fusion.kind
    component = engine.components.fusions.get(kind, key="fusion.kind", source=config.source)
    if "weights" not in component.params.model_fields:
        raise ArtifactError(f"{where}: fusion '{kind}' takes no weights")
    section = FusionSection.model_validate(
        {**config.fusion.params, "kind": kind, "weights": weights})
    changed = config.model_copy(update={"fusion": section, "source": where})
    try:
        fusion = build_fusion(changed, engine, graph)
    except ConfigError as exc:
        raise ArtifactError(str(exc)) from None
    return changed.model_copy(update={"source": config.source}), fusion


def apply_fusion_weights(loaded: ModelBundle, raw: Any, *, where: str) -> ModelBundle:
    """The loaded model with its fusion rebuilt from the same kind and these weights."""
    config, fusion = fusion_with_weights(loaded.config, loaded.engine, loaded.graph, raw,
                                         where=where)
    return loaded.replace(config=config, fusion=fusion)


__all__ = [
    "FUSION_WEIGHTS_TAG",
    "apply_fusion_weights",
    "format_fusion_weights",
    "fusion_with_weights",
    "parse_fusion_weights",
]
