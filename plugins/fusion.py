"""Fusion: one ranking score from the per-task entire-space predictions."""

from __future__ import annotations

import torch
from pydantic import Field

from rankengine import Fusion, Params, Register, hookimpl


@hookimpl
def rankengine_register_fusions(register: Register) -> None:
    register("weighted_sum", WeightedSum, params=FusionWeights, help="Σ w_k · p_k")
    register("weighted_product", WeightedProduct, params=FusionWeights,
             help="Π p_k ^ w_k (computed as exp Σ w_k log p_k)")
    register("expected_value", ExpectedValue, params=ExpectedValueParams,
             help="p(task) · predicted value of a regression task (its entire-space expectation)")


class FusionWeights(Params):
    weights: dict[str, float] = Field(default_factory=dict)


class _Weighted(Fusion):
    def __init__(self, tasks: list[str], params: FusionWeights) -> None:
        super().__init__(tasks, params)
        unknown = sorted(set(params.weights) - set(tasks))
        if unknown:
            raise ValueError(f"[fusion] weights name unknown task(s) {unknown}; "
                             f"tasks: {', '.join(tasks)}")
        default = 0.0 if params.weights else 1.0  # no weights given: every task counts once
        self.w = torch.tensor([params.weights.get(t, default) for t in tasks])


class WeightedSum(_Weighted):
    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions @ self.w.to(predictions.dtype)


class WeightedProduct(_Weighted):
    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        logs = predictions.clamp(min=1e-12).log()
        return (logs @ self.w.to(predictions.dtype)).exp()


class ExpectedValueParams(Params):
    probability: str
    value: str
    #: Added to the score times ``tiebreak`` so equal expected values still rank by probability.
    tiebreak: float = Field(default=0.0, ge=0.0)


class ExpectedValue(Fusion):
    """``p(probability) · value (+ tiebreak · p)``, where ``value`` is the entire-space
    prediction of a regression task (e.g. GMV declared under the click: p(click)·E[GMV | click])."""

    params: ExpectedValueParams

    def __init__(self, tasks: list[str], params: ExpectedValueParams) -> None:
        super().__init__(tasks, params)
        for key in ("probability", "value"):
            name = getattr(params, key)
            if name not in tasks:
                raise ValueError(f"{key} = '{name}' is not a task; tasks: {', '.join(tasks)}")
        self.p = tasks.index(params.probability)
        self.v = tasks.index(params.value)

    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        p = predictions[:, self.p]
        return p * predictions[:, self.v] + self.params.tiebreak * p
