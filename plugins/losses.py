"""Pointwise losses: binary cross-entropy on (log p, log(1-p)), MSE and log-MSE for values."""

from __future__ import annotations

import torch

from rankengine import NodePrediction, Register, hookimpl


@hookimpl
def rankengine_register_losses(register: Register) -> None:
    register("bce", lambda params: bce, help="binary cross-entropy, computed in log space")
    register("mse", lambda params: mse, help="squared error on the value")
    register("log_mse", lambda params: log_mse,
             help="squared error of log1p(value); the head models log1p(value)")


def bce(prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor:
    return -(target * prediction.log_p + (1.0 - target) * prediction.log_q)


def mse(prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor:
    return (prediction.value - target).square()


def log_mse(prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor:
    # value = expm1(head output), so log1p(value) is the head output itself.
    return (torch.log1p(prediction.value) - torch.log1p(target.clamp(min=0.0))).square()

