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
