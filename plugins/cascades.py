"""Cascades: independent heads, ESMM probability chains, ESM² branch decomposition, and the
learnable AITM and DBMTL.

Everything is composed in log space so losses stay finite: for a node with parent probability
``b`` and conditional probability ``a``, ``log p = log a + log b`` and
``log(1 - ab) = logaddexp(log(1 - b), log b + log(1 - a))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from rankengine import (
    Cascade,
    CascadeFactory,
    CascadeOutput,
    HeadSpec,
    Params,
    Register,
    TaskGraph,
    hookimpl,
)


@hookimpl
def rankengine_register_cascades(register: Register[CascadeFactory]) -> None:
    register("independent", IndependentCascade, params=IndependentParams,
             help="one head per task; conditional tasks trained on the parent-positive subspace "
                  "(space='parent') or directly on the entire space (space='entire')")
    register("esmm", ESMMCascade, params=ChainParams, default=True,
             help="ESMM: p(task) = p(task | parent) · p(parent), all losses on the entire space")
    register("esm2", ESM2Cascade, params=ChainParams,
             help="ESM²: like esmm, and a task with via = sibling is decomposed by total "
                  "probability over the sibling (two heads)")
    register("aitm", AITMCascade, params=AITMParams,
             help="AITM: attention between the parent's transferred representation and the "
                  "task's, entire-space heads, a calibrator penalty on p(child) > p(parent)")
    register("escm2", ESCM2Cascade, params=ESCM2Params,
             help="ESCM²: esmm / esm2 plus a counterfactual regulariser on the conditional "
                  "loss, inverse-propensity (ips) or doubly robust (dr)")
    register("dbmtl", DBMTLCascade, params=DBMTLParams,
             help="DBMTL: each task's tower reads its parent's (or every ancestor's) hidden "
                  "state; composed like esmm")


class IndependentParams(Params):
    space: Literal["parent", "entire"] = "parent"


class ChainParams(Params):
    #: Extra loss on p(task | parent) over parent-positive rows, next to the entire-space loss
    #: (0 = pure ESMM / ESM²). Helps deep chains where the product alone identifies a
    #: conditional head poorly (e.g. p(pay | order) behind two sparse parents).
    conditional_loss_weight: float = Field(default=0.0, ge=0.0)


class ChainCascade(Cascade):
    """p(node) = p(node | parent) · p(parent); subclasses choose heads and loss spaces."""

    use_via = False

    def heads(self) -> list[HeadSpec]:
        heads: list[HeadSpec] = []
        for node in self.graph.nodes:
            if self.use_via and node.via is not None:
                heads.append(HeadSpec(f"{node.name}|{node.via}", node.name, "given_via"))
                heads.append(HeadSpec(f"{node.name}|not_{node.via}", node.name, "given_not_via"))
            else:
                heads.append(HeadSpec(node.name, node.name))
        return heads

    def compose(self, head_outputs: list[torch.Tensor]) -> CascadeOutput:
        graph = self.graph
        outputs = iter(head_outputs)
        zero = torch.zeros_like(head_outputs[0])
        cp: list[torch.Tensor] = []
        cq: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for i, node in enumerate(graph.nodes):
            out = next(outputs)
            if node.type == "regression":
                cp.append(zero)
                cq.append(zero)
                values.append(out)  # already in value units (the loss's link)
                continue
            values.append(zero)
            if self.use_via and node.via is not None:
                v = graph.via_index[i]
                not_via = next(outputs)
                c_p = torch.logaddexp(cp[v] + F.logsigmoid(out), cq[v] + F.logsigmoid(not_via))
                c_q = torch.logaddexp(cp[v] + F.logsigmoid(-out), cq[v] + F.logsigmoid(-not_via))
                c_p = c_p.clamp(max=0.0)  # rounding must never lift p(child) above p(parent)
            else:
                c_p, c_q = F.logsigmoid(out), F.logsigmoid(-out)
            cp.append(c_p)
            cq.append(c_q)
        return CascadeOutput.chained(graph, cp, cq, values)


class ESMMCascade(ChainCascade):
    """ESMM (Ma et al., SIGIR 2018), generalised to any depth; ``via`` is ignored."""

    params: ChainParams

    def conditional_loss_weight(self, node: str) -> float:
        has_parent = self.graph.node(node).parent is not None
        return self.params.conditional_loss_weight if has_parent else 0.0


class ESM2Cascade(ESMMCascade):
    """ESM² (Wen et al., SIGIR 2020): decisive-action branches declared with ``via``."""

    use_via = True


class IndependentCascade(ChainCascade):
    """The naive baselines: each head trained alone, on the parent subspace or the entire space."""

    params: IndependentParams

    def compose(self, head_outputs: list[torch.Tensor]) -> CascadeOutput:
        if self.params.space == "parent":
            return super().compose(head_outputs)
        # Entire-space heads: p(node) comes straight from the head; p(node | parent) is derived
        # and clamped, since nothing forces an independent head below its parent.
        return entire_space(self.graph, head_outputs)

    def loss_space(self, node: str) -> Literal["entire", "conditional"]:
        if self.params.space == "entire" or self.graph.node(node).parent is None:
            return "entire"
        return "conditional"


# --------------------------------------------------------------------------------------------
# Learnable cascades: AITM and DBMTL
# --------------------------------------------------------------------------------------------


class AITMParams(Params):
    #: width of each task's representation and of the attention (the paper: 32)
    dim: int = Field(default=32, ge=1, le=4096)
    #: weight of the behavioural-expectation calibrator, a penalty per row summed over the
    #: child-parent pairs (as the paper sums over tasks) and averaged over rows
    calibrator_weight: float = Field(default=1.0, ge=0.0)
    #: the calibrator's gap: "log", max(log p(child) - log p(parent), 0), whose push on a rare
    #: task's logit does not shrink with its probability (the default: it keeps the order on
    #: >= 99.9 % of test rows, benchmarks/RESULTS.md), or "probability", the paper's
    #: max(p(child) - p(parent), 0) (with its weight 0.6)
    calibrator: Literal["probability", "log"] = "log"
    #: the calibrator penalises a child within this margin of its parent too (in the gap's
    #: units), so that trained rows settle below the parent rather than on it
    calibrator_margin: float = Field(default=0.0, ge=0.0)


class AITMCascade(Cascade):
    """AITM (Xi et al., KDD 2021) over the task graph's ``after`` chains.

    Each node's head input is encoded to ``q_t`` (``dim`` wide). A node with a parent gets the
    parent's output ``z_parent`` through a transfer layer, ``p = g(z_parent)``, and the adaptive
    information transfer module attends over ``{p, q_t}``: ``z_t = sum_u w_u h_v(u)``,
    ``w_u = softmax_u(h_q(u) . h_k(u) / sqrt(dim))``. The node's tower maps ``z_t`` to its
    entire-space logit (every binary loss on the entire space, as the paper trains). Nothing
    composes p(child) <= p(parent): the calibrator penalty pushes it, and p(node | parent)
    is derived (clamped at 1).
    """

    params: AITMParams

    def heads(self) -> list[HeadSpec]:
        return [HeadSpec(node.name, node.name) for node in self.graph.nodes]

    def build(self, head_input_dims: list[int]) -> list[int]:
        d = self.params.dim
        self.encoders = nn.ModuleList(nn.Sequential(nn.Linear(width, d), nn.ReLU())
                                      for width in head_input_dims)
        children = [i for i, p in enumerate(self.graph.parent_index) if p >= 0]
        self.transfer = nn.ModuleDict({str(i): nn.Sequential(nn.Linear(d, d), nn.ReLU())
                                       for i in children})
        self.attention = nn.ModuleDict({str(i): nn.Linear(d, 3 * d) for i in children})
        self._penalty: torch.Tensor | None = None
        return [d] * len(head_input_dims)

    def forward(self, head_inputs: list[torch.Tensor],
                towers: Sequence[nn.Module]) -> CascadeOutput:
        outputs: list[torch.Tensor] = []
        for i, x in enumerate(head_inputs):
            q = self.encoders[i](x)
            parent = self.graph.parent_index[i]
            if parent >= 0:
                p = self.transfer[str(i)](outputs[parent])
                tokens = torch.stack([p, q], dim=1)  # [B, 2, d]
                query, key, value = self.attention[str(i)](tokens).chunk(3, dim=-1)
                weights = torch.softmax((query * key).sum(-1) / math.sqrt(q.shape[-1]), dim=1)
                q = (weights.unsqueeze(-1) * value).sum(dim=1)
            outputs.append(q)
        out = self.compose(self.tower_outputs(outputs, towers))
        if self.training and self.params.calibrator_weight:
            self._penalty = self.params.calibrator_weight * self.expectation_penalty(out)
        return out

    def expectation_penalty(self, out: CascadeOutput) -> torch.Tensor:
        """Per row, the sum over binary child nodes of max(p(child) - p(parent) + margin, 0)
        (or of the log probabilities' gap); averaged over rows."""
        pairs = [(i, p) for i, p in enumerate(self.graph.parent_index)
                 if p >= 0 and self.graph.nodes[i].type == "binary"]
        if not pairs:
            return out.log_p.new_zeros(())
        p = out.log_p if self.params.calibrator == "log" else out.log_p.exp()
        child = p[:, [i for i, _ in pairs]]
        parent = p[:, [j for _, j in pairs]]
        gap = child - parent + self.params.calibrator_margin
        return gap.clamp(min=0.0).sum(dim=1).mean()

    def compose(self, head_outputs: list[torch.Tensor]) -> CascadeOutput:
        return entire_space(self.graph, head_outputs)

    def auxiliary_loss(self) -> torch.Tensor | None:
        loss, self._penalty = self._penalty, None
        return loss


def entire_space(graph: TaskGraph, head_outputs: list[torch.Tensor]) -> CascadeOutput:
    """Heads that give each node's entire-space logit (regression heads their value);
    p(node | parent) derived as p(node) / p(parent), clamped at 1."""
    zero = torch.zeros_like(head_outputs[0])
    binary = [n.type == "binary" for n in graph.nodes]
    lp = torch.stack([F.logsigmoid(h) if b else zero
                      for h, b in zip(head_outputs, binary, strict=True)], dim=1)
    lq = torch.stack([F.logsigmoid(-h) if b else zero
                      for h, b in zip(head_outputs, binary, strict=True)], dim=1)
    values = torch.stack([zero if b else h for h, b in zip(head_outputs, binary, strict=True)],
                         dim=1)
    parents = torch.tensor([max(p, 0) for p in graph.parent_index], device=lp.device)
    has_parent = torch.tensor([p >= 0 for p in graph.parent_index], device=lp.device)
    cond = torch.where(has_parent, (lp - lp.index_select(1, parents)).clamp(max=0.0), lp)
    cond_q = torch.log1p(-cond.exp().clamp(max=1 - 1e-7))
    return CascadeOutput(lp, lq, cond, cond_q, values)


class DBMTLParams(ChainParams):
    #: width of each task's relation layer
    dim: int = Field(default=32, ge=1, le=4096)
    #: which tasks' hidden states a node's relation layer reads: "parent" or "ancestors"
    relation: Literal["parent", "ancestors"] = "ancestors"


class DBMTLCascade(ESMMCascade):
    """DBMTL (Bayesian task relations, as EasyRec / TorchEasyRec build it): each node's tower
    reads a relation layer ``h_t = MLP([x_t, h_a for each ancestor a])`` over its own head input
    and the hidden states of the tasks it depends on (its parent, or every ancestor), computed
    down the graph; the towers' logits compose like ESMM's, so p(child) <= p(parent)."""

    params: DBMTLParams

    def _reads(self, i: int) -> list[int]:
        parents = self.graph.parent_index
        read: list[int] = []
        node = parents[i]
        while node >= 0:
            read.append(node)
            if self.params.relation == "parent":
                break
            node = parents[node]
        return read

    def build(self, head_input_dims: list[int]) -> list[int]:
        d = self.params.dim
        self.relations = nn.ModuleList(
            nn.Sequential(nn.Linear(width + d * len(self._reads(i)), d), nn.ReLU())
            for i, width in enumerate(head_input_dims))
        return [d] * len(head_input_dims)

    def forward(self, head_inputs: list[torch.Tensor],
                towers: Sequence[nn.Module]) -> CascadeOutput:
        hidden: list[torch.Tensor] = []
        for i, x in enumerate(head_inputs):
            hidden.append(self.relations[i](torch.cat([x, *(hidden[a] for a in
                                                              self._reads(i))], dim=1)))
        return self.compose(self.tower_outputs(hidden, towers))


# --------------------------------------------------------------------------------------------
# ESCM²
# --------------------------------------------------------------------------------------------


class ESCM2Params(ChainParams):
    #: the counterfactual regulariser: inverse propensity ("ips") or doubly robust ("dr")
    regulariser: Literal["ips", "dr"] = "ips"
    #: its weight next to the entire-space losses (the paper's lambda)
    weight: float = Field(default=0.1, ge=0.0)
    #: propensities below this are raised to it (bounds the inverse weights)
    clip: float = Field(default=0.05, gt=0.0, le=1.0)
    #: the regularised nodes (default: every binary node with a parent)
    nodes: list[str] | None = None


class ESCM2Cascade(ESM2Cascade):
    """ESCM² (Wang et al., SIGIR 2022) on ESMM / ESM²: the conversion node's conditional loss
    over the parent-positive rows, made unbiased for the entire space by inverse propensity,
    the propensity being the predicted parent probability (detached, clipped at ``clip``):

    - IPS: ``R = sum_i w_i o_i e_i / p_i / sum_i w_i`` (``o`` the parent label, ``e`` the
      node's pointwise loss on p(node | parent));
    - DR: an imputation layer on the node's head input predicts the loss ``ê`` on every row;
      ``R = sum_i w_i (ê_i + o_i (e_i - ê_i) / p_i) / sum_i w_i`` plus the imputation's own
      loss ``sum_i w_i o_i (e_i - ê_i)^2 / p_i / sum_i w_i``.

    Added with ``weight`` to each regularised node's loss; ``via`` branches work as in ESM².
    """

    params: ESCM2Params

    def _regularised(self) -> list[int]:
        names = self.params.nodes
        out = []
        for i, node in enumerate(self.graph.nodes):
            if node.type == "binary" and self.graph.parent_index[i] >= 0 and \
                    (names is None or node.name in names):
                out.append(i)
        if names is not None:
            known = {self.graph.nodes[i].name for i in out}
            wrong = [n for n in names if n not in known]
            if wrong:
                raise ValueError(f"nodes: '{wrong[0]}' is not a binary task with a parent")
        return out

    def build(self, head_input_dims: list[int]) -> list[int]:
        self.regularised = self._regularised()
        first_head: dict[str, int] = {}
        for h, head in enumerate(self.heads()):
            first_head.setdefault(head.node, h)
        self.head_of = {i: first_head[self.graph.nodes[i].name] for i in self.regularised}
        self.imputation = nn.ModuleDict(
            {str(i): nn.Linear(head_input_dims[self.head_of[i]], 1) for i in self.regularised}
        ) if self.params.regulariser == "dr" else nn.ModuleDict()
        self._imputed: dict[int, torch.Tensor] = {}
        return list(head_input_dims)

    def forward(self, head_inputs: list[torch.Tensor],
                towers: Sequence[nn.Module]) -> CascadeOutput:
        if len(self.imputation):  # validation losses use it too
            self._imputed = {i: F.softplus(self.imputation[str(i)](
                head_inputs[self.head_of[i]])).squeeze(-1) for i in self.regularised}
        return super().forward(head_inputs, towers)

    def conditional_regulariser(self, node: int, conditional_loss: torch.Tensor,
                                parent_positive: torch.Tensor, weights: torch.Tensor,
                                out: CascadeOutput) -> torch.Tensor | None:
        if node not in self.head_of or not self.params.weight:
            return None
        parent = self.graph.parent_index[node]
        propensity = out.log_p[:, parent].detach().exp().clamp(min=self.params.clip)
        observed = parent_positive.to(conditional_loss.dtype)
        total = weights.sum().clamp(min=1e-12)
        # rows outside the parent carry no conditional label: their loss term is masked out
        error = torch.where(parent_positive, conditional_loss,
                            torch.zeros_like(conditional_loss))
        if self.params.regulariser == "ips":
            risk = (weights * observed * error / propensity).sum() / total
        else:
            imputed = self._imputed[node]
            risk = (weights * (imputed + observed * (error - imputed) / propensity)).sum()
            imputation = weights * observed * (error.detach() - imputed).square() / propensity
            risk = (risk + imputation.sum()) / total
        return self.params.weight * risk
