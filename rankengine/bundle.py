"""A model and everything that gives its outputs meaning, as one type.

:class:`ModelBundle` is what training returns, what loading an artifact returns, what serving
back ends and exporters receive, and (inside :class:`TrainContext`) what lifecycle hooks see.
Its plan (:class:`rankengine.plan.Plan`) holds the config, the plugins, the task graph, the
feature pipeline and the fusion; a loaded bundle also knows its artifact, a trained one its
:class:`TrainResult`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankengine.config import EngineConfig
    from rankengine.data.pipeline import FeaturePipeline
    from rankengine.evaluate import Metrics
    from rankengine.graph import TaskGraph
    from rankengine.interfaces import Fusion
    from rankengine.model.assembly import RankingModel
    from rankengine.plan import Plan
    from rankengine.pluginmanager import Engine


@dataclass
class TrainResult:
    """What a training run measured."""

    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    metrics: dict[str, Metrics]
    train_seconds: float
    samples_per_second: float
    label_reports: dict[str, dict[str, Any]]
    data_sources: dict[str, str]
    loss_weights: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    #: task → {"experts": names, "weights": mean gate weight per expert} (gated backbones)
    gate_stats: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    #: with a calibrator: ``metrics`` are the calibrated model's, these the model's own
    uncalibrated_metrics: dict[str, Metrics] = field(default_factory=dict)
    #: with a calibrator: its kind, the split it was fitted on, rows fitted per node
    calibration: dict[str, Any] = field(default_factory=dict)
    #: task → odds factor of the sample weighting that the training loss undid (none: 1)
    odds_correction: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelBundle:
    """A model with its plan; where it came from says whether it was trained or loaded."""

    plan: Plan
    model: RankingModel
    #: the artifact directory it was loaded from (None: trained in this process)
    path: Path | None = None
    #: the artifact's manifest (plugins and their versions, files and checksums)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: the artifact's metrics.json
    metrics: dict[str, Any] = field(default_factory=dict)
    #: what training measured (None: loaded)
    result: TrainResult | None = None

    @property
    def config(self) -> EngineConfig:
        return self.plan.config

    @property
    def engine(self) -> Engine:
        return self.plan.engine

    @property
    def training(self) -> TrainResult:
        """What training measured; an error for a bundle loaded from an artifact (saving and
        registering need a trained one)."""
        if self.result is None:
            from rankengine.errors import ArtifactError

            raise ArtifactError(f"{self.path}: a loaded model has no training result to save "
                                f"or register; load it to score, train to register")
        return self.result

    def replace(self, *, config: EngineConfig | None = None,
                fusion: Fusion | None = None) -> ModelBundle:
        """A copy with another config (e.g. data paths moved) or fusion (other weights); the
        model, pipeline and plugins are shared."""
        plan = dataclasses.replace(self.plan, config=config or self.plan.config,
                                   fusion=fusion or self.plan.fusion)
        return dataclasses.replace(self, plan=plan)

    @property
    def graph(self) -> TaskGraph:
        return self.plan.graph

    @property
    def pipeline(self) -> FeaturePipeline:
        return self.plan.pipeline

    @property
    def fusion(self) -> Fusion:
        return self.plan.fusion


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class TrainContext:
    """What lifecycle hooks see: the bundle being trained and the run around it."""

    bundle: ModelBundle
    #: rows per split (train, valid, test)
    rows: dict[str, int]
    #: under torchrun: this process's rank and the number of ranks (observers that print or
    #: write usually do so on rank 0 only)
    rank: int = 0
    world_size: int = 1
    #: where observers write progress lines: stderr, or nowhere under ``train --quiet``
    log: Callable[[str], None] = _stderr

    @property
    def config(self) -> EngineConfig:
        return self.bundle.config

    @property
    def engine(self) -> Engine:
        return self.bundle.engine

    @property
    def graph(self) -> TaskGraph:
        return self.bundle.graph

    @property
    def pipeline(self) -> FeaturePipeline:
        return self.bundle.pipeline

    @property
    def model(self) -> RankingModel:
        return self.bundle.model
