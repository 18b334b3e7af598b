"""Losses. Pointwise: binary cross-entropy on (log p, log(1-p)), MSE and log-MSE for values.
Learning to rank within request groups (``[loss.ranking]``): BPR (Rendle et al. 2009), RankNet
(Burges et al. 2005), a pairwise hinge and a listwise softmax (ListNet top-one, Cao et al. 2007).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from rankengine import (
    LossFactory,
    NodePrediction,
    PairwiseLoss,
    Params,
    PointwiseLoss,
    RankingLoss,
    Register,
    hookimpl,
)


@hookimpl
def rankengine_register_losses(
    register: Register[LossFactory],
) -> None:
    register("bce", BCELoss, default=True,
             help="binary cross-entropy, computed in log space (binary tasks; their default)")
    register("focal", FocalLoss, params=FocalParams,
             help="focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, "
                  "so easy rows count less (binary tasks)")
    register("mse", SquaredError, default=True,
             help="squared error on the value (regression tasks; their default)")
    register("log_mse", LogSquaredError,
             help="squared error of log1p(value); the head models log1p(value) (regression "
                  "tasks)")
    register("bpr", lambda params: BPRLoss(), help="ranking: -log sigmoid(s_i - s_j) per pair")
    register("ranknet", RankNetLoss, params=RankNetParams,
             help="ranking: cross-entropy of sigmoid(sigma (s_i - s_j)); ties target 1/2")
    register("pairwise_hinge", PairwiseHingeLoss, params=HingeParams,
             help="ranking: max(0, margin - (s_i - s_j)) per pair")
    register("listwise", lambda params: ListwiseSoftmaxLoss(),
             help="ranking: softmax cross-entropy against relevance shares per group")


class BCELoss(PointwiseLoss):
    task_types = ("binary",)

    def __call__(self, prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor:
        return -(target * prediction.log_p + (1.0 - target) * prediction.log_q)


class FocalParams(Params):
    #: how much confident, correct rows are down-weighted (0: cross-entropy)
    gamma: float = Field(default=2.0, ge=0.0, le=10.0)
    #: the weight of positives (negatives get 1 - alpha); None: no class weighting
    alpha: float | None = Field(default=None, gt=0.0, lt=1.0)


class FocalLoss(PointwiseLoss):
    """``-(1 - p)^gamma log p`` on positives and ``-p^gamma log(1 - p)`` on negatives, from
    the cascade's log-probabilities (no log of a rounded probability), with soft targets
    mixing the two. Its optimum is not the base rate: with the default calibration the
    calibrator repairs that after training."""

    task_types = ("binary",)
    params: FocalParams

    def __call__(self, prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor:
        gamma = self.params.gamma  # (1 - p)^gamma = exp(gamma log(1 - p)), in log space
        positive = -torch.exp(gamma * prediction.log_q) * prediction.log_p
        negative = -torch.exp(gamma * prediction.log_p) * prediction.log_q
        alpha = self.params.alpha
        if alpha is not None:
            positive, negative = alpha * positive, (1.0 - alpha) * negative
        return target * positive + (1.0 - target) * negative


class SquaredError(PointwiseLoss):
    task_types = ("regression",)

    def __call__(self, prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor:
        return (prediction.value - target).square()


class LogSquaredError(PointwiseLoss):
    """The head models log1p(value): its link is ``expm1`` and the loss compares logs."""

    task_types = ("regression",)

    def __call__(self, prediction: NodePrediction, target: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(prediction.value) - torch.log1p(target.clamp(min=0.0))).square()

    def to_value(self, head_output: torch.Tensor) -> torch.Tensor:
        return torch.expm1(head_output)

    def from_value(self, value: torch.Tensor) -> torch.Tensor:
        return torch.log1p(value)


# -- learning to rank -------------------------------------------------------------------------


class BPRLoss(PairwiseLoss):
    """``-log sigmoid(s_i - s_j)``, antisymmetric up to the difference: ``L(d) - L(-d) = -d``."""

    def pair_loss(self, difference: torch.Tensor, tied: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(difference)


class RankNetParams(Params):
    sigma: float = Field(default=1.0, gt=0)
    #: also learn equal-relevance pairs toward P(i > j) = 1/2
    ties: bool = False


class RankNetLoss(PairwiseLoss):
    """Cross-entropy between ``sigmoid(sigma · (s_i - s_j))`` and the target 1 (or 1/2 for ties)."""

    def __init__(self, params: RankNetParams) -> None:
        self.sigma = params.sigma
        self.ties = params.ties

    def pair_loss(self, difference: torch.Tensor, tied: torch.Tensor) -> torch.Tensor:
        target = torch.where(tied, 0.5, 1.0)
        return F.binary_cross_entropy_with_logits(self.sigma * difference, target,
                                                  reduction="none")


class HingeParams(Params):
    margin: float = Field(default=1.0, ge=0)


class PairwiseHingeLoss(PairwiseLoss):
    """``max(0, margin - (s_i - s_j))``: exactly zero (and zero gradient) once separated."""

    def __init__(self, params: HingeParams) -> None:
        self.margin = params.margin

    def pair_loss(self, difference: torch.Tensor, tied: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.margin - difference)


class ListwiseSoftmaxLoss(RankingLoss):
    """Per group with any relevance: ``-Σ_i (rel_i / Σ rel) · log softmax_group(s)_i``, averaged
    over those groups (vectorised with scatter; groups without relevance are skipped)."""

    def __call__(self, scores: torch.Tensor, relevance: torch.Tensor, groups: torch.Tensor,
                 *, max_pairs_per_group: int, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        _, index = torch.unique(groups, return_inverse=True)
        count = int(index.max()) + 1 if len(index) else 0
        device = scores.device
        total = torch.zeros(count, dtype=relevance.dtype, device=device).index_add(
            0, index, relevance)
        useful = total[index] > 0
        if not useful.any():
            return scores.sum() * 0.0
        top = torch.full((count,), float("-inf"), dtype=scores.dtype, device=device).scatter_reduce(
            0, index, scores.detach(), reduce="amax")
        shifted = scores - top[index]
        lse = torch.zeros(count, dtype=scores.dtype, device=device).index_add(
            0, index, shifted.exp()).log()
        log_softmax = shifted - lse[index]
        share = torch.where(useful, relevance / total[index].clamp(min=1e-12), 0.0)
        per_group = torch.zeros(count, dtype=scores.dtype, device=device).index_add(
            0, index, -share * log_softmax)
        return per_group[total > 0].mean()
