"""Typed name tables for everything plugins contribute, and the interfaces components implement.

The core owns each table: a registration hook receives a :class:`Register` bound to one table and
one plugin, so duplicates are caught with both plugins named and unknown names are answered with
the available ones and a close match.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from rankengine.errors import (
    DataError,
    PluginError,
    UnknownComponentError,
    unknown_name_message,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from rankengine.config import FeatureSpec
    from rankengine.graph import TaskGraph


class Params(BaseModel):
    """Base for a component's parameters: unknown keys are errors, values are type-checked."""

    # A non-finite parameter is always a mistake; refusing it here covers third-party plugins.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoParams(Params):
    """A component that takes no parameters."""


F = TypeVar("F")


@dataclass(frozen=True)
class Component(Generic[F]):
    """One registered component: its factory, its parameter model and who registered it."""

    family: str
    name: str
    factory: F
    params: type[Params]
    plugin: str
    help: str = ""

    def parse_params(self, raw: Mapping[str, Any]) -> Params:
        return self.params.model_validate(dict(raw))


class ComponentTable(Generic[F]):
    """Name → component for one family (backbones, towers, ...)."""

    def __init__(self, family: str, singular: str) -> None:
        self.family = family
        self.singular = singular
        self._items: dict[str, Component[F]] = {}

    def add(self, component: Component[F]) -> None:
        if not component.name or not component.name.replace("_", "").replace("-", "").isalnum():
            raise PluginError(
                f"plugin '{component.plugin}' registered {self.singular} name "
                f"{component.name!r}; names must be non-empty letters, digits, '_' or '-'"
            )
        existing = self._items.get(component.name)
        if existing is not None:
            raise PluginError(
                f"{self.singular} '{component.name}' is registered twice: by plugin "
                f"'{existing.plugin}' and by plugin '{component.plugin}'; disable one of them "
                f"in [engine] disable or rename the component"
            )
        self._items[component.name] = component

    def get(self, name: str, *, key: str | None = None, source: str | None = None) -> Component[F]:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownComponentError(
                unknown_name_message(self.singular, name, self._items), source=source, key=key
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Component[F]]:
        return iter(sorted(self._items.values(), key=lambda c: c.name))

    def names(self) -> list[str]:
        return sorted(self._items)


class Register(Generic[F]):
    """The ``register`` object a registration hook receives.

    Call it once per component: ``register("mmoe", build_mmoe, params=MMoEParams, help="...")``.
    """

    def __init__(self, table: ComponentTable[F], plugin: str) -> None:
        self._table = table
        self._plugin = plugin

    @property
    def family(self) -> str:
        return self._table.family

    def __call__(
        self, name: str, factory: F, *, params: type[Params] = NoParams, help: str = ""
    ) -> None:
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise PluginError(
                f"plugin '{self._plugin}' registered {self._table.singular} '{name}' with "
                f"params={params!r}; expected a subclass of rankengine.Params"
            )
        self._table.add(Component(self._table.family, name, factory, params, self._plugin, help))


# --------------------------------------------------------------------------------------------
# Feature encoders
# --------------------------------------------------------------------------------------------

EncoderOutput = Literal["categorical", "dense", "sequence"]


class FeatureEncoder(ABC):
    """Turns one raw column into model input; fitted on the training split, saved with the model.

    ``output`` says what :meth:`transform` returns:

    - ``categorical``: int64 ``[N]`` ids in ``[0, cardinality)``;
    - ``dense``: float32 ``[N, width]``;
    - ``sequence``: int64 ``[N, max_len]`` ids in ``[0, cardinality)`` where 0 is padding.
    """

    output: ClassVar[EncoderOutput]

    def __init__(self, feature: FeatureSpec, params: Any) -> None:
        self.feature = feature
        self.params = params

    @abstractmethod
    def fit(self, column: pa.ChunkedArray) -> None:
        """Learn vocabularies / normalisers from the training column."""

    @abstractmethod
    def transform(self, column: pa.ChunkedArray) -> np.ndarray:
        """Encode a column; must be vectorised and accept values never seen in :meth:`fit`."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-serialisable fitted state."""

    @abstractmethod
    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    @property
    def cardinality(self) -> int:
        """Number of ids (categorical and sequence outputs)."""
        raise NotImplementedError(f"{type(self).__name__} has no cardinality")

    @property
    def width(self) -> int:
        """Number of float columns (dense output)."""
        raise NotImplementedError(f"{type(self).__name__} has no width")


EncoderFactory = Callable[["FeatureSpec", Any], FeatureEncoder]


