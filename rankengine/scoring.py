"""The one scoring path: model input → model (features, backbone, cascade) → calibration →
predictions → fusion → named outputs.

:class:`PredictionModule` is the first half, as a module: what the torch serving back end runs,
what ``predict`` / ``rank`` / ``evaluate`` run batch by batch, and what back ends that run an
exported graph export. :func:`named_outputs` is the second half: the fused score and the
``p_<task>`` / ``pc_<task>`` columns every command returns. :class:`ScoringModule` puts the two
in one graph for ``rankengine export``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from rankengine.data.batching import ModelInput, TensorData, iterate_batches, per_context
from rankengine.device import device_of
from rankengine.errors import DataError
from rankengine.graph import TaskGraph
from rankengine.interfaces import Fusion
from rankengine.model.assembly import RankingModel


class PredictionModule(nn.Module):
    """``forward(ids, dense, *id_lists) -> (entire [B, T], conditional [B, T])``: every task's
    entire-space prediction and its prediction given the parent, in graph order. Fusion stays
    outside, so per-request fusion weights work with every back end."""

    def __init__(self, model: RankingModel, *, calibrated: bool = True) -> None:
        super().__init__()
        self.model = model.eval()
        self.graph = model.graph
        #: False: the model's own predictions (what evaluate shows next to the calibrated)
        self.calibrated = calibrated

    def forward(self, ids: torch.Tensor, dense: torch.Tensor,
                *id_lists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predict(ModelInput(ids, dense, list(id_lists)))

    def predict(self, inputs: ModelInput) -> tuple[torch.Tensor, torch.Tensor]:
        """On the model's device (inputs are moved there; an exported graph's inputs already
        are); float32 whatever precision the model computes in."""
        inputs = inputs.to(device_of(self.model), non_blocking=True)
        # the fitted calibration, when the model has one
        out = self.model.calibrated(inputs) if self.calibrated else self.model(inputs)
        return out.entire(self.graph).float(), out.conditional(self.graph).float()

    @torch.inference_mode()
    def predict_all(self, data: TensorData, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Every row of ``data``, batch by batch, as float64 arrays. With group ids (a
        request per group), a request's context sequences are read once (:func:`per_context`).
        """
        entire, conditional = [], []
        context_side = self.model.embedder.context_side
        for batch in iterate_batches(data, batch_size, shuffle=False):
            inputs = batch.inputs if batch.groups is None else \
                per_context(batch.inputs, batch.groups, context_side)
            e, c = self.predict(inputs)
            entire.append(e)
            conditional.append(c)
        if not entire:
            t = len(self.graph)
            return np.zeros((0, t)), np.zeros((0, t))
        return (torch.cat(entire).double().cpu().numpy(),
                torch.cat(conditional).double().cpu().numpy())


def predict_arrays(model: RankingModel, data: TensorData,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Entire-space and conditional predictions ``[N, T]`` (float64) for every row."""
    return PredictionModule(model).predict_all(data, batch_size)


class ScoringModule(nn.Module):
    """``forward(ids, dense, *id_lists) -> [B, T + 1]``: every task's entire-space prediction,
    then the fused score (the exported graph)."""

    def __init__(self, model: RankingModel, fusion: Fusion) -> None:
        super().__init__()
        self.predictions = PredictionModule(model)
        self.fusion = fusion

    def forward(self, ids: torch.Tensor, dense: torch.Tensor,
                *id_lists: torch.Tensor) -> torch.Tensor:
        entire, _ = self.predictions(ids, dense, *id_lists)
        return torch.cat([entire, self.fusion(entire).unsqueeze(1)], dim=1)


def named_outputs(graph: TaskGraph, fusion: Fusion, entire: np.ndarray,
                  conditional: np.ndarray, *, label: Callable[[int], str],
                  error: type[Exception] = DataError) -> dict[str, np.ndarray]:
    """``p_<task>`` (entire space), ``pc_<task>`` (given the parent, for tasks with one) and
    ``score`` (fused). A row whose outputs are not all finite numbers (extreme feature values)
    is an ``error`` naming it by ``label(row)``: a NaN would rank nowhere."""
    out = entire_outputs(entire, graph.names)
    for i, name in enumerate(graph.names):
        if graph.parent_index[i] >= 0:
            out[f"pc_{name}"] = conditional[:, i]
    with torch.inference_mode():
        out["score"] = fusion(torch.from_numpy(entire)).double().cpu().numpy()
    require_finite(out, label, error=error)
    return out


def entire_outputs(entire: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """``p_<task>`` → the entire-space prediction column, as scoring names them."""
    return {f"p_{name}": entire[:, i] for i, name in enumerate(names)}


def require_finite(outputs: Mapping[str, np.ndarray], label: Callable[[int], str], *,
                   error: type[Exception] = DataError) -> None:
    """Raise ``error`` naming the first row (``label(row)``) whose outputs (``p_click``,
    ``score`` ...) are not all finite, and that output. A NaN from an extreme feature value
    would otherwise be a silent NaN metric, a missing score, or a candidate ranked nowhere."""
    if not outputs:
        return
    finite = np.logical_and.reduce([np.isfinite(v) for v in outputs.values()])
    if finite.all():
        return
    row = int(np.flatnonzero(~finite)[0])
    name = next(k for k, v in outputs.items() if not np.isfinite(v[row]))
    raise error(f"{label(row)}: its {name} is {float(outputs[name][row])}, not a finite number; "
                f"check its feature values for extreme numbers")
