"""Loss weighting (how per-task losses combine) and sample weighting (per-row, per-task).

Loss weightings: fixed, uncertainty (Kendall, Gal & Cipolla, CVPR 2018), DWA (Liu, Johns &
Davison, CVPR 2019), GradNorm (Chen et al., ICML 2018), PCGrad (Yu et al., NeurIPS 2020) and a
Pareto-efficient weighting in the spirit of PE-LTR (Lin et al., RecSys 2019).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from rankengine import (
    DataError,
    LossWeighting,
    Params,
    Register,
    SampleWeighting,
    SharedParameters,
    TaskGraph,
    hookimpl,
)


@hookimpl
def rankengine_register_loss_weightings(
    register: Register[Callable[[TaskGraph, Any], LossWeighting]],
) -> None:
    register("fixed", FixedWeighting, params=FixedParams, default=True,
             help="constant weights: [loss.weighting] weights, else each task's `weight`")
    register("uncertainty", UncertaintyWeighting, params=UncertaintyParams,
             help="learned homoscedastic uncertainty per task (Kendall et al. 2018)")
    register("dwa", DynamicWeightAverage, params=DWAParams,
             help="dynamic weight average: weights follow each task's loss descent rate")
    register("gradnorm", GradNorm, params=GradNormParams,
             help="learned weights that balance gradient norms on the last shared layer")
    register("pcgrad", PCGrad, params=FixedParams,
             help="projects conflicting task gradients on the shared parameters")
    register("pareto", ParetoWeighting, params=ParetoParams,
             help="min-norm (Pareto-stationary) task weights with lower bounds (PE-LTR)")


@hookimpl
def rankengine_register_sample_weightings(
    register: Register[Callable[[TaskGraph, Any], SampleWeighting]],
) -> None:
    register("none", NoSampleWeighting, default=True, help="every row counts once")
    register("label_weight", LabelWeighting, params=LabelWeightParams,
             help="positives of a task count `weights[task]` times (e.g. pay more than click)")
    register("column", ColumnWeighting, params=ColumnWeightParams,
             help="a non-negative weight column from the data, for some or all tasks")
    register("dwell_time", DwellTimeWeighting, params=DwellTimeParams,
             help="positives count 1 + scale * min(log1p(seconds), cap) times")


# -- loss weightings ---------------------------------------------------------------------------


def _task_vector(graph: TaskGraph, values: Mapping[str, float], default: Sequence[float],
                 what: str) -> torch.Tensor:
    unknown = sorted(set(values) - set(graph.names))
    if unknown:
        raise ValueError(f"{what} name unknown task(s) {unknown}; tasks: {', '.join(graph.names)}")
    return torch.tensor([float(values.get(n, d)) for n, d in zip(graph.names, default,
                                                                   strict=True)])


class FixedParams(Params):
    weights: dict[str, float] = Field(default_factory=dict)


class FixedWeighting(LossWeighting):
    """``weights`` given here win; other tasks keep the ``weight`` declared on the task."""

    def __init__(self, graph: TaskGraph, params: FixedParams) -> None:
        super().__init__(graph, params)
        values = _task_vector(graph, params.weights, [n.spec.weight for n in graph.nodes],
                              "weights")
        self.weights: torch.Tensor
        self.register_buffer("weights", values, persistent=False)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses * self.weights).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weights.tolist(), strict=True))


class UncertaintyParams(Params):
    #: starting log-variance s = log σ² of every task (0 → weight 1 for classification)
    init_log_variance: float = 0.0


class UncertaintyWeighting(LossWeighting):
    """``Σ_k c_k · exp(-s_k) · L_k + s_k / 2`` with learned ``s_k = log sigma_k^2``.

    ``c_k`` is 1 for classification (the likelihood is a Boltzmann distribution scaled by
    1/σ²) and 1/2 for regression (a Gaussian with variance σ²), as in Kendall et al., times the
    task's declared ``weight`` (a unit prior, e.g. 0.1 for a dwell-time loss in log-seconds²);
    the optimum is ``c_k exp(-s_k) = 1 / (2 L_k)``: a noisier task gets a smaller weight.
    ``current_weights`` reports the effective factor ``c_k · exp(-s_k)``.
    """

    scale_invariant = False  # s_k / 2 does not grow with the losses
    # s/2 is not scaled by the prior: the effective weights still converge to 1 / (2 L_k).

    def __init__(self, graph: TaskGraph, params: UncertaintyParams) -> None:
        super().__init__(graph, params)
        self.log_variance = nn.Parameter(torch.full((len(graph),), params.init_log_variance))
        scale = [(0.5 if n.type == "regression" else 1.0) * n.spec.weight for n in graph.nodes]
        self.scale: torch.Tensor
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.log_variance
        return (self.scale * torch.exp(-s) * losses + 0.5 * s).sum()

    def current_weights(self) -> dict[str, float]:
        factors = (self.scale * torch.exp(-self.log_variance.detach())).tolist()
        return dict(zip(self.tasks, factors, strict=True))


class DWAParams(Params):
    temperature: float = Field(default=2.0, gt=0)


class DynamicWeightAverage(LossWeighting):
    """``w_k(t) = prior_k · T · softmax_k(r_k(t-1) / τ)`` with ``r_k(t-1) = L_k(t-1) / L_k(t-2)``,
    the mean training loss ratio of the last two epochs; ``prior_k`` is the task's declared
    ``weight``, which is also the weight of the first two epochs."""

    params: DWAParams

    def __init__(self, graph: TaskGraph, params: DWAParams) -> None:
        super().__init__(graph, params)
        prior = torch.tensor([n.spec.weight for n in graph.nodes])
        self.prior: torch.Tensor
        self.weights: torch.Tensor
        self.register_buffer("prior", prior, persistent=False)
        self.register_buffer("weights", prior.clone(), persistent=False)
        self.epoch_losses: list[torch.Tensor] = []

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses * self.weights).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weights.tolist(), strict=True))

    # Checkpointed with the module's state_dict (tensors only: checkpoints hold no pickles).
    def get_extra_state(self) -> dict[str, list[torch.Tensor]]:
        return {"epoch_losses": [t.clone() for t in self.epoch_losses]}

    def set_extra_state(self, state: Any) -> None:
        losses = state.get("epoch_losses") if isinstance(state, dict) else None
        if not isinstance(losses, list) or not all(
                isinstance(t, torch.Tensor) and t.shape == (len(self.tasks),) for t in losses):
            raise ValueError(f"dwa: expected epoch_losses, a list of {len(self.tasks)}-vectors")
        self.epoch_losses = [t.float().to(self.prior.device) for t in losses]

    def after_epoch(self, epoch: int, mean_losses: dict[str, float]) -> None:
        device = self.prior.device
        self.epoch_losses.append(torch.tensor([mean_losses[t] for t in self.tasks],
                                              device=device))
        if len(self.epoch_losses) >= 2:
            ratio = self.epoch_losses[-1] / self.epoch_losses[-2].clamp(min=1e-12)
            self.weights = self.prior * len(self.tasks) * torch.softmax(
                ratio / self.params.temperature, 0)


def _task_gradients(losses: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
    """``[T, P]``: the gradient of each task's loss on ``params``, flattened."""
    rows = []
    for k in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[k], list(params), retain_graph=True,
                                    allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params, strict=True)]))
    return torch.stack(rows)


