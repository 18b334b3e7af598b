"""Cascades: independent heads, ESMM probability chains and ESM² branch decomposition.

Everything is composed in log space so losses stay finite: for a node with parent probability
``b`` and conditional probability ``a``, ``log p = log a + log b`` and
``log(1 - ab) = logaddexp(log(1 - b), log b + log(1 - a))``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from rankengine import (
    Cascade,
    CascadeFactory,
    CascadeOutput,
    HeadSpec,
    Params,
    Register,
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
        out = super().compose(head_outputs)
        lp = torch.stack([
            F.logsigmoid(h) if n.type == "binary" else torch.zeros_like(h)
            for h, n in zip(head_outputs, self.graph.nodes, strict=True)
        ], dim=1)
        lq = torch.stack([
            F.logsigmoid(-h) if n.type == "binary" else torch.zeros_like(h)
            for h, n in zip(head_outputs, self.graph.nodes, strict=True)
        ], dim=1)
        parents = torch.tensor([max(p, 0) for p in self.graph.parent_index], device=lp.device)
        has_parent = torch.tensor([p >= 0 for p in self.graph.parent_index], device=lp.device)
        cond = torch.where(has_parent, (lp - lp.index_select(1, parents)).clamp(max=0.0), lp)
        cond_q = torch.log1p(-cond.exp().clamp(max=1 - 1e-7))
        return CascadeOutput(lp, lq, cond, cond_q, out.value)

    def loss_space(self, node: str) -> Literal["entire", "conditional"]:
        if self.params.space == "entire" or self.graph.node(node).parent is None:
            return "entire"
        return "conditional"
