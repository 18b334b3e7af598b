"""The interfaces components implement: what the core asks of every family.

The core never names a built-in component; it asks components about themselves through these
classes (an encoder's output and shape, a loss's link, a metric's direction, a fusion's
weights). Every class here is re-exported by :mod:`rankengine`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from rankengine.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

    from rankengine.config import FeatureSpec
    from rankengine.graph import TaskGraph


# --------------------------------------------------------------------------------------------
# Feature encoders
# --------------------------------------------------------------------------------------------

EncoderOutput = Literal["ids", "dense", "id_list"]
"""What an encoder produces (see :class:`FeatureEncoder`)."""

Datatype = Literal["BYTES", "FP32", "FP64", "INT64", "INT32", "BOOL"]
"""An Open Inference Protocol datatype: what a client sends for a raw input."""


class FeatureEncoder(ABC):
    """Turns one raw column into model input; fitted on the training split, saved with the model.

    The encoder describes itself, and the core asks it instead of guessing from its name:

    - :attr:`output` says what :meth:`transform` returns: ``ids`` int64 ``[N]`` in
      ``[0, cardinality)``; ``dense`` float32 ``[N, width]``; ``id_list`` int64
      ``[N, length]`` in ``[0, cardinality)`` where 0 is padding;
    - :attr:`cardinality` (ids, id_list), :attr:`width` (dense) and :attr:`length` (id_list)
      give the shape, :attr:`pooling` how the model pools an ``id_list`` (mean, sum or max);
    - :attr:`raw_datatype` is what serving must send for the raw column (shown in the model's
      metadata; ``BYTES`` for ids and strings, ``FP32`` for numbers).
    """

    output: ClassVar[EncoderOutput]
    raw_datatype: ClassVar[Datatype] = "BYTES"

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
        """Number of ids (``ids`` and ``id_list`` outputs); known after fitting."""
        raise NotImplementedError(f"{type(self).__name__} has no cardinality")

    @property
    def width(self) -> int:
        """Number of float columns (``dense`` output); may be known only after fitting."""
        raise NotImplementedError(f"{type(self).__name__} has no width")

    @property
    def length(self) -> int:
        """Ids per row (``id_list`` output), known before fitting."""
        raise NotImplementedError(f"{type(self).__name__} has no length")

    @property
    def pooling(self) -> str:
        """How the model pools an ``id_list`` into one vector: ``mean``, ``sum`` or ``max``."""
        return "mean"

    @property
    def shares_with(self) -> str | None:
        """The ``ids`` feature whose ids and embedding table this ``id_list`` shares (its
        elements' id ``k + 1`` is that feature's id ``k``; 0 stays padding), or None. The core
        then calls :meth:`share` with that feature's encoder before fitting."""
        return None

    def share(self, encoder: FeatureEncoder) -> None:
        """Encode elements with ``encoder`` (see :attr:`shares_with`)."""
        raise NotImplementedError(f"{type(self).__name__} shares no encoder")

    def lengths(self, column: pa.ChunkedArray) -> np.ndarray:
        """Elements per row before truncation (``id_list``): the core checks that the columns
        of one behaviour sequence are aligned row by row."""
        raise NotImplementedError(f"{type(self).__name__} has no lengths")


EncoderFactory = Callable[["FeatureSpec", Any], FeatureEncoder]


# --------------------------------------------------------------------------------------------
# Sequence interactions
# --------------------------------------------------------------------------------------------


