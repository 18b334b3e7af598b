"""Backbones: shared-bottom, OMoE, MMoE (Ma et al., KDD 2018) and PLE (Tang et al., RecSys 2020)."""

from __future__ import annotations

from typing import cast

import torch
from pydantic import Field, model_validator
from torch import nn

from rankengine import (
    Activation,
    Backbone,
    BackboneFactory,
    CrossNetwork,
    ExpertBank,
    Params,
    Register,
    Width,
    hookimpl,
    mlp,
)


@hookimpl
def rankengine_register_backbones(register: Register[BackboneFactory]) -> None:
    register("shared_bottom", build_shared_bottom, params=SharedBottomParams,
             help="one MLP shared by every head")
    register("omoe", build_omoe, params=MoEParams, help="experts mixed by one shared gate")
    register("mmoe", build_mmoe, params=MoEParams, default=True,
             help="experts mixed by one gate per head")
    register("ple", build_ple, params=PLEParams,
             help="progressive layered extraction: CGC levels of task and shared experts")


class SharedBottomParams(Params):
    hidden: list[Width] = Field(default=[128, 64], min_length=1)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class MoEParams(Params):
    experts: int = Field(default=4, ge=1, le=1024)
    #: DCN-v2 cross layers on the input before the experts (0 = none).
    cross_layers: int = Field(default=0, ge=0, le=64)
    expert_hidden: list[Width] = Field(default=[64], min_length=1)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: Sparse gating (Shazeer et al. 2017, named by the MMoE paper): each gate keeps its k
    #: largest logits and renormalises over them, and each expert runs only on the rows some
    #: gate routed to it; 0 = dense softmax over every expert.
    top_k: int = Field(default=0, ge=0)
    #: with top_k: the weight of the load-balancing loss (Switch Transformer's: experts x the
    #: sum over experts of routed share x mean gate probability, 1 when balanced)
    balance_weight: float = Field(default=0.01, ge=0.0)

    @model_validator(mode="after")
    def _top_k_within_experts(self) -> MoEParams:
        if self.top_k > self.experts:
            raise ValueError(f"top_k = {self.top_k} exceeds experts = {self.experts}; top_k "
                             f"keeps that many of the experts (0 = all)")
        return self


class PLEParams(Params):
    levels: int = Field(default=2, ge=1, le=64)
    shared_experts: int = Field(default=2, ge=1, le=1024)
    task_experts: int = Field(default=1, ge=1, le=1024)
    expert_hidden: list[Width] = Field(default=[64], min_length=1)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


def build_shared_bottom(
    params: SharedBottomParams, *, input_dim: int, num_outputs: int
) -> Backbone:
    return SharedBottom(params, input_dim, num_outputs)


def build_omoe(params: MoEParams, *, input_dim: int, num_outputs: int) -> Backbone:
    return MixtureOfExperts(params, input_dim, num_outputs, gates=1)


def build_mmoe(params: MoEParams, *, input_dim: int, num_outputs: int) -> Backbone:
    return MixtureOfExperts(params, input_dim, num_outputs, gates=num_outputs)


def build_ple(params: PLEParams, *, input_dim: int, num_outputs: int) -> Backbone:
    return ProgressiveLayeredExtraction(params, input_dim, num_outputs)


