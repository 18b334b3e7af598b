"""Fusion: one ranking score from the per-task entire-space predictions.

Parameters are validated by their ``Params`` models (each weight a finite number >= 0) and the
task names by the constructors, which see the task graph's names: the core builds the fusion
before training, so a typo or a NaN weight fails in seconds instead of registering a model
that cannot be served.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import torch
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from rankengine import Fusion, FusionFactory, Params, Register, hookimpl, suggest


@hookimpl
def rankengine_register_fusions(register: Register[FusionFactory]) -> None:
    register("weighted_sum", WeightedSum, params=FusionWeights, default=True, help="Σ w_k · p_k")
    register("weighted_product", WeightedProduct, params=FusionWeights,
             help="Π p_k ^ w_k (computed as exp Σ w_k log p_k)")
    register("expected_value", ExpectedValue, params=ExpectedValueParams,
             help="p(task) · predicted value of a regression task (its entire-space expectation)")


def _weight(value: Any) -> float:
    """A task's weight: a finite number >= 0 (NaN would be saved as null, a negative weight
    would rank the task's positives last)."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number >= 0):
        raise PydanticCustomError("fusion_weight", "expected a finite number >= 0")
    return number


Weight = Annotated[float, BeforeValidator(_weight)]


def unknown_task(key: str, name: str, tasks: list[str]) -> ValueError:
    """``weights: unknown task 'clik'; tasks: click, order; did you mean 'click'?``"""
    return ValueError(f"{key}: unknown task '{name}'; tasks: {', '.join(tasks)}"
                      f"{suggest(name, tasks)}")


class FusionWeights(Params):
    #: task → weight; tasks left out weigh 0 (or, when no weight is given at all, 1 each)
    weights: dict[str, Weight] = Field(default_factory=dict)


class _Weighted(Fusion):
    def __init__(self, tasks: list[str], params: FusionWeights) -> None:
        super().__init__(tasks, params)
        for name in params.weights:
            if name not in tasks:
                raise unknown_task("weights", name, tasks)
        default = 0.0 if params.weights else 1.0  # no weights given: every task counts once
        self.w = torch.tensor([params.weights.get(t, default) for t in tasks])

    def weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.w.tolist(), strict=True))

    def with_weights(self, weights: Mapping[str, float]) -> Fusion:
        return type(self)(self.tasks, FusionWeights(weights=dict(weights)))


class WeightedSum(_Weighted):
    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions @ self.w.to(predictions.device, predictions.dtype)


class WeightedProduct(_Weighted):
    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        logs = predictions.clamp(min=1e-12).log()
        return (logs @ self.w.to(predictions.device, predictions.dtype)).exp()


class ExpectedValueParams(Params):
    probability: str
    value: str
    #: Added to the score times ``tiebreak`` so equal expected values still rank by probability.
    tiebreak: Weight = 0.0


class ExpectedValue(Fusion):
    """``p(probability) · value (+ tiebreak · p)``, where ``value`` is the entire-space
    prediction of a regression task (e.g. GMV declared under the click: p(click)·E[GMV | click])."""

    params: ExpectedValueParams

    def __init__(self, tasks: list[str], params: ExpectedValueParams) -> None:
        super().__init__(tasks, params)
        for key in ("probability", "value"):
            name = getattr(params, key)
            if name not in tasks:
                raise unknown_task(key, name, tasks)
        self.p = tasks.index(params.probability)
        self.v = tasks.index(params.value)

    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        p = predictions[:, self.p]
        return p * predictions[:, self.v] + self.params.tiebreak * p
