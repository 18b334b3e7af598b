"""Calibration of a model's outputs: each node's conditional prediction through its calibrator,
the entire-space predictions recomposed from them.

A binary node's calibrator maps the logit of p(node | parent) to a calibrated logit, and the
change it makes multiplies into the node and every descendant: log p'(node) = log p(node) +
Σ over the node and its ancestors of (log p'(a | parent) - log p(a | parent)). For a cascade
that composes down the graph (ESMM, ESM²) this is exactly the product of the calibrated
conditionals, so p(child) <= p(parent) still holds. A regression node's calibrator maps its
E[value | parent]. Nodes whose calibrator is the identity are left out entirely.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from scipy.special import expit
from torch import nn

from rankengine.graph import TaskGraph
from rankengine.interfaces import Calibrator, CascadeOutput


class Calibration(nn.Module):
    """The calibrators of a model's nodes (``None``: the node stays as it is)."""

    paths: torch.Tensor

    def __init__(self, graph: TaskGraph, calibrators: Sequence[Calibrator | None]) -> None:
        super().__init__()
        self.graph = graph
        kept = [(i, c) for i, c in enumerate(calibrators)
                if c is not None and not getattr(c, "identity", False)]
        self.nodes = [i for i, _ in kept]
        self.calibrators = nn.ModuleList([c for _, c in kept])
        t = len(graph)
        # paths[j, i] = 1 when node j is node i or one of its ancestors (binary nodes only)
        paths = torch.zeros(t, t)
        for i, node in enumerate(graph.nodes):
            if node.type != "binary":
                continue
            j = i
            while j >= 0:
                paths[j, i] = 1.0
                j = graph.parent_index[j]
        self.register_buffer("paths", paths, persistent=False)

    @property
    def active(self) -> bool:
        return bool(self.nodes)

    def forward(self, out: CascadeOutput) -> CascadeOutput:
        if not self.nodes:
            return out
        cond_p = list(out.cond_log_p.unbind(1))
        cond_q = list(out.cond_log_q.unbind(1))
        values = list(out.value.unbind(1))
        deltas = torch.zeros_like(out.log_p)
        delta_columns = list(deltas.unbind(1))
        for i, calibrator in zip(self.nodes, self.calibrators, strict=True):
            assert isinstance(calibrator, Calibrator)
            if self.graph.nodes[i].type == "regression":
                values[i] = calibrator(values[i])
                continue
            logit = calibrator(cond_p[i] - cond_q[i])
            new_p = F.logsigmoid(logit)
            delta_columns[i] = new_p - cond_p[i]
            cond_p[i], cond_q[i] = new_p, F.logsigmoid(-logit)
        shift = torch.stack(delta_columns, dim=1) @ self.paths
        log_p = (out.log_p + shift).clamp(max=0.0)
        moved = (self.paths.diagonal() > 0) & (shift != 0)  # binary nodes whose p changed
        log_q = torch.where(moved, torch.log1p(-log_p.exp().clamp(max=1 - 1e-7)), out.log_q)
        return CascadeOutput(log_p, log_q, torch.stack(cond_p, dim=1),
                             torch.stack(cond_q, dim=1), torch.stack(values, dim=1))

    def fit(self, out: CascadeOutput, labels: np.ndarray) -> dict[str, int]:
        """Fit every calibrator on the rows its node is trained on (parent-positive rows; all
        rows for a root): conditional logits (binary) or values (regression) against the
        labels. Returns the rows each node was fitted on."""
        rows: dict[str, int] = {}
        cond_logit = (out.cond_log_p - out.cond_log_q).double().cpu().numpy()
        value = out.value.double().cpu().numpy()
        for i, calibrator in zip(self.nodes, self.calibrators, strict=True):
            assert isinstance(calibrator, Calibrator)
            node, parent = self.graph.nodes[i], self.graph.parent_index[i]
            mask = np.ones(len(labels), dtype=bool) if parent < 0 else labels[:, parent] == 1
            mask &= np.isfinite(labels[:, i])
            predictions = (value if node.type == "regression" else cond_logit)[mask, i]
            calibrator.fit(predictions, labels[mask, i].astype(np.float64))
            rows[node.name] = int(mask.sum())
        return rows


def mean_preserving_offsets(logits: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Per column k of ``logits [N, K]``, the constant ``c`` with ``mean sigmoid(logits + c) =
    mean sigmoid(logits + shifts)``: one offset in place of per-row ones (``shifts [N]``) that keeps
    the mean probability (their mean would not: the sigmoid is not linear)."""
    offsets = np.zeros(logits.shape[1])
    for k in range(logits.shape[1]):
        z = logits[:, k]
        target = float(expit(z + shifts).mean())
        lo, hi = float(shifts.min()), float(shifts.max())  # the mean lies between the extremes
        if hi - lo < 1e-12:
            offsets[k] = lo
            continue
        offsets[k] = brentq(_mean_gap, lo, hi, args=(z, target), xtol=1e-10)
    return offsets


def _mean_gap(c: float, z: np.ndarray, target: float) -> float:
    return float(expit(z + c).mean()) - target
