"""The smoothed-product fusion."""

from __future__ import annotations

import torch
from pydantic import Field

from rankengine import Fusion, Params


class SmoothedProductParams(Params):
    #: Exponent w_k per task; tasks not named do not count. Negative weights penalise a task.
    weights: dict[str, float] = Field(min_length=1)
    #: Smoothing a_k >= 0: one value for every task, or one per task (unnamed tasks get 0).
    alpha: float | dict[str, float] = 0.1


class SmoothedProduct(Fusion):
    """``Π_k ((p_k + a_k) / (1 + a_k)) ^ w_k``, computed as ``exp Σ_k w_k log(...)``.

    With alpha = 0 this is exactly the built-in ``weighted_product``: a candidate needs every
    weighted behaviour to be likely. A small alpha stops a near-zero probability of one task (pay on
    a cheap item) from wiping out the others; as alpha grows the order tends to the weighted sum
    ``Σ_k w_k p_k / (1 + a_k)``. Dividing by ``1 + a_k`` keeps scores in ``(0, 1]`` for
    non-negative weights and does not change the order. Each candidate's score depends on its
    own predictions only, so batch scoring and serving rank the same way.
    """

    params: SmoothedProductParams

    def __init__(self, tasks: list[str], params: SmoothedProductParams) -> None:
        super().__init__(tasks, params)
        alpha = params.alpha if isinstance(params.alpha, dict) else dict.fromkeys(
            params.weights, params.alpha)
        for key, names in (("weights", params.weights), ("alpha", alpha)):
            unknown = sorted(set(names) - set(tasks))
            if unknown:
                raise ValueError(f"{key} name unknown task(s) {unknown}; "
                                 f"tasks: {', '.join(tasks)}")
        negative = sorted(name for name, a in alpha.items() if not a >= 0.0)
        if negative:
            raise ValueError(f"alpha must be >= 0; got {negative}")
        used = [t for t in tasks if t in params.weights]
        self.index = torch.tensor([tasks.index(t) for t in used])
        self.w = torch.tensor([params.weights[t] for t in used], dtype=torch.float64)
        self.alpha = torch.tensor([alpha.get(t, 0.0) for t in used], dtype=torch.float64)

    def __call__(self, predictions: torch.Tensor) -> torch.Tensor:
        dtype = predictions.dtype
        p = predictions.index_select(1, self.index.to(predictions.device))
        alpha = self.alpha.to(device=p.device, dtype=dtype)
        logs = ((p + alpha).clamp(min=1e-12) / (1.0 + alpha)).log()
        return (logs @ self.w.to(device=p.device, dtype=dtype)).exp()