class GradNormParams(Params):
    #: asymmetry alpha: how strongly slow-training tasks are pushed (the paper uses 0.12 to 3)
    alpha: float = Field(default=1.5, ge=0)


class GradNorm(LossWeighting):
    """Learned weights ``w_k`` (kept summing to T) that move each task's gradient norm on the
    last shared layer, ``G_k = ‖∇_W w_k L_k‖``, toward ``mean(G) · r_k^alpha`` where
    ``r_k = (L_k / L_k(0)) / mean_j(L_j / L_j(0))`` is the relative inverse training rate.

    The network is updated with ``Σ w_k L_k`` (weights held constant); the weights get the
    gradient of ``Σ |G_k - target_k|`` (target held constant), as in the paper. They start from
    the tasks' declared ``weight`` values, rescaled to sum to T.
    """

    params: GradNormParams

    def __init__(self, graph: TaskGraph, params: GradNormParams) -> None:
        super().__init__(graph, params)
        prior = torch.tensor([n.spec.weight for n in graph.nodes]).clamp(min=1e-3)
        self.weights = nn.Parameter(prior * len(graph) / prior.sum())
        self.initial: torch.Tensor
        self.register_buffer("initial", torch.full((len(graph),), float("nan")),
                             persistent=False)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses * self.weights.detach()).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weights.detach().tolist(), strict=True))

    def backward(self, losses: torch.Tensor, shared: SharedParameters) -> torch.Tensor:
        with torch.no_grad():  # the renormalisation step of the paper, before this update
            self.weights.clamp_(min=1e-3).mul_(len(self.tasks) / self.weights.sum())
            detached = losses.detach()
            unset = torch.isnan(self.initial) & (detached > 0)
            self.initial[unset] = detached[unset]
        norms = _task_gradients(losses, shared.last).norm(dim=1)  # ‖∇_W L_k‖, no graph
        active = (norms > 0) & ~torch.isnan(self.initial)  # e.g. no parent positives → skip
        if active.any():
            G = self.weights * norms
            rate = detached / self.initial
            rate = torch.where(active, rate / rate[active].mean(), 1.0)
            target = (G[active].mean() * rate ** self.params.alpha).detach()
            balance = ((G - target).abs() * active).sum()
            (weight_grad,) = torch.autograd.grad(balance, [self.weights])
        else:
            weight_grad = torch.zeros_like(self.weights)
        total = self.combine(losses)
        total.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        self.weights.grad = weight_grad
        return total


