"""rankengine-ranktools: an example third-party rankengine plugin.

Contributes, through the ``rankengine`` entry point ``ranktools``:

- the fusion ``smoothed_product``: ``Π_k ((p_k + a_k) / (1 + a_k)) ^ w_k``, which moves from
  the weighted product (alpha = 0: every task must be likely) towards the weighted sum (large alpha:
  tasks add up) with one knob;
- the metrics ``ndcg_5`` and ``ndcg_10``: NDCG@k of each request's ranking (the ``[data]
  group`` column), averaged over requests with at least one positive.

It imports only rankengine's public API, like rankengine's own built-in plugins.
"""

from __future__ import annotations

from rankengine import Metric, Register, hookimpl
from rankengine_ranktools.fusion import SmoothedProduct, SmoothedProductParams
from rankengine_ranktools.metrics import ndcg_at

__all__ = ["RANKENGINE_HOOK_API", "SmoothedProduct", "SmoothedProductParams", "ndcg_at"]

#: The rankengine hook API this plugin is written against (checked when the plugin loads).
RANKENGINE_HOOK_API = "2.0"


@hookimpl
def rankengine_register_fusions(register: Register) -> None:
    register("smoothed_product", SmoothedProduct, params=SmoothedProductParams,
             help="Π ((p_k + a_k) / (1 + a_k)) ^ w_k: weighted product at alpha = 0, "
                  "weighted-sum order as alpha grows")


@hookimpl
def rankengine_register_metrics(register: Register) -> None:
    for k in (5, 10):
        register(f"ndcg_{k}", Metric(ndcg_at(k), needs_group=True),
                 help=f"NDCG@{k} of each request's ranking, averaged over requests with a "
                      f"positive (ties averaged)")
