"""Small building blocks that backbone and tower plugins share (part of the public API)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "gelu", "silu", "tanh"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
}


def mlp(
    input_dim: int, hidden: Sequence[int], *, activation: str = "relu", dropout: float = 0.0,
    output_dim: int | None = None,
) -> nn.Sequential:
    """Linear → activation (→ dropout) per hidden size, plus an optional linear output layer."""
    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    if output_dim is not None:
        layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


class ExpertBank(nn.Module):
    """``E`` MLP experts evaluated together: ``[B, D] -> [B, E, hidden[-1]]``.

    The first layer is one GEMM over all experts' weights; deeper layers are one batched
    matmul each, so the cost does not grow with Python-level loops over experts.
    """

    def __init__(self, input_dim: int, num_experts: int, hidden: Sequence[int],
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("experts need at least one hidden layer")
        self.num_experts = num_experts
        self.sizes = [input_dim, *hidden]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(
                torch.empty(num_experts, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(
                torch.empty(num_experts, 1, fan_out).uniform_(-bound, bound)))
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.output_dim = self.sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        E = self.num_experts
        w0 = self.weights[0].permute(1, 0, 2).reshape(self.sizes[0], -1)  # [D, E*H]
        h: torch.Tensor = (x @ w0).view(x.shape[0], E, -1).transpose(0, 1) + self.biases[0]
        h = self.dropout(self.act(h))  # [E, B, H]
        for w, b in zip(list(self.weights)[1:], list(self.biases)[1:], strict=True):
            h = self.dropout(self.act(torch.baddbmm(b, h, w)))
        return h.transpose(0, 1)  # [B, E, H]

    def routed(self, x: torch.Tensor, rows: torch.Tensor, counts: list[int],
               pad_up_to: float = 2.0) -> torch.Tensor:
        """Each expert on only the rows routed to it: ``rows`` ``[N]`` lists expert 0's rows,
        then expert 1's, ... (``counts[e]`` of them); returns ``[N, hidden[-1]]`` in that order.

        While the busiest expert's rows padded to every expert stay within ``pad_up_to`` times
        the routed rows, the experts run as one batched matmul per layer over ``[E, C, D]``
        (``C`` = the busiest expert's rows; padding rows are zeros whose outputs are never read,
        so no gradient reaches the weights through them). A skewed routing runs expert by
        expert instead (a GEMM pair per expert), so padding never more than doubles the work.
        """
        capacity = max(counts)
        if capacity * self.num_experts > pad_up_to * len(rows):
            layers = self.layers_by_expert()
            return torch.cat([self.run_one(layers[e], x.index_select(0, chunk))
                              for e, chunk in enumerate(torch.split(rows, counts))
                              if len(chunk)])
        sizes = torch.tensor(counts, device=x.device)
        start = torch.cumsum(sizes, 0) - sizes
        expert_of = torch.repeat_interleave(torch.arange(self.num_experts, device=x.device),
                                            sizes, output_size=len(rows))
        slot = expert_of * capacity + torch.arange(len(rows), device=x.device) \
            - start[expert_of]  # where each routed row sits in the padded [E * C] layout
        h = x.new_zeros(self.num_experts * capacity, x.shape[1])
        h = h.index_copy(0, slot, x.index_select(0, rows)).view(self.num_experts, capacity, -1)
        for w, b in zip(self.weights, self.biases, strict=True):
            h = self.dropout(self.act(torch.baddbmm(b, h, w)))
        return h.reshape(self.num_experts * capacity, -1).index_select(0, slot)

    def layers_by_expert(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each expert's layers as ``(weight, bias)`` views, from one ``unbind`` per layer:
        the backward pass then assembles a parameter's gradient in one stack, where indexing
        it once per expert would write a full-size gradient per expert."""
        weights = [w.unbind(0) for w in self.weights]
        biases = [b.unbind(0) for b in self.biases]
        return [[(w[e], b[e]) for w, b in zip(weights, biases, strict=True)]
                for e in range(self.num_experts)]

    def run_one(self, layers: list[tuple[torch.Tensor, torch.Tensor]],
                x: torch.Tensor) -> torch.Tensor:
        """One expert (its :meth:`layers_by_expert` entry) on ``x`` ``[N, D] ->
        [N, hidden[-1]]``: what a skewed routing runs on the rows routed to each expert."""
        h = x
        for w, b in layers:
            h = self.dropout(self.act(torch.addmm(b, h, w)))
        return h


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers (Wang et al., 2021): ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``.

    Explicit feature crosses of bounded degree; the MLP experts after it learn the rest.
    """

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.layers:
            out = x * layer(out) + out
        return out