# --------------------------------------------------------------------------------------------
# Backbones and towers
# --------------------------------------------------------------------------------------------


class Backbone(nn.Module):
    """Shared representation: ``forward(x[B, D]) -> list of num_outputs tensors [B, output_dim]``.

    Backbones that gate experts expose :meth:`gate_weights` for analysis (which experts each
    head uses) and :meth:`last_shared_parameters` for GradNorm.
    """

    output_dim: int

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last layer every head depends on; default: the last ``nn.Linear``."""
        linears = [m for m in self.modules() if isinstance(m, nn.Linear)]
        return list(linears[-1].parameters()) if linears else list(self.parameters())

    def gate_weights(self) -> tuple[list[str], torch.Tensor] | None:
        """Expert names and the last forward's gate weights ``[B, num_outputs, E]``, if any."""
        return None


BackboneFactory = Callable[..., Backbone]
"""Called as ``factory(params, input_dim=int, num_outputs=int)``."""

TowerFactory = Callable[..., nn.Module]
"""Called as ``factory(params, input_dim=int)``; the module maps ``[B, input_dim] -> [B]``."""


# --------------------------------------------------------------------------------------------
# Cascades
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadSpec:
    """One model head (one tower). ``role`` tells the cascade how the head is used."""

    name: str
    node: str
    role: Literal["main", "given_via", "given_not_via"] = "main"


@dataclass
class CascadeOutput:
    """Per-node predictions, each ``[B, T]`` in graph order, in log space for stable losses.

    ``log_p``/``log_q`` are log p(node) and log(1 - p(node)) over the entire space;
    ``cond_log_p``/``cond_log_q`` are the same conditional on the parent having happened.
    For a regression node ``value`` holds E[value | parent] and the log columns are 0.
    """

    log_p: torch.Tensor
    log_q: torch.Tensor
    cond_log_p: torch.Tensor
    cond_log_q: torch.Tensor
    value: torch.Tensor

    def entire(self, graph: TaskGraph) -> torch.Tensor:
        """Entire-space p(node) for binary nodes, p(parent)·E[value | parent] for regression."""
        out = self.log_p.exp()
        if graph.regression_index:
            reg = torch.tensor(graph.regression_index, device=out.device)
            parent_p = self._parent_probability(graph, graph.regression_index)
            out = out.index_copy(1, reg, parent_p * self.value.index_select(1, reg))
        return out

    def conditional(self, graph: TaskGraph) -> torch.Tensor:
        """p(node | parent) for binary nodes, E[value | parent] for regression nodes."""
        out = self.cond_log_p.exp()
        if graph.regression_index:
            reg = torch.tensor(graph.regression_index, device=out.device)
            out = out.index_copy(1, reg, self.value.index_select(1, reg))
        return out

    def _parent_probability(self, graph: TaskGraph, reg: list[int]) -> torch.Tensor:
        parents = [graph.parent_index[i] for i in reg]
        ones = torch.ones(self.log_p.shape[0], 1, device=self.log_p.device)
        cols = [ones if p < 0 else self.log_p[:, p : p + 1].exp() for p in parents]
        return torch.cat(cols, dim=1)


class Cascade(ABC):
    """Decides the heads a graph needs and composes head outputs into task probabilities."""

    def __init__(self, graph: TaskGraph, params: Any) -> None:
        self.graph = graph
        self.params = params

    @abstractmethod
    def heads(self) -> list[HeadSpec]:
        """The heads (towers) the model must build, in a fixed order."""

    @abstractmethod
    def compose(self, head_outputs: list[torch.Tensor]) -> CascadeOutput:
        """Head outputs (logits, or raw values for regression heads) → per-node predictions."""

    def loss_space(self, node: str) -> Literal["entire", "conditional"]:
        """Where a binary node's loss is computed: over all rows, or over parent-positive rows."""
        return "entire"

    def conditional_loss_weight(self, node: str) -> float:
        """Weight of an extra loss on p(node | parent) over the parent-positive rows.

        0 (the default) trains entire-space nodes only through the product, as ESMM does.
        """
        return 0.0


CascadeFactory = Callable[["TaskGraph", Any], Cascade]


# --------------------------------------------------------------------------------------------
# Losses, weightings, fusion, metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodePrediction:
    """What a pointwise loss sees for one node: log p, log(1 - p) and the regression value."""

    log_p: torch.Tensor
    log_q: torch.Tensor
    value: torch.Tensor


