"""Training log: a one-line summary per epoch on stderr (an observer of the lifecycle hooks)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from rankengine import Params, Register, hookimpl


class ProgressSettings(Params):
    """``[plugins.epoch_log]``: what the per-epoch line shows."""

    #: validation metrics shown per task after each epoch (those computed for the task)
    metrics: list[str] = Field(default_factory=lambda: ["auc"])
    #: no per-epoch line at all
    quiet: bool = False


@hookimpl
def rankengine_register_config_tables(register: Register[type[BaseModel]]) -> None:
    register("epoch_log", ProgressSettings, help="the per-epoch training log line")


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
    settings: ProgressSettings = context.config.plugin_settings("epoch_log")
    if context.rank or settings.quiet:
        return
    train = metrics["train_loss_total"]
    valid = metrics["valid_loss"]["total"]
    shown = [f"valid {name} " + " ".join(f"{task}={_number(m[name])}"
                                         for task, m in metrics["valid"].items() if name in m)
             for name in settings.metrics]
    context.log(", ".join([f"epoch {epoch}: train loss {_number(train)}",
                           f"valid loss {_number(valid)}", *shown]))


def _number(value: float | None) -> str:
    """4 decimals, or "undefined" where a metric has no value (no positives, no rows)."""
    return "undefined" if value is None or value != value else f"{value:.4f}"
