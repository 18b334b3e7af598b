"""Training log: a one-line summary per epoch on stderr (an observer of the lifecycle hooks)."""

from __future__ import annotations

from typing import Any

from rankengine import hookimpl


@hookimpl
def rankengine_before_train(context: Any) -> None:
    if context.rank:
        return
    rows = ", ".join(f"{k} {v:,}" for k, v in context.rows.items())
    heads = len(context.model.cascade.heads())
    params = sum(p.numel() for p in context.model.parameters())
    context.log(f"model: {context.config.model.backbone.kind} + "
                f"{context.config.model.cascade.kind}, {len(context.graph)} tasks, {heads} heads, "
                f"{params:,} parameters; rows: {rows}")


@hookimpl
def rankengine_after_epoch(context: Any, epoch: int, metrics: dict[str, Any]) -> None:
    if context.rank:
        return
    train = metrics["train_loss_total"]
    valid = metrics["valid_loss"]["total"]
    aucs = " ".join(
        f"{task}={_number(m['auc'])}" for task, m in metrics["valid"].items() if "auc" in m
    )
    context.log(f"epoch {epoch}: train loss {_number(train)}, valid loss {_number(valid)}, "
                f"valid auc {aucs}")


def _number(value: float | None) -> str:
    """4 decimals, or "undefined" where a metric has no value (no positives, no rows)."""
    return "undefined" if value is None or value != value else f"{value:.4f}"
