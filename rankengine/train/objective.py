"""The training objective: each task's pointwise loss on the rows it is trained on, weighted."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rankengine.data.batching import Batch
from rankengine.graph import TaskGraph
from rankengine.interfaces import Cascade, NodePrediction, PointwiseLoss, SampleWeighting
from rankengine.model.assembly import RankingModel


class Objective:
    """Per-task pointwise losses → masked, sample-weighted means ``[T]``.

    ``loss_k = Σ_i w_ik · m_ik · loss_ik / Σ_i w_ik · m_ik`` where ``m`` is 1 on the rows the
    task is trained on (all rows, or the parent-positive rows for conditional spaces and
    regression tasks) and ``w`` comes from the sample-weighting plugin: a row of weight 2 counts
    exactly like the row twice, a row of weight 0 exactly like no row at all.

    Odds correction: a weighting that counts a binary task's positives ``r`` times as much as
    its negatives (``r`` = mean weight of the positives / mean weight of the negatives) would
    teach the model odds ``r`` times too high. With :meth:`correct_odds` the loss sees the
    model's logit plus ``log r`` instead, so the weighted optimum of that sum is the inflated
    odds and the model's own output stays at the real base rate (exact for a constant factor
    such as ``label_weight``; the base rate only for factors that vary by row). Nothing changes
    at scoring.
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
        self.cascade = model.cascade
        #: the cascade adds a regulariser on the conditional losses (ESCM²)
        self.regularised = type(model.cascade).conditional_regulariser is not \
            Cascade.conditional_regulariser
        #: the nodes it may regularise, fixed here: no tensor is read on the host per step
        self.regularisable = {i for i, (node, parent) in
                              enumerate(zip(graph.nodes, graph.parent_index, strict=True))
                              if node.type == "binary" and parent >= 0}
        self.needs_mask = bool(self.conditional.any()) or self.aux or self.regularised
        self.binary = torch.tensor([node.type == "binary" for node in graph.nodes])
        #: log odds factor added to each task's logit in its loss (main space, aux space)
        self.offsets: torch.Tensor | None = None
        self.aux_offsets: torch.Tensor | None = None
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> Objective:
        """Move the objective's constants to the device of the losses it will meet."""
        if device != self.device:
            for name in ("parent", "has_parent", "conditional", "aux_weight", "binary",
                         "offsets", "aux_offsets"):
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, value.to(device))
            self.device = device
        return self

    def odds_factors(self, labels: np.ndarray, extras: Mapping[str, np.ndarray],
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The weighting's odds factor per task on the rows each loss sees (its main space and
        its parent-positive rows), measured on ``labels``/``extras``; 1 where it is undefined
        (no positive or no weighted negative) or the task is not binary."""
        weights = self.sample_weighting.weights(
            torch.from_numpy(labels), {k: torch.from_numpy(v) for k, v in extras.items()},
        ).double().numpy()
        parent = labels[:, self.parent.cpu().numpy()] == 1
        main = np.ones(len(self.graph), dtype=np.float64)
        aux = np.ones(len(self.graph), dtype=np.float64)
        for i, node in enumerate(self.graph.nodes):
            if node.type != "binary":
                continue
            everywhere = np.ones(len(labels), dtype=bool)
            sub = parent[:, i] if self.has_parent[i] else everywhere
            main[i] = _odds_factor(labels[:, i], weights[:, i],
                                   sub if self.conditional[i] else everywhere)
            aux[i] = _odds_factor(labels[:, i], weights[:, i], sub)
        return main, aux

    def correct_odds(self, main: np.ndarray, aux: np.ndarray) -> None:
        """Add ``log`` of these odds factors to each binary task's logit in its loss."""
        if np.allclose(main, 1.0) and np.allclose(aux, 1.0):
            self.offsets = self.aux_offsets = None
            return
        self.offsets = torch.from_numpy(np.log(main)).float().to(self.device)
        self.aux_offsets = torch.from_numpy(np.log(aux)).float().to(self.device)

    def __call__(self, out: Any, batch: Batch) -> torch.Tensor:
        labels = batch.labels
        self.to(labels.device)
        log_p = torch.where(self.conditional, out.cond_log_p, out.log_p)
        log_q = torch.where(self.conditional, out.cond_log_q, out.log_q)
        if self.offsets is not None:
            log_p, log_q = self._shifted(log_p, log_q, self.offsets)
        per_sample = self._pointwise(log_p, log_q, out, labels)
        weights = self.sample_weighting.weights(labels, batch.extras)
        if not self.needs_mask:
            return _weighted_mean(per_sample, weights)
        parent_positive = labels.index_select(1, self.parent) == 1
        mask = torch.where(self.conditional, parent_positive, True).to(per_sample.dtype)
        losses = _weighted_mean(per_sample, weights * mask)
        cond = None  # the per-sample losses of p(node | parent) as the cascade gives them
        if self.aux:
            if self.aux_offsets is None:
                aux_cond = cond = self._pointwise(out.cond_log_p, out.cond_log_q, out, labels)
            else:
                aux_cond = self._pointwise(
                    *self._shifted(out.cond_log_p, out.cond_log_q, self.aux_offsets), out, labels)
            sub = (parent_positive & self.has_parent).to(aux_cond.dtype)
            losses = losses + self.aux_weight * _weighted_mean(aux_cond, weights * sub)
        if self.regularised:
            if cond is None:
                cond = self._pointwise(out.cond_log_p, out.cond_log_q, out, labels)
            extra = [self.cascade.conditional_regulariser(
                i, cond[:, i], parent_positive[:, i], weights[:, i], out)
                if i in self.regularisable else None for i in range(len(self.losses))]
            losses = losses + torch.stack([
                e if e is not None else losses.new_zeros(()) for e in extra])
        return losses

    def _pointwise(self, log_p: torch.Tensor, log_q: torch.Tensor, out: Any,
                   labels: torch.Tensor) -> torch.Tensor:
        """``[B, T]``: each task's pointwise loss on these log probabilities."""
        return torch.stack([
            loss(NodePrediction(log_p[:, i], log_q[:, i], out.value[:, i]), labels[:, i])
            for i, loss in enumerate(self.losses)
        ], dim=1)

    def _shifted(self, log_p: torch.Tensor, log_q: torch.Tensor, offsets: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p and log(1 - p) of the logits moved by ``offsets`` (binary tasks only)."""
        logit = log_p - log_q + offsets
        moved = self.binary & (offsets != 0)
        return (torch.where(moved, F.logsigmoid(logit), log_p),
                torch.where(moved, F.logsigmoid(-logit), log_q))


def _odds_factor(labels: np.ndarray, weights: np.ndarray, rows: np.ndarray) -> float:
    positive = rows & (labels == 1)
    negative = rows & (labels == 0)
    if not positive.any() or not negative.any():
        return 1.0
    on_negatives = float(weights[negative].mean())
    factor = float(weights[positive].mean()) / on_negatives if on_negatives > 0 else math.inf
    return factor if math.isfinite(factor) and factor > 0 else 1.0


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Column-wise ``Σ w·v / Σ w`` (0 where a column has no weight at all)."""
    total = weights.sum(0)
    return (values * weights).sum(0) / torch.where(total > 0, total, 1.0)
