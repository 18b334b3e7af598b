"""The training objective: each task's pointwise loss on the rows it is trained on, weighted."""

from __future__ import annotations

from typing import Any

import torch

from rankengine.data.batching import Batch
from rankengine.graph import TaskGraph
from rankengine.interfaces import NodePrediction, PointwiseLoss, SampleWeighting
from rankengine.model.assembly import RankingModel


class Objective:
    """Per-task pointwise losses → masked, sample-weighted means ``[T]``.

    ``loss_k = Σ_i w_ik · m_ik · loss_ik / Σ_i w_ik · m_ik`` where ``m`` is 1 on the rows the
    task is trained on (all rows, or the parent-positive rows for conditional spaces and
    regression tasks) and ``w`` comes from the sample-weighting plugin: a row of weight 2 counts
    exactly like the row twice, a row of weight 0 exactly like no row at all.
    """

    def __init__(self, graph: TaskGraph, model: RankingModel, losses: list[PointwiseLoss],
                 sample_weighting: SampleWeighting) -> None:
        self.graph = graph
        self.losses = losses
        self.sample_weighting = sample_weighting
        conditional = [
            node.type == "regression" or model.cascade.loss_space(node.name) == "conditional"
            for node in graph.nodes
        ]
        self.parent = torch.tensor([max(p, 0) for p in graph.parent_index])
        self.has_parent = torch.tensor([p >= 0 for p in graph.parent_index])
        self.conditional = torch.tensor(conditional) & self.has_parent
        aux = [model.cascade.conditional_loss_weight(n.name) if n.type == "binary" else 0.0
               for n in graph.nodes]
        self.aux_weight = torch.tensor(aux) * self.has_parent * ~self.conditional
        self.aux = bool(self.aux_weight.any())
        self.needs_mask = bool(self.conditional.any()) or self.aux

    def __call__(self, out: Any, batch: Batch) -> torch.Tensor:
        labels = batch.labels
        log_p = torch.where(self.conditional, out.cond_log_p, out.log_p)
        log_q = torch.where(self.conditional, out.cond_log_q, out.log_q)
        per_sample = torch.stack([
            loss(NodePrediction(log_p[:, i], log_q[:, i], out.value[:, i]), labels[:, i])
            for i, loss in enumerate(self.losses)
        ], dim=1)
        weights = self.sample_weighting.weights(labels, batch.extras)
        if not self.needs_mask:
            return _weighted_mean(per_sample, weights)
        parent_positive = labels.index_select(1, self.parent) == 1
        mask = torch.where(self.conditional, parent_positive, True).to(per_sample.dtype)
        losses = _weighted_mean(per_sample, weights * mask)
        if self.aux:
            cond = torch.stack([
                loss(NodePrediction(out.cond_log_p[:, i], out.cond_log_q[:, i],
                                    out.value[:, i]), labels[:, i])
                for i, loss in enumerate(self.losses)
            ], dim=1)
            sub = (parent_positive & self.has_parent).to(cond.dtype)
            losses = losses + self.aux_weight * _weighted_mean(cond, weights * sub)
        return losses



def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Column-wise ``Σ w·v / Σ w`` (0 where a column has no weight at all)."""
    total = weights.sum(0)
    return (values * weights).sum(0) / torch.where(total > 0, total, 1.0)
