"""The ``gated_transfer`` cascade: a learnable cascade that passes information down the funnel.

Each child node's head input receives a gated projection of its parent's (already mixed) head
input before the towers run, in the spirit of AITM (Xi et al., KDD 2021)::

    x'_child = x_child + sigmoid(G [x_child; x'_parent]) * (W x'_parent)

``W`` and ``G`` are linear layers per parent → child edge, created in :meth:`build`, so they are
trained, checkpointed, saved, exported and served with the model. Because parents come before
their children in graph order, what click learned reaches order, and through it pay.

The towers' outputs then compose exactly like ESMM: p(child) = p(parent) · p(child | parent),
in log space, so p(child) <= p(parent) holds for any parameters. ``via`` branches are ignored
(one head per node), as in ``esmm``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from rankengine import Cascade, CascadeOutput, HeadSpec, Params, TaskGraph


class GatedTransferParams(Params):
    #: Initial bias of every gate: sigmoid(-2) ≈ 0.12, so training starts close to plain ESMM
    #: and opens the gates where the parent's representation helps.
    gate_bias: float = -2.0
    #: Extra loss on p(task | parent) over parent-positive rows (0: pure entire-space ESMM).
    conditional_loss_weight: float = Field(default=0.0, ge=0.0)


class GatedTransfer(Cascade):
    """ESMM composition after a learned, gated parent → child transfer of head inputs."""

    params: GatedTransferParams

    def __init__(self, graph: TaskGraph, params: GatedTransferParams) -> None:
        super().__init__(graph, params)
        #: (child, parent) head indices, parents first (graph order is topological).
        self.edges: list[tuple[int, int]] = [
            (i, p) for i, p in enumerate(graph.parent_index) if p >= 0]
        self.transfer = nn.ModuleList()
        self.gate = nn.ModuleList()

    def heads(self) -> list[HeadSpec]:
        return [HeadSpec(node.name, node.name) for node in self.graph.nodes]

    def build(self, head_input_dims: list[int]) -> list[int]:
        dims = head_input_dims
        for child, parent in self.edges:
            self.transfer.append(nn.Linear(dims[parent], dims[child]))
            gate = nn.Linear(dims[child] + dims[parent], dims[child])
            nn.init.constant_(gate.bias, self.params.gate_bias)
            self.gate.append(gate)
        return list(dims)  # the towers keep their widths: the transfer is added, not appended

    def forward(self, head_inputs: list[torch.Tensor],
                towers: Sequence[nn.Module]) -> CascadeOutput:
        return self.compose(self.tower_outputs(self.mix(head_inputs), towers))

    def mix(self, head_inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The head inputs after the parent → child transfers (what the towers see)."""
        mixed = list(head_inputs)
        for (child, parent), transfer, gate in zip(self.edges, self.transfer, self.gate,
                                                   strict=True):
            source = mixed[parent]
            weight = torch.sigmoid(gate(torch.cat([head_inputs[child], source], dim=1)))
            mixed[child] = head_inputs[child] + weight * transfer(source)
        return mixed

    def compose(self, head_outputs: list[torch.Tensor]) -> CascadeOutput:
        """ESMM in log space (:meth:`rankengine.CascadeOutput.chained`): p(child) =
        p(child | parent) · p(parent), so p(child) <= p(parent) whatever the towers say."""
        zero = torch.zeros_like(head_outputs[0])
        binary = [node.type == "binary" for node in self.graph.nodes]
        return CascadeOutput.chained(
            self.graph,
            [F.logsigmoid(out) if b else zero for b, out in zip(binary, head_outputs, strict=True)],
            [F.logsigmoid(-out) if b else zero for b, out in zip(binary, head_outputs,
                                                                  strict=True)],
            # regression heads' outputs are already values (the loss's link)
            [zero if b else out for b, out in zip(binary, head_outputs, strict=True)])

    def conditional_loss_weight(self, node: str) -> float:
        has_parent = self.graph.node(node).parent is not None
        return self.params.conditional_loss_weight if has_parent else 0.0
