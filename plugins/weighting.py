"""Loss weighting (how per-task losses combine) and sample weighting (per-row, per-task)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field

from rankengine import LossWeighting, Params, Register, SampleWeighting, TaskGraph, hookimpl


@hookimpl
def rankengine_register_loss_weightings(register: Register) -> None:
    register("fixed", FixedWeighting, params=FixedParams,
             help="constant weights: [loss.weighting] weights, else each task's `weight`")


@hookimpl
def rankengine_register_sample_weightings(register: Register) -> None:
    register("none", NoSampleWeighting, help="every row counts once")
    register("label_weight", LabelWeighting, params=LabelWeightParams,
             help="positives of a task count `weights[task]` times (e.g. pay more than click)")


class FixedParams(Params):
    weights: dict[str, float] = Field(default_factory=dict)


class FixedWeighting(LossWeighting):
    """``weights`` given here win; other tasks keep the ``weight`` declared on the task."""

    def __init__(self, graph: TaskGraph, params: FixedParams) -> None:
        super().__init__(graph, params)
        unknown = sorted(set(params.weights) - set(self.tasks))
        if unknown:
            raise ValueError(f"weights name unknown task(s) {unknown}; "
                             f"tasks: {', '.join(self.tasks)}")
        values = [params.weights.get(n.name, n.spec.weight) for n in graph.nodes]
        self.register_buffer("weights", torch.tensor(values), persistent=False)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses * self.weights).sum()

    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weights.tolist(), strict=True))


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
        return 1.0 + labels * (self.factors - 1.0)