PointwiseLoss = Callable[[NodePrediction, torch.Tensor], torch.Tensor]
"""``loss(prediction, target[B]) -> per-sample loss [B]``."""

LossFactory = Callable[[Any], PointwiseLoss]


@dataclass(frozen=True)
class SharedParameters:
    """What gradient-level weightings look at: every parameter that all tasks share (the
    feature embeddings and the backbone) and the backbone's last shared layer (GradNorm)."""

    all: list[nn.Parameter]
    last: list[nn.Parameter]


class RankingLoss(ABC):
    """A learning-to-rank loss over request groups, registered through
    ``rankengine_register_losses`` like pointwise losses and selected by ``[loss.ranking]``.

    ``scores [B]`` are the ranking scores (a task's logit or the log fused score),
    ``relevance [B]`` graded relevance (>= 0), ``groups [B]`` request ids with each group's rows
    contiguous. Returns a scalar (0 when the batch has nothing to rank).
    """

    @abstractmethod
    def __call__(self, scores: torch.Tensor, relevance: torch.Tensor, groups: torch.Tensor,
                 *, max_pairs_per_group: int, generator: torch.Generator | None = None
                 ) -> torch.Tensor: ...


def sample_pairs(relevance: torch.Tensor, groups: torch.Tensor, max_pairs_per_group: int,
                 generator: torch.Generator | None = None, *, ties: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row pairs ``(i, j)`` of one group with ``relevance[i] > relevance[j]`` (and, with
    ``ties``, equal relevance and ``i < j``), at most ``max_pairs_per_group`` per group drawn
    uniformly at random. Vectorised: one ``[B, B]`` comparison, no loop over groups."""
    same = groups.unsqueeze(1) == groups.unsqueeze(0)
    order = relevance.unsqueeze(1) > relevance.unsqueeze(0)
    if ties:
        upper = torch.ones_like(same).triu(diagonal=1)
        order = order | ((relevance.unsqueeze(1) == relevance.unsqueeze(0)) & upper)
    i, j = (same & order).nonzero(as_tuple=True)
    if len(i) == 0:
        return i, j
    priority = torch.rand(len(i), generator=generator)
    by_priority = torch.argsort(priority)
    by_group = by_priority[torch.sort(groups[i][by_priority], stable=True).indices]
    pair_groups = groups[i][by_group]
    _, counts = torch.unique_consecutive(pair_groups, return_counts=True)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    keep = by_group[(torch.arange(len(by_group)) - first) < max_pairs_per_group]
    return i[keep], j[keep]


class PairwiseLoss(RankingLoss):
    """A loss on score differences ``s_i - s_j`` of sampled pairs, averaged over pairs.
    Subclasses implement :meth:`pair_loss`; ``ties`` adds equal-relevance pairs."""

    ties = False

    @abstractmethod
    def pair_loss(self, difference: torch.Tensor, tied: torch.Tensor) -> torch.Tensor:
        """Per-pair loss of ``s_i - s_j``; ``tied`` is True for equal-relevance pairs."""

    def __call__(self, scores: torch.Tensor, relevance: torch.Tensor, groups: torch.Tensor,
                 *, max_pairs_per_group: int, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        i, j = sample_pairs(relevance, groups, max_pairs_per_group, generator, ties=self.ties)
        if len(i) == 0:
            return scores.sum() * 0.0
        return self.pair_loss(scores[i] - scores[j], relevance[i] == relevance[j]).mean()


class LossWeighting(nn.Module):
    """Combines per-task losses ``[T]`` (graph order) into the scalar that is optimised.

    Weightings with learnable state (uncertainty weighting) hold it as parameters; the trainer
    adds them to the optimiser. :meth:`after_epoch` sees the mean training loss per task.
    Gradient-level methods (GradNorm, PCGrad, Pareto) override :meth:`backward`.
    """

    def __init__(self, graph: TaskGraph, params: Any) -> None:
        super().__init__()
        self.graph = graph
        self.tasks = list(graph.names)
        self.params = params

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def current_weights(self) -> dict[str, float]:
        raise NotImplementedError

    def backward(self, losses: torch.Tensor, shared: SharedParameters) -> torch.Tensor:
        """Fill ``.grad`` of every trainable parameter for one step; returns the combined loss.

        The default is ``combine(losses).backward()``; the optimiser steps afterwards.
        """
        total = self.combine(losses)
        total.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        return total

    def after_epoch(self, epoch: int, mean_losses: dict[str, float]) -> None:
        """Update state between epochs (DWA-style schemes); default: nothing."""


LossWeightingFactory = Callable[["TaskGraph", Any], LossWeighting]


class SampleWeighting(ABC):
    """Per-sample, per-task non-negative weights ``[B, T]`` that multiply the pointwise losses."""

    def __init__(self, graph: TaskGraph, params: Any) -> None:
        self.graph = graph
        self.params = params

    @abstractmethod
    def weights(self, labels: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``labels`` are entire-space labels ``[B, T]``; ``extras`` named float columns."""

    def columns(self) -> list[str]:
        """Raw data columns this weighting needs in ``extras``."""
        return []

    def check(self, extras: Mapping[str, np.ndarray], where: str) -> None:
        """Refuse unusable weight columns once, before training (row numbers are 0-based rows
        of ``where``); default: every column in :meth:`columns` must be finite."""
        for name in self.columns():
            values = extras[name]
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad):
                raise DataError(f"{where}: column '{name}' row {bad[0]}: expected a finite "
                                f"number for the sample weighting, found {values[bad[0]]} "
                                f"({len(bad):,} such rows)")


