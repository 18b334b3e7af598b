"""rankengine: a plugin-based multi-task recommender ranking engine.

This module is the public API. Plugins (built-in ones included) import only from here.
"""

from rankengine.backend import ServingBackend
from rankengine.bundle import ModelBundle, TrainContext, TrainResult
from rankengine.components import Component, NoParams, Params, Register
from rankengine.config import EngineConfig, FeatureSpec, TaskSpec, Width, load_config
from rankengine.data.batching import ModelInput
from rankengine.data.source import DataSource
from rankengine.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    GraphError,
    PluginError,
    RankEngineError,
    suggest,
)
from rankengine.graph import TaskGraph
from rankengine.hookspecs import HOOK_API_VERSION, hookimpl
from rankengine.interfaces import (
    Backbone,
    BackboneFactory,
    Cascade,
    CascadeFactory,
    CascadeOutput,
    EncoderFactory,
    FeatureEncoder,
    Fusion,
    FusionFactory,
    HeadSpec,
    LossFactory,
    LossWeighting,
    LossWeightingFactory,
    Metric,
    NodePrediction,
    PairwiseLoss,
    PointwiseLoss,
    RankingLoss,
    SampleWeighting,
    SampleWeightingFactory,
    SharedParameters,
    TaskGraphTemplate,
    TowerFactory,
    Undefined,
    sample_pairs,
    undefined,
)
from rankengine.layers import Activation, CrossNetwork, ExpertBank, mlp
from rankengine.version import __version__

__all__ = [
    "HOOK_API_VERSION",
    "Activation",
    "ArtifactError",
    "Backbone",
    "BackboneFactory",
    "Cascade",
    "CascadeFactory",
    "CascadeOutput",
    "Component",
    "ConfigError",
    "CrossNetwork",
    "DataError",
    "DataSource",
    "EncoderFactory",
    "EngineConfig",
    "ExpertBank",
    "FeatureEncoder",
    "FeatureSpec",
    "Fusion",
    "FusionFactory",
    "GraphError",
    "HeadSpec",
    "LossFactory",
    "LossWeighting",
    "LossWeightingFactory",
    "Metric",
    "ModelBundle",
    "ModelInput",
    "NoParams",
    "NodePrediction",
    "PairwiseLoss",
    "Params",
    "PluginError",
    "PointwiseLoss",
    "RankEngineError",
    "RankingLoss",
    "Register",
    "SampleWeighting",
    "SampleWeightingFactory",
    "ServingBackend",
    "SharedParameters",
    "TaskGraph",
    "TaskGraphTemplate",
    "TaskSpec",
    "TowerFactory",
    "TrainContext",
    "TrainResult",
    "Undefined",
    "Width",
    "__version__",
    "hookimpl",
    "load_config",
    "mlp",
    "sample_pairs",
    "suggest",
    "undefined",
]
