"""rankengine-ranktools: an example third-party rankengine plugin.

Contributes, through the ``rankengine`` entry point ``ranktools``:

- the fusion ``smoothed_product``: ``Π_k ((p_k + a_k) / (1 + a_k)) ^ w_k``, which moves from
  the weighted product (alpha = 0: every task must be likely) towards the weighted sum (large alpha:
  tasks add up) with one knob;
- the metrics ``ndcg_5`` and ``ndcg_10``: NDCG@k of each request's ranking (the ``[data]
  group`` column), averaged over requests with at least one positive;
- the learnable cascade ``gated_transfer``: each child task's head input gets a gated,
  learned projection of its parent's, then the heads compose like ESMM (p(child) =
  p(parent) · p(child | parent)); its layers are trained, saved, exported and served;
- the data source ``jsonl``: JSON Lines files (one object per line) read by Arrow's JSON
  reader, errors naming the file, line and column;
- the serving back end ``torch_checked``: the torch model, every answer checked (finite,
  probabilities in [0, 1], p(child) <= p(parent)) and counted.

It imports only rankengine's public API, like rankengine's own built-in plugins.
"""

from __future__ import annotations

from rankengine import (
    CascadeFactory,
    DataSource,
    FusionFactory,
    Metric,
    Register,
    ServingBackend,
    hookimpl,
)
from rankengine_ranktools.backend import CheckedTorchBackend, OutputCheckError
from rankengine_ranktools.cascade import GatedTransfer, GatedTransferParams
from rankengine_ranktools.fusion import SmoothedProduct, SmoothedProductParams
from rankengine_ranktools.metrics import ndcg_at
from rankengine_ranktools.source import JsonLinesSource

__all__ = ["RANKENGINE_HOOK_API", "CheckedTorchBackend", "GatedTransfer", "GatedTransferParams",
           "JsonLinesSource", "OutputCheckError", "SmoothedProduct", "SmoothedProductParams",
           "ndcg_at"]

#: The rankengine hook API this plugin is written against (checked when the plugin loads).
RANKENGINE_HOOK_API = "2.0"


@hookimpl
def rankengine_register_fusions(register: Register[FusionFactory]) -> None:
    register("smoothed_product", SmoothedProduct, params=SmoothedProductParams,
             help="Π ((p_k + a_k) / (1 + a_k)) ^ w_k: weighted product at alpha = 0, "
                  "weighted-sum order as alpha grows")


@hookimpl
def rankengine_register_metrics(register: Register[Metric]) -> None:
    for k in (5, 10):
        register(f"ndcg_{k}", Metric(ndcg_at(k), needs_group=True),
                 help=f"NDCG@{k} of each request's ranking, averaged over requests with a "
                      f"positive (ties averaged)")


@hookimpl
def rankengine_register_cascades(register: Register[CascadeFactory]) -> None:
    register("gated_transfer", GatedTransfer, params=GatedTransferParams,
             help="ESMM after a learned, gated transfer of each parent's head input to its "
                  "children (AITM-style); p(child) <= p(parent)")


@hookimpl
def rankengine_register_sources(register: Register[type[DataSource]]) -> None:
    register("jsonl", JsonLinesSource,
             help="JSON Lines files or directories of them (.jsonl, .ndjson, .gz), one object "
                  "per line, read by Arrow's JSON reader")


@hookimpl
def rankengine_register_backends(register: Register[type[ServingBackend]]) -> None:
    register("torch_checked", CheckedTorchBackend,
             help="the torch model, every answer checked (finite, in [0, 1], p(child) <= "
                  "p(parent)) and counted")