SampleWeightingFactory = Callable[["TaskGraph", Any], SampleWeighting]


class Fusion(ABC):
    """Blends per-task entire-space predictions ``[B, T]`` into one ranking score ``[B]``."""

    def __init__(self, tasks: list[str], params: Any) -> None:
        self.tasks = tasks
        self.params = params

    @abstractmethod
    def __call__(self, predictions: torch.Tensor) -> torch.Tensor: ...


FusionFactory = Callable[[list[str], Any], Fusion]


class Undefined(float):
    """A metric value that does not exist on this data: NaN that says why.

    Made by :func:`undefined`; the core records the metric as undefined (``null`` in JSON) with
    the reason in the task's ``"undefined"`` entry instead of a number.
    """

    reason: str

    def __new__(cls, reason: str) -> Undefined:
        value = super().__new__(cls, math.nan)
        value.reason = str(reason)
        return value

    def __repr__(self) -> str:
        return f"undefined({self.reason!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Undefined, (self.reason,))


def undefined(reason: str) -> float:
    """What a metric function returns when the metric is undefined on its input, e.g.
    ``undefined("no positive labels")``: NaN to arithmetic, with the reason for reports."""
    return Undefined(reason)


@dataclass(frozen=True)
class Metric:
    """An evaluation metric: ``fn(labels, predictions, groups) -> float`` on numpy arrays.

    ``groups`` is an int64 group id per row when ``needs_group`` (GAUC), else None. Where the
    metric does not exist on the rows it is given (AUC without a negative label, a mean over no
    rows), ``fn`` returns :func:`undefined` with the reason (a plain NaN also counts as
    undefined); the core never calls it on zero rows.
    """

    fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]
    task_type: Literal["binary", "regression"] = "binary"
    needs_group: bool = False
    higher_is_better: bool = True


TaskGraphTemplate = Mapping[str, Mapping[str, Any]]
"""Node name → task table, exactly as it would be written under [tasks] in engine.toml."""


class Components:
    """All name tables, filled by the registration hooks of the enabled plugins."""

    def __init__(self) -> None:
        self.encoders: ComponentTable[EncoderFactory] = ComponentTable(
            "encoders", "feature encoder")
        self.task_graphs: ComponentTable[TaskGraphTemplate] = ComponentTable(
            "task_graphs", "task graph template")
        self.backbones: ComponentTable[BackboneFactory] = ComponentTable("backbones", "backbone")
        self.towers: ComponentTable[TowerFactory] = ComponentTable("towers", "tower")
        self.cascades: ComponentTable[CascadeFactory] = ComponentTable("cascades", "cascade")
        self.losses: ComponentTable[LossFactory] = ComponentTable("losses", "loss")
        self.loss_weightings: ComponentTable[LossWeightingFactory] = ComponentTable(
            "loss_weightings", "loss weighting")
        self.sample_weightings: ComponentTable[SampleWeightingFactory] = ComponentTable(
            "sample_weightings", "sample weighting")
        self.fusions: ComponentTable[FusionFactory] = ComponentTable("fusions", "fusion")
        self.metrics: ComponentTable[Metric] = ComponentTable("metrics", "metric")

    def tables(self) -> list[ComponentTable[Any]]:
        return [t for t in vars(self).values() if isinstance(t, ComponentTable)]


def head_value(spec: Any, out: torch.Tensor) -> torch.Tensor:
    """A regression head's output in value units: ``log_mse`` heads model log1p(value)."""
    return torch.expm1(out) if spec.loss_name == "log_mse" else out