class SharedBottom(Backbone):
    def __init__(self, params: SharedBottomParams, input_dim: int, num_outputs: int) -> None:
        super().__init__()
        self.net = mlp(input_dim, params.hidden, activation=params.activation,
                       dropout=params.dropout)
        self.num_outputs = num_outputs
        self.output_dim = params.hidden[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.net(x)
        return [h] * self.num_outputs


def _exporting() -> bool:
    """A graph being captured for ONNX or TorchScript: it must not depend on one batch's
    routing (``torch.compile`` instead breaks the graph around the dispatch)."""
    return bool(torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
                or torch.compiler.is_exporting())


class MixtureOfExperts(Backbone):
    """MMoE when ``gates == num_outputs``, OMoE when one gate serves every head."""

    def __init__(self, params: MoEParams, input_dim: int, num_outputs: int, gates: int) -> None:
        super().__init__()
        self.cross = CrossNetwork(input_dim, params.cross_layers) if params.cross_layers \
            else nn.Identity()
        self.experts = ExpertBank(input_dim, params.experts, params.expert_hidden,
                                  params.activation, params.dropout)
        self.gates = nn.Linear(input_dim, gates * params.experts)  # every gate in one GEMM
        self.num_gates, self.num_experts = gates, params.experts
        if params.top_k > params.experts:
            raise ValueError(f"top_k = {params.top_k} exceeds the {params.experts} experts")
        self.top_k = params.top_k if params.top_k < params.experts else 0
        self.balance_weight = params.balance_weight
        self._balance: torch.Tensor | None = None
        self.num_outputs = num_outputs
        self.output_dim = self.experts.output_dim
        self.last_gate_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.cross(x)
        logits = self.gates(x).view(-1, self.num_gates, self.num_experts)
        if self.top_k and not _exporting():
            mixed = self._sparse(x, logits)
        elif self.top_k:  # a graph with no data-dependent shapes: the same k experts, mixed
            gate = self._top_k_gate(logits)[0]
            mixed = torch.bmm(gate, self.experts(x))
        else:
            gate = logits.softmax(dim=-1)
            self.last_gate_weights = gate.detach()
            mixed = torch.bmm(gate, self.experts(x))  # [B, G, H]
        if self.num_gates == 1:
            return [mixed[:, 0]] * self.num_outputs
        return list(mixed.unbind(dim=1))

    def _sparse(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Each gate's top-k experts, renormalised; each expert runs once on the rows any
        gate routed to it (grouped by expert), and each gate reads back its k outputs.
        """
        rows_in, experts = x.shape[0], self.num_experts
        gate, weight, index = self._top_k_gate(logits)
        routed = torch.zeros(rows_in, experts, dtype=torch.bool, device=x.device)
        routed.scatter_(1, index.reshape(rows_in, -1), True)
        expert_of, rows = routed.t().nonzero(as_tuple=True)  # by expert, then row
        counts = routed.sum(dim=0).tolist()  # one host sync per step
        hidden = self.experts.routed(x, rows, counts)  # [N, H], pair n = (rows[n], expert_of[n])
        pair = torch.zeros(rows_in, experts, dtype=torch.long, device=x.device)
        pair[rows, expert_of] = torch.arange(len(rows), device=x.device)
        picked = hidden.index_select(0, pair.gather(1, index.reshape(rows_in, -1)).view(-1))
        picked = picked.view(*index.shape, -1)  # [B, G, k, H]: each gate's k experts' outputs
        mixed = torch.matmul(weight.unsqueeze(-2), picked).squeeze(-2)  # [B, G, H]
        if self.training and self.balance_weight:
            share = (gate > 0).to(logits.dtype).mean(dim=0) / self.top_k  # [G, E], sums to 1
            probability = logits.softmax(dim=-1).mean(dim=0)  # [G, E]
            balance = experts * (share * probability).sum(dim=-1).mean()
            self._balance = self.balance_weight * balance
        return mixed

    def _top_k_gate(self, logits: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, G, E]`` gates over each gate's top-k experts (renormalised, 0 elsewhere), the
        ``[B, G, k]`` weights and expert indices they hold."""
        top, index = logits.topk(self.top_k, dim=-1)
        weight = top.softmax(dim=-1)
        gate = torch.zeros_like(logits).scatter(-1, index, weight)
        self.last_gate_weights = gate.detach()
        return gate, weight, index

    def auxiliary_loss(self) -> torch.Tensor | None:
        loss, self._balance = self._balance, None  # one step's loss, added once
        return loss

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [self.experts.weights[-1], self.experts.biases[-1]]

    def gate_weights(self) -> tuple[list[str], torch.Tensor] | None:
        if self.last_gate_weights is None:
            return None
        gate = self.last_gate_weights.expand(-1, self.num_outputs, -1) \
            if self.num_gates == 1 else self.last_gate_weights
        return [f"expert_{e}" for e in range(self.num_experts)], gate


class ProgressiveLayeredExtraction(Backbone):
    """CGC levels: each head has its own experts plus shared ones; gates mix per head.

    Non-final levels also produce a shared output (a gate over all experts) for the next level.
    """

    def __init__(self, params: PLEParams, input_dim: int, num_outputs: int) -> None:
        super().__init__()
        self.num_outputs = num_outputs
        self.levels = nn.ModuleList()
        width = input_dim
        for level in range(params.levels):
            last = level == params.levels - 1
            self.levels.append(_CGCLevel(params, width, num_outputs, shared_output=not last))
            width = params.expert_hidden[-1]
        self.output_dim = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        task_inputs = [x] * self.num_outputs
        shared = x
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)
        return task_inputs

    def last_shared_parameters(self) -> list[nn.Parameter]:
        bank = self._last_level().shared_experts
        return [bank.weights[-1], bank.biases[-1]]

    def _last_level(self) -> _CGCLevel:
        return cast(_CGCLevel, self.levels[-1])  # nn.ModuleList items are typed nn.Module

    def gate_weights(self) -> tuple[list[str], torch.Tensor] | None:
        """The last level's gates over every expert (zero weight on other heads' own ones)."""
        last = self._last_level()
        if last.last_gate_weights is None:
            return None
        own = cast(ExpertBank, last.task_experts[0]).num_experts
        shared = last.shared_experts.num_experts
        names = [f"head_{h}.expert_{e}" for h in range(self.num_outputs) for e in range(own)]
        names += [f"shared.expert_{e}" for e in range(shared)]
        rows = last.last_gate_weights[0].shape[0]
        full = last.last_gate_weights[0].new_zeros(rows, self.num_outputs, len(names))
        for h, w in enumerate(last.last_gate_weights):
            full[:, h, h * own:(h + 1) * own] = w[:, :own]
            full[:, h, self.num_outputs * own:] = w[:, own:]
        return names, full


class _CGCLevel(nn.Module):
    def __init__(self, params: PLEParams, input_dim: int, num_tasks: int,
                 shared_output: bool) -> None:
        super().__init__()
        hidden, act, drop = params.expert_hidden, params.activation, params.dropout
        self.task_experts = nn.ModuleList(
            ExpertBank(input_dim, params.task_experts, hidden, act, drop) for _ in range(num_tasks)
        )
        self.shared_experts = ExpertBank(input_dim, params.shared_experts, hidden, act, drop)
        per_task = params.task_experts + params.shared_experts
        self.task_gates = nn.ModuleList(nn.Linear(input_dim, per_task) for _ in range(num_tasks))
        total = num_tasks * params.task_experts + params.shared_experts
        self.shared_gate = nn.Linear(input_dim, total) if shared_output else None
        self.last_gate_weights: list[torch.Tensor] | None = None

    def forward(
        self, task_inputs: list[torch.Tensor], shared_input: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        shared = self.shared_experts(shared_input)  # [B, S, H]
        own = [bank(x) for bank, x in zip(self.task_experts, task_inputs, strict=True)]
        outputs, gates = [], []
        for x, mine, gate in zip(task_inputs, own, self.task_gates, strict=True):
            weights = gate(x).softmax(dim=-1).unsqueeze(1)  # [B, 1, E]
            gates.append(weights.detach().squeeze(1))
            outputs.append(torch.bmm(weights, torch.cat([mine, shared], dim=1)).squeeze(1))
        self.last_gate_weights = gates
        if self.shared_gate is None:
            return outputs, shared_input
        everything = torch.cat([*own, shared], dim=1)
        weights = self.shared_gate(shared_input).softmax(dim=-1).unsqueeze(1)
        return outputs, torch.bmm(weights, everything).squeeze(1)
