"""Calibrators: fitted after training on the validation split, saved and served with the model.

Binary calibrators map the logit of p(node | parent) to a calibrated logit: ``bias`` (one
offset), ``platt`` (slope and offset), ``temperature`` (one divisor) are fitted by minimising
the log loss with L-BFGS; ``isotonic`` is a monotone map fitted by scikit-learn's isotonic
regression on equal-mass buckets of at least ``min_bucket`` rows, applied as a piecewise-linear
function of the logit (exportable to ONNX). ``scale`` multiplies a regression node's
E[value | parent] so its mean matches the labels'. ``none`` (the default) changes nothing.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from rankengine import Calibrator, CalibratorFactory, NoParams, Params, Register, hookimpl

from .metrics import equal_mass_buckets


@hookimpl
def rankengine_register_calibrators(register: Register[CalibratorFactory]) -> None:
    register("none", NoCalibration, default=True,
             help="no calibration: predictions as the model makes them")
    register("bias", BiasCalibrator, help="one logit offset per node, fitted by log loss")
    register("platt", PlattCalibrator,
             help="slope and offset on the logit per node (Platt scaling), fitted by log loss")
    register("temperature", TemperatureCalibrator,
             help="the logit divided by a fitted temperature per node (order unchanged)")
    register("isotonic", IsotonicCalibrator, params=IsotonicParams,
             help="monotone map of the logit (isotonic regression on equal-mass buckets of "
                  "at least min_bucket rows), piecewise linear")
    register("scale", ScaleCalibrator,
             help="regression nodes: E[value | parent] scaled so its mean matches the labels'")


class NoCalibration(Calibrator):
    task_types = ("binary", "regression")
    #: the core skips an identity calibrator altogether (no recomposition, nothing saved)
    identity: ClassVar[bool] = True

    def fit(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        return None

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions


class _LoglossFitted(Calibrator):
    """A parametric logit map fitted by minimising the binary log loss with L-BFGS. Its
    parameters need no gradient outside :meth:`fit` (the model's training leaves them alone)."""

    @staticmethod
    def fixed(value: float) -> torch.nn.Parameter:
        return torch.nn.Parameter(torch.tensor(value), requires_grad=False)

    def fit(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        if len(predictions) == 0 or targets.min() == targets.max():
            return  # one class (or none): nothing to calibrate against; stay the identity
        params = list(self.parameters())
        device = params[0].device  # fit where the model lives
        logits = torch.as_tensor(np.asarray(predictions, dtype=np.float32), device=device)
        labels = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=device)
        optimizer = torch.optim.LBFGS(params, max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(self(logits), labels)
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        for param in params:
            param.requires_grad_(True)
        try:
            with torch.enable_grad():
                optimizer.step(closure)  # type: ignore[no-untyped-call]
        finally:
            for param in params:
                param.requires_grad_(False)
                param.grad = None


class BiasCalibrator(_LoglossFitted):
    def __init__(self, params: NoParams) -> None:
        super().__init__(params)
        self.bias = self.fixed(0.0)

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions + self.bias


class PlattCalibrator(_LoglossFitted):
    def __init__(self, params: NoParams) -> None:
        super().__init__(params)
        self.slope = self.fixed(1.0)
        self.bias = self.fixed(0.0)

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        return self.slope * predictions + self.bias


class TemperatureCalibrator(_LoglossFitted):
    def __init__(self, params: NoParams) -> None:
        super().__init__(params)
        self.log_temperature = self.fixed(0.0)  # the temperature exp(.) stays > 0

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions * torch.exp(-self.log_temperature)


class IsotonicParams(Params):
    #: fewest validation rows a bucket of the fit holds (fewer rows: noise, not calibration)
    min_bucket: int = Field(default=200, ge=1)
    #: most knots of the piecewise-linear map (the buckets' mean logits)
    knots: int = Field(default=64, ge=2, le=4096)


class IsotonicCalibrator(Calibrator):
    """Equal-mass buckets of the logit, isotonic regression of their positive rates (weighted
    by their sizes), interpolated linearly in the logit between the buckets' mean logits and
    held flat beyond the first and last."""

    params: IsotonicParams
    knot_logits: torch.Tensor
    knot_probabilities: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, params: IsotonicParams) -> None:
        super().__init__(params)
        self.register_buffer("knot_logits", torch.zeros(params.knots))
        self.register_buffer("knot_probabilities", torch.zeros(params.knots))
        self.register_buffer("fitted", torch.zeros(()))

    def fit(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        if len(predictions) == 0 or targets.min() == targets.max():
            return
        buckets = int(min(self.params.knots, max(2, len(predictions) // self.params.min_bucket)))
        rate, x, sizes = equal_mass_buckets(targets, predictions, buckets)
        fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(x, rate,
                                                                         sample_weight=sizes)
        # Pad to the fixed number of knots by repeating the last one (a flat segment).
        pad = self.params.knots - len(x)
        x = np.concatenate([x, np.full(pad, x[-1])])
        fitted = np.concatenate([fitted, np.full(pad, fitted[-1])])
        self.knot_logits.copy_(torch.from_numpy(x))
        self.knot_probabilities.copy_(torch.from_numpy(fitted))
        self.fitted.fill_(1.0)

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        xs, ys = self.knot_logits, self.knot_probabilities
        # the segment of each prediction: how many knots lie at or below it (clamped inside)
        right = (predictions.unsqueeze(-1) >= xs).sum(-1).clamp(1, len(xs) - 1)
        x0, x1 = xs[right - 1], xs[right]
        y0, y1 = ys[right - 1], ys[right]
        share = ((predictions - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0.0, 1.0)
        p = (y0 + share * (y1 - y0)).clamp(1e-7, 1 - 1e-7)
        return torch.where(self.fitted > 0, torch.logit(p), predictions)


class ScaleCalibrator(Calibrator):
    task_types = ("regression",)
    scale: torch.Tensor

    def __init__(self, params: NoParams) -> None:
        super().__init__(params)
        self.register_buffer("scale", torch.ones(()))

    def fit(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        mean = float(np.mean(predictions)) if len(predictions) else 0.0
        if mean > 0 and np.isfinite(mean):
            self.scale.fill_(float(np.mean(targets)) / mean)

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions * self.scale