class Interaction(nn.Module):
    """Reads a behaviour sequence against the candidate (``[[model.interactions]]``).

    Built as ``factory(params, sequence_dim=Ds, target_dim=Dt, max_len=L)``. The sequence is
    the concatenated embeddings of its aligned ``id_list`` features (item, category, behaviour,
    time gap ...), the target those of the candidate's ``ids`` features. The core calls, per
    forward:

    1. :meth:`encode` ``(sequence [R, L, Ds], mask [R, L] bool) -> tensors [R, ...]`` once per
       *context row*: a served request has one, a training batch one per row. Put here
       everything that depends only on the user's sequence (projections of keys, a recurrent
       pass, the sequence's self-attention scores);
    2. :meth:`forward` ``(encoded, target [B, Dt]) -> [B, output_dim]`` per candidate, with
       each tensor of ``encoded`` gathered to the candidate's context row.

    The output joins the model's features under the interaction's ``name`` and ``groups``.
    Create tensors on the device of the inputs (``device=sequence.device``).
    """

    output_dim: int

    def encode(self, sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The context-only part; default: the sequence and its mask as they are."""
        return sequence, mask

    def forward(self, encoded: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


InteractionFactory = Callable[..., Interaction]
"""Called as ``factory(params, sequence_dim=int, target_dim=int, max_len=int)``."""


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
        """Expert names and the last forward's gate weights ``[B, num_outputs, E]``, if any
        (0 where a sparse gate did not route a row to an expert)."""
        return None

    def auxiliary_loss(self) -> torch.Tensor | None:
        """An extra training loss from the last forward (a load-balancing loss of a sparse
        mixture of experts), added to the weighted task losses; default: none."""
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

    @classmethod
    def chained(cls, graph: TaskGraph, cond_log_p: Sequence[torch.Tensor],
                cond_log_q: Sequence[torch.Tensor],
                values: Sequence[torch.Tensor]) -> CascadeOutput:
        """The output of a cascade that multiplies down the graph (ESMM), from each node's
        conditional ``log p(node | parent)`` / ``log(1 - p(node | parent))`` (``[B]`` each, in
        graph order; zeros for regression nodes, whose ``values`` hold E[value | parent]):
        ``log p(node) = log p(node | parent) + log p(parent)`` and ``log(1 - p(node)) =
        logaddexp(log(1 - p(parent)), log p(parent) + log(1 - p(node | parent)))``, so
        p(child) <= p(parent) for any head outputs."""
        log_p: list[torch.Tensor] = []
        log_q: list[torch.Tensor] = []
        for i, node in enumerate(graph.nodes):
            parent = graph.parent_index[i]
            if node.type == "regression" or parent < 0:
                log_p.append(cond_log_p[i])
                log_q.append(cond_log_q[i])
            else:
                log_p.append(cond_log_p[i] + log_p[parent])
                log_q.append(torch.logaddexp(log_q[parent], log_p[parent] + cond_log_q[i]))
        return cls(*(torch.stack(list(column), dim=1)
                     for column in (log_p, log_q, cond_log_p, cond_log_q, values)))

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


class Cascade(nn.Module):
    """Decides the heads a graph needs and turns their inputs into task probabilities.

    A cascade is an ``nn.Module``: parameters it creates in :meth:`build` (attention between
    tasks, task-relation layers) are trained, checkpointed, exported and served with the model.

    The model calls, per forward: ``cascade(head_inputs, towers)`` where ``head_inputs[i]`` is
    the input of head ``i`` (its backbone output, plus its tower-group features) and
    ``towers[i]`` the head's tower. The default :meth:`forward` runs every tower on its own
    input and :meth:`compose` s the outputs; a learnable cascade overrides :meth:`forward` (e.g.
    to pass information from a parent's head input to its child's before the towers run).
    Regression heads' tower outputs reach :meth:`compose` already in value units (through the
    task's loss link, :meth:`rankengine.PointwiseLoss.to_value`).
    """

    def __init__(self, graph: TaskGraph, params: Any) -> None:
        super().__init__()
        self.graph = graph
        self.params = params
        self.links: list[Callable[[torch.Tensor], torch.Tensor]] = []

    @abstractmethod
    def heads(self) -> list[HeadSpec]:
        """The heads (towers) the model must build, in a fixed order."""

    def build(self, head_input_dims: list[int]) -> list[int]:
        """Create any layers; receives the width of every head's input and returns the width
        each tower will get (default: unchanged, no layers)."""
        return list(head_input_dims)

    def forward(self, head_inputs: list[torch.Tensor],
                towers: Sequence[nn.Module]) -> CascadeOutput:
        return self.compose(self.tower_outputs(head_inputs, towers))

    def tower_outputs(self, head_inputs: list[torch.Tensor],
                      towers: Sequence[nn.Module]) -> list[torch.Tensor]:
        """Each head's tower on its input; regression heads mapped to value units."""
        outs = [tower(x) for tower, x in zip(towers, head_inputs, strict=True)]
        return [link(out) for link, out in zip(self.links, outs, strict=True)] \
            if self.links else outs

    @abstractmethod
    def compose(self, head_outputs: list[torch.Tensor]) -> CascadeOutput:
        """Head outputs (logits, or values for regression heads) → per-node predictions."""

    def loss_space(self, node: str) -> Literal["entire", "conditional"]:
        """Where a binary node's loss is computed: over all rows, or over parent-positive rows."""
        return "entire"

    def conditional_loss_weight(self, node: str) -> float:
        """Weight of an extra loss on p(node | parent) over the parent-positive rows.

        0 (the default) trains entire-space nodes only through the product, as ESMM does.
        """
        return 0.0

    def auxiliary_loss(self) -> torch.Tensor | None:
        """An extra training loss from the last forward (a calibrator penalty, a regulariser),
        added to the weighted task losses; default: none."""
        return None

    def conditional_regulariser(self, node: int, conditional_loss: torch.Tensor,
                                parent_positive: torch.Tensor, weights: torch.Tensor,
                                out: CascadeOutput) -> torch.Tensor | None:
        """A loss added to binary node ``node``'s (graph index) training loss, from the
        node's pointwise loss on its conditional prediction ``conditional_loss`` ``[B]`` (every
        row; meaningful where ``parent_positive``), the rows' sample ``weights`` ``[B]`` and
        the cascade's output: a counterfactual regulariser (ESCM²'s IPS or DR) weighs the
        parent-positive rows by the inverse of the predicted parent probability. Default:
        none."""
        return None


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


class PointwiseLoss(ABC):
    """A per-sample loss for one task node: ``loss(prediction, target[B]) -> [B]``.

    The loss owns its task's *link*: :meth:`to_value` turns a regression head's raw output into
    the task's value (identity by default; a log-scale loss returns ``expm1``), and
    :meth:`from_value` goes back. :attr:`task_types` says which task types it fits, so training
    refuses a binary loss on a regression task before any data is read.
    """

    task_types: ClassVar[tuple[str, ...]] = ("binary", "regression")

    def __init__(self, params: Any = None) -> None:
        self.params = params

    @abstractmethod
    def __call__(self, prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor: ...

    def to_value(self, head_output: torch.Tensor) -> torch.Tensor:
        """A regression head's output → the task's value (default: the output itself)."""
        return head_output

    def from_value(self, value: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_value`."""
        return value


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
    where = generator.device if generator is not None else groups.device
    priority = torch.rand(len(i), generator=generator, device=where).to(groups.device)
    by_priority = torch.argsort(priority)
    by_group = by_priority[torch.sort(groups[i][by_priority], stable=True).indices]
    pair_groups = groups[i][by_group]
    _, counts = torch.unique_consecutive(pair_groups, return_counts=True)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    keep = by_group[(torch.arange(len(by_group), device=groups.device) - first)
                    < max_pairs_per_group]
    return i[keep], j[keep]


LossFactory = Callable[[Any], "PointwiseLoss | RankingLoss"]
"""Called as ``factory(params)``; a loss is pointwise (per task) or ranking (per request)."""


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

    ``scale_invariant``: multiplying every task loss by one factor multiplies the gradients it
    produces by that factor (fixed weights, DWA, GradNorm, PCGrad, Pareto). Under ``[train]
    precision = "fp16"`` the losses reach :meth:`backward` multiplied by the gradient scaler's
    factor, which the scaler divides out of the gradients afterwards; a weighting for which
    that is not true (an additive term such as uncertainty weighting's log-variances) says
    False, and fp16 is then refused in one line.
    """

    scale_invariant: ClassVar[bool] = True

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
    """Blends per-task entire-space predictions ``[B, T]`` into one ranking score ``[B]``.

    A fusion with per-task weights exposes them: :meth:`weights` reads them and
    :meth:`with_weights` makes the same fusion with other weights (tuning, a version's
    ``fusion_weights`` tag, a request's ``fusion_weights``). A fusion without such weights
    keeps the defaults (``None``, and a ``ValueError``).
    """

    def __init__(self, tasks: list[str], params: Any) -> None:
        self.tasks = tasks
        self.params = params

    @abstractmethod
    def __call__(self, predictions: torch.Tensor) -> torch.Tensor: ...

    def weights(self) -> dict[str, float] | None:
        """Task → weight in effect (every task named), or None for a fusion without weights."""
        return None

    def with_weights(self, weights: Mapping[str, float]) -> Fusion:
        """The same fusion with these task weights (tasks left out weigh 0); raises
        ``ValueError`` for an unknown task or a weight it cannot take."""
        raise ValueError("this fusion takes no per-task weights")


FusionFactory = Callable[[list[str], Any], Fusion]


class Calibrator(nn.Module):
    """Maps one task node's conditional prediction to a calibrated one; fitted after training.

    A binary node's calibrator maps the logit of p(node | parent) to a calibrated logit; a
    regression node's maps E[value | parent] to a calibrated value (``task_types`` says which).
    Calibrating the conditional, never the entire-space product, keeps p(child) <= p(parent)
    for the cascades that compose down the graph; ESM² branches are calibrated through the node
    they feed. The core calls :meth:`fit` once, after training, with the node's predictions on
    the rows it is trained on (parent-positive rows; all rows for a root) of the validation
    split, then saves the calibrator's parameters and buffers with the model: create every
    tensor in ``__init__`` with a fixed shape (they are loaded into a freshly built one), and
    keep :meth:`forward` to tensor operations (it is exported to ONNX with the model). Before
    :meth:`fit`, :meth:`forward` must be the identity.
    """

    #: the node types this calibrator calibrates ("binary" and/or "regression")
    task_types: ClassVar[tuple[str, ...]] = ("binary",)

    def __init__(self, params: Any) -> None:
        super().__init__()
        self.params = params

    @abstractmethod
    def fit(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        """Fit on ``predictions`` (float64 ``[N]``: logits for a binary node, values for a
        regression node) and their ``targets`` (0/1 labels, or values)."""

    @abstractmethod
    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        """Calibrated logits (binary) or values (regression), the shape of ``predictions``."""


CalibratorFactory = Callable[[Any], Calibrator]
"""Called as ``factory(params)``; one calibrator per task node it calibrates."""


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


Direction = Literal["higher", "lower", "target"]


@dataclass(frozen=True)
class Metric:
    """An evaluation metric: ``fn(labels, predictions, groups) -> float`` on numpy arrays.

    ``groups`` is an int64 group id per row when ``needs_group`` (GAUC), else None. Where the
    metric does not exist on the rows it is given (AUC without a negative label, a mean over no
    rows), ``fn`` returns :func:`undefined` with the reason (a plain NaN also counts as
    undefined); the core never calls it on zero rows.

    The metric describes itself: ``direction`` is ``higher`` or ``lower`` (is better), or
    ``target`` (closest to ``target`` is best, e.g. a calibration ratio with target 1.0);
    ``label`` is its column header in tables and reports; ``headline`` metrics are the ones
    compact views show (``rankengine models list``).
    """

    fn: Callable[[np.ndarray, np.ndarray, np.ndarray | None], float]
    task_type: Literal["binary", "regression"] = "binary"
    needs_group: bool = False
    direction: Direction = "higher"
    target: float | None = None
    label: str = ""
    headline: bool = True

    def __post_init__(self) -> None:
        if self.direction == "target" and (self.target is None or not math.isfinite(self.target)):
            raise ValueError("a metric with direction 'target' needs a finite target")

    def badness(self, value: float) -> float:
        """A number that is smaller for a better value (for early stopping and comparisons)."""
        if self.direction == "higher":
            return -value
        if self.direction == "lower":
            return value
        assert self.target is not None
        return abs(value - self.target)

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return self.badness(a) < self.badness(b)


TaskGraphTemplate = Mapping[str, Mapping[str, Any]]
"""Node name → task table, exactly as it would be written under [tasks] in engine.toml."""