def project_conflicting(grads: torch.Tensor, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
    """PCGrad: for each task gradient ``g_i``, in random order over the others, remove the
    component along ``g_j`` whenever ``g_i · g_j < 0``; returns ``Σ_i g_i'``."""
    count = grads.shape[0]
    sq_norms = (grads * grads).sum(dim=1).clamp(min=1e-20)
    out = torch.zeros_like(grads[0])
    for i in range(count):
        g = grads[i].clone()
        where = generator.device if generator is not None else grads.device
        for j in torch.randperm(count, generator=generator, device=where).tolist():
            if j == i:
                continue
            dot = torch.dot(g, grads[j])
            if dot < 0:
                g -= dot / sq_norms[j] * grads[j]
        out += g
    return out


class PCGrad(FixedWeighting):
    """Fixed weights, but on the shared parameters (embeddings + backbone) the summed task
    gradient is replaced by the PCGrad-projected one; task-specific parameters (towers,
    gates) get their plain gradients. Costs one extra backward pass per task."""

    def __init__(self, graph: TaskGraph, params: FixedParams) -> None:
        super().__init__(graph, params)
        self.generator = torch.Generator().manual_seed(0)

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("generator"), torch.Tensor):
            raise ValueError("pcgrad: expected a generator state tensor")
        self.generator.set_state(state["generator"])

    def backward(self, losses: torch.Tensor, shared: SharedParameters) -> torch.Tensor:
        weighted = losses * self.weights
        projected = project_conflicting(_task_gradients(weighted, shared.all), self.generator)
        earlier = [p.grad for p in shared.all]  # e.g. a ranking loss's, kept as is
        total = weighted.sum()
        total.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        offset = 0
        for p, before in zip(shared.all, earlier, strict=True):
            size = p.numel()
            grad = projected[offset:offset + size].view_as(p)
            p.grad = grad + before if before is not None else grad.clone()
            offset += size
        return total


def min_norm_weights(gram: torch.Tensor, lower: torch.Tensor, iterations: int = 100
                     ) -> torch.Tensor:
    """``argmin_w wᵀ M w`` subject to ``Σ w = 1`` and ``w ≥ lower`` (Frank-Wolfe with exact
    line search on the substitution ``w = lower + (1 - Σ lower) · u``, ``u`` in the simplex)."""
    count = gram.shape[0]
    slack = float(1.0 - lower.sum())
    if slack < -1e-9:
        raise ValueError(f"lower bounds sum to {float(lower.sum()):.3f} > 1")
    gram = gram.double()
    lower = lower.double()
    u = torch.full((count,), 1.0 / count, dtype=torch.float64, device=gram.device)
    for _ in range(iterations):
        w = lower + slack * u
        grad = gram @ w
        t = int(torch.argmin(grad))
        d = -u.clone()
        d[t] += 1.0  # towards vertex t
        sd = slack * d
        curvature = float(sd @ gram @ sd)
        if curvature <= 1e-18:
            break
        step = min(1.0, max(0.0, -float(w @ gram @ sd) / curvature))
        if step <= 1e-12:
            break
        u = u + step * d
    return (lower + slack * u).float()


class ParetoParams(Params):
    #: lower bound per task on the normalised weight (weights sum to 1 before scaling to T);
    #: tasks not named get 0. PE-LTR uses such bounds to keep every objective in play.
    min_weights: dict[str, float] = Field(default_factory=dict)
    #: recompute the weights every this many steps
    update_every: int = Field(default=1, ge=1)


