"""Evaluation during training: a split's loss and metrics, and the gates' expert usage."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from rankengine.components import Component
from rankengine.config import EngineConfig
from rankengine.data.batching import TensorData, iterate_batches
from rankengine.data.dataset import EncodedData
from rankengine.device import device_of
from rankengine.evaluate import Metrics, node_metrics
from rankengine.interfaces import LossWeighting, Metric
from rankengine.model.assembly import RankingModel
from rankengine.train.objective import Objective


@torch.inference_mode()
def gate_statistics(model: RankingModel, data: TensorData, batch_size: int,
                    max_rows: int = 200_000) -> dict[str, dict[str, list[Any]]]:
    """Mean gate weight per expert for each task's main head (the MMoE paper's analysis of
    which experts each task uses), and with sparse gates the share of rows routed to each
    expert (``load``); empty for backbones without gates."""
    model.eval()
    device = device_of(model)
    names: list[str] = []
    sums: torch.Tensor | None = None
    loads: torch.Tensor | None = None
    rows = 0
    for batch in iterate_batches(data, batch_size, shuffle=False):
        if rows >= max_rows:
            break
        model(batch.inputs.to(device))
        gates = model.backbone.gate_weights()
        if gates is None:
            return {}
        names, weights = gates
        total = weights.double().sum(dim=0)  # [heads, E]
        sums = total if sums is None else sums + total
        routed = (weights > 0).double().sum(dim=0)  # a sparse gate's rows per expert
        loads = routed if loads is None else loads + routed
        rows += len(batch)
    if sums is None:
        return {}
    heads = model.cascade.heads()
    stats = {}
    for node in model.graph.nodes:
        index = next((i for i, h in enumerate(heads) if h.node == node.name and h.role == "main"),
                     next((i for i, h in enumerate(heads) if h.node == node.name), None))
        if index is not None:
            stats[node.name] = {"experts": names,
                                "weights": (sums[index] / rows).cpu().tolist()}
            if loads is not None and bool((loads[index] < rows).any()):  # sparse routing
                stats[node.name]["load"] = (loads[index] / rows).cpu().tolist()
    return stats



@torch.inference_mode()
def evaluate_split(model: RankingModel, objective: Objective, weighting: LossWeighting,
                    tensors: TensorData, data: EncodedData, config: EngineConfig,
                    metrics: list[Component[Metric]], *, calibrated: bool = False,
                    ) -> tuple[dict[str, float], Metrics]:
    """The split's loss (of the model's own predictions) and its metrics (of the calibrated
    predictions when ``calibrated``)."""
    model.eval()
    graph = model.graph
    device = device_of(model)
    sums = torch.zeros(len(graph), device=device)  # float32 whatever the model computes in
    rows = 0
    entire, conditional = [], []
    for batch in iterate_batches(tensors, config.train.eval_batch_size, shuffle=False):
        batch = batch.to(device, non_blocking=True)
        out = model(batch.inputs)  # one forward for the loss and the predictions
        sums += objective(out, batch).float() * len(batch)
        rows += len(batch)
        if calibrated:
            out = model.calibration(out)
        entire.append(out.entire(graph))
        conditional.append(out.conditional(graph))
    if rows == 0:  # no loss exists on no rows (and 0 would look like a perfect epoch)
        loss = dict.fromkeys([*graph.names, "total"], math.nan)
        empty = np.zeros((0, len(graph)))
        return loss, node_metrics(graph, data, empty, empty, metrics)
    loss = dict(zip(graph.names, (sums / rows).tolist(), strict=True))
    loss["total"] = float(weighting.combine(sums / rows))
    return loss, node_metrics(graph, data, torch.cat(entire).double().cpu().numpy(),
                              torch.cat(conditional).double().cpu().numpy(), metrics)
