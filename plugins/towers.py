"""Towers: the per-head network that turns a representation into one logit (or value)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from rankengine import Activation, Params, Register, Width, hookimpl, mlp


@hookimpl
def rankengine_register_towers(register: Register[Callable[..., nn.Module]]) -> None:
    register("mlp", build_mlp_tower, params=MLPTowerParams, default=True,
             help="MLP ending in one output")


class MLPTowerParams(Params):
    hidden: list[Width] = Field(default=[32])
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class MLPTower(nn.Module):
    def __init__(self, params: MLPTowerParams, input_dim: int) -> None:
        super().__init__()
        self.net = mlp(input_dim, params.hidden, activation=params.activation,
                       dropout=params.dropout, output_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x).squeeze(-1)
        return out


def build_mlp_tower(params: MLPTowerParams, *, input_dim: int) -> nn.Module:
    return MLPTower(params, input_dim)