class ParetoWeighting(LossWeighting):
    """Weights from the min-norm convex combination of the task gradients on the last shared
    layer (a Pareto-stationary descent direction, MGDA-style), with per-task lower bounds as
    in PE-LTR; reported and applied scaled to sum to T so that the loss scale matches fixed."""

    params: ParetoParams

    def __init__(self, graph: TaskGraph, params: ParetoParams) -> None:
        super().__init__(graph, params)
        lower = _task_vector(graph, params.min_weights, [0.0] * len(graph), "min_weights")
        if (lower < 0).any() or float(lower.sum()) > 1.0:
            raise ValueError(f"min_weights must be >= 0 and sum to at most 1, found "
                             f"{params.min_weights}")
        self.lower: torch.Tensor
        self.weights: torch.Tensor
        self.register_buffer("lower", lower, persistent=False)
        self.register_buffer("weights", torch.ones(len(graph)), persistent=False)
        self.steps = 0

    def get_extra_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def set_extra_state(self, state: Any) -> None:
        steps = state.get("steps") if isinstance(state, dict) else None
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"pareto: expected a step count, found {steps!r}")
        self.steps = steps

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses * self.weights).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weights.tolist(), strict=True))

    def backward(self, losses: torch.Tensor, shared: SharedParameters) -> torch.Tensor:
        if self.steps % self.params.update_every == 0:
            grads = _task_gradients(losses, shared.last)
            self.weights = len(self.tasks) * min_norm_weights(grads @ grads.T, self.lower)
        self.steps += 1
        return super().backward(losses, shared)


# -- sample weightings -------------------------------------------------------------------------


class NoSampleWeighting(SampleWeighting):
    def weights(self, labels: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.ones_like(labels)


class LabelWeightParams(Params):
    weights: dict[str, float] = Field(default_factory=dict)


class LabelWeighting(SampleWeighting):
    """Weight ``w`` on rows where the task's entire-space label is 1, 1 elsewhere."""

    def __init__(self, graph: TaskGraph, params: LabelWeightParams) -> None:
        super().__init__(graph, params)
        for task, w in params.weights.items():
            graph.index(task)  # unknown task → error listing the tasks
            if w < 0:
                raise ValueError(f"sample weight for task '{task}' must be >= 0, got {w}")
        self.factors = torch.tensor([params.weights.get(n, 1.0) for n in graph.names])

    def weights(self, labels: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return 1.0 + labels * (self.factors.to(labels.device) - 1.0)


def _task_mask(graph: TaskGraph, tasks: Sequence[str]) -> torch.Tensor:
    for task in tasks:
        graph.index(task)  # unknown task → error listing the tasks
    return torch.tensor([not tasks or n in tasks for n in graph.names])


class _OneColumnWeighting(SampleWeighting):
    """Weights read from ``params.column``: finite and >= 0, checked once per split."""

    params: ColumnWeightParams | DwellTimeParams

    def columns(self) -> list[str]:
        return [self.params.column]

    def check(self, extras: Mapping[str, np.ndarray], where: str) -> None:
        super().check(extras, where)
        column = self.params.column
        values = extras[column]
        bad = np.flatnonzero(values < 0)
        if len(bad):
            raise DataError(f"{where}: column '{column}' row {bad[0]}: sample weights must be "
                            f">= 0, found {values[bad[0]]} ({len(bad):,} such rows)")


class ColumnWeightParams(Params):
    column: str
    #: tasks the weight applies to (others get 1); empty = every task
    tasks: list[str] = Field(default_factory=list)


class ColumnWeighting(_OneColumnWeighting):
    """The row's value of ``column`` (finite, >= 0) for the chosen tasks, 1 for the others."""

    params: ColumnWeightParams

    def __init__(self, graph: TaskGraph, params: ColumnWeightParams) -> None:
        super().__init__(graph, params)
        self.mask = _task_mask(graph, params.tasks)

    def weights(self, labels: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = extras[self.params.column].unsqueeze(1).expand_as(labels)
        return torch.where(self.mask.to(labels.device), w, torch.ones_like(labels))


class DwellTimeParams(Params):
    column: str = "dwell_time"
    #: tasks whose positives are weighted by dwell time; empty = the graph's first task
    tasks: list[str] = Field(default_factory=list)
    scale: float = Field(default=1.0, ge=0)
    #: cap on log1p(seconds): one very long session must not dominate the loss
    cap: float = Field(default=5.0, gt=0)


class DwellTimeWeighting(_OneColumnWeighting):
    """``1 + scale · min(log1p(seconds), cap)`` on a chosen task's positive rows, 1 elsewhere
    (a click followed by a long visit says more than a bounce)."""

    params: DwellTimeParams

    def __init__(self, graph: TaskGraph, params: DwellTimeParams) -> None:
        super().__init__(graph, params)
        self.mask = _task_mask(graph, params.tasks or [graph.names[0]])

    def weights(self, labels: torch.Tensor, extras: Mapping[str, torch.Tensor]) -> torch.Tensor:
        p = self.params
        bonus = p.scale * torch.log1p(extras[p.column]).clamp(max=p.cap)
        return 1.0 + labels * self.mask.to(labels.device) * bonus.unsqueeze(1)
