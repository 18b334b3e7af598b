"""Named task-graph templates (``[task_graph] template = "..."``)."""

from __future__ import annotations

from rankengine import Register, TaskGraphTemplate, hookimpl


@hookimpl
def rankengine_register_task_graphs(
    register: Register[TaskGraphTemplate],
) -> None:
    register("ctr_cvr", {
        "click": {"label": "click"},
        "purchase": {"label": "purchase", "after": "click"},
    }, help="impression → click → purchase (ESMM's CTR / CVR / CTCVR)")
    register("ecommerce_funnel", {
        "click": {"label": "click"},
        "favorite": {"label": "favorite", "after": "click"},
        "order": {"label": "order", "after": "click", "via": "favorite"},
        "pay": {"label": "pay", "after": "order"},
    }, help="impression → click → favorite / order → pay (ESM²'s decisive-action branch)")
