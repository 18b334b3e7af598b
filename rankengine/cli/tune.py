"""``rankengine tune-fusion``: search a version's fusion weights (the search itself is
:mod:`rankengine.tune`) and, with ``--write``, record it and tag the version with the weights
(:mod:`rankengine.fusion`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np
from rich.table import Table

from rankengine.cli.common import console, device_option, open_store
from rankengine.errors import DataError, RankEngineError, suggest
from rankengine.fusion import FUSION_WEIGHTS_TAG, format_fusion_weights, fusion_with_weights
from rankengine.tune import (
    MAX_TRIALS,
    METHODS,
    Floats,
    TuneResult,
    rule_values,
    run_search,
)

if TYPE_CHECKING:
    import torch

    from rankengine.bundle import ModelBundle
    from rankengine.registry.store import ModelVersion, RegistryStore


def _pick_tasks(option: str | None, names: list[str], named: Sequence[str]) -> list[str]:
    if not option:  # the tasks the weights name (zeros too: a written search names them all)
        return [t for t in names if t in named] or list(names)
    tasks = list(dict.fromkeys(t.strip() for t in option.split(",") if t.strip()))
    for t in tasks:
        if t not in names:
            raise click.UsageError(f"--tasks: unknown task '{t}'; tasks: {', '.join(names)}"
                                   f"{suggest(t, names)}")
    if not tasks:
        raise click.UsageError("--tasks: name at least one task")
    return [t for t in names if t in tasks]


def _parse_priority(items: Sequence[str], tasks: list[str]) -> dict[str, float]:
    out = dict.fromkeys(tasks, 1.0)
    for item in items:
        task, sep, value = item.partition("=")
        task = task.strip()
        if not sep:
            raise click.UsageError(f"--priority {item!r}: expected TASK=WEIGHT")
        if task not in tasks:
            raise click.UsageError(f"--priority {item!r}: '{task}' is not a searched task; "
                                   f"searched: {', '.join(tasks)}{suggest(task, tasks)}")
        try:
            out[task] = float(value)
        except ValueError:
            raise click.UsageError(f"--priority {item!r}: {value!r} is not a number") from None
        if not math.isfinite(out[task]) or out[task] < 0:
            raise click.UsageError(f"--priority {item!r}: expected a number >= 0")
    if not any(out.values()):
        raise click.UsageError("--priority: at least one task needs a priority above 0")
    return out


def _load(model: str, registry: str | None, device: torch.device,
          ) -> tuple[RegistryStore | None, ModelVersion | None, ModelBundle]:
    if Path(model).is_dir():
        from rankengine.artifact import load_artifact

        return None, None, load_artifact(model, device=device)
    from rankengine.registry.artifacts import load_version

    store = open_store(registry)
    return (store, *load_version(store, model, device=device))


def _print(result: TuneResult, *, metric: str, title: str, priority: dict[str, float],
           method: str) -> None:
    shown = list(dict.fromkeys([t for p in result.points for t in p]))
    view = Table(title=title)
    view.add_column("#", justify="right")
    for t in shown:
        view.add_column(f"w({t})", justify="right")
    for t in result.tasks:
        view.add_column(f"{t} {metric}", justify="right")
    view.add_column("rule", justify="right")
    view.add_column("")
    order = sorted(result.front, key=lambda i: -result.rule[i])
    current_key = tuple(result.current.get(t, 0.0) for t in shown)
    best = result.values[result.front].max(axis=0)

    def cells(weights: Mapping[str, float], values: Floats) -> list[str]:
        return ([f"{weights.get(t, 0.0):.4g}" for t in shown]
                + [f"[bold]{v:.4f}[/bold]" if v >= b else f"{v:.4f}"
                   for v, b in zip(values, best, strict=True)])

    for i in order:
        marks = []
        if i == result.recommended:
            marks.append("[bold green]★ recommended[/bold green]")
        if tuple(result.points[i].get(t, 0.0) for t in shown) == current_key:
            marks.append("current")
        style = "green" if i == result.recommended else None
        view.add_row(str(i), *cells(result.points[i], result.values[i]),
                     f"{result.rule[i]:.4f}", ", ".join(marks), style=style)
    weights = np.array([priority[t] for t in result.tasks])
    current_rule = float(rule_values(result.current_values, best, weights))
    view.add_section()
    view.add_row("current", *cells(result.current, result.current_values),
                 f"{current_rule:.4f}", _standing(result))
    console().print(view)
    per_task = ", ".join(f"{t} {c:,}" for t, c in result.requests.items())
    click.echo(f"{metric} per task is the mean over the requests with at least one positive for "
               f"that task (of {result.requests_total:,} requests: {per_task}).")
    click.echo(f"Pareto front: {len(result.front)} of {len(result.points)} weight vectors "
               f"({method}); rule: priority-weighted mean of {metric} / the best on the front "
               f"(priorities {', '.join(f'{t}={w:g}' for t, w in priority.items())}).")
    rec = result.values[result.recommended]
    delta = ", ".join(f"{t} {d:+.4f}" for t, d in zip(result.tasks, rec - result.current_values,
                                                       strict=True))
    click.echo(f"recommended: {format_fusion_weights(result.points[result.recommended])} "
               f"(vs current: {delta})")
    per = result.search_seconds / max(1, len(result.points))
    click.echo(f"scored {result.rows:,} rows in {result.score_seconds:.1f}s; evaluated "
               f"{len(result.points)} weight vectors in {result.search_seconds:.1f}s "
               f"({per * 1000:.0f} ms each)")


def _standing(result: TuneResult) -> str:
    cur = result.current_values
    beaten = [i for i in result.front
              if (result.values[i] >= cur).all() and (result.values[i] > cur).any()]
    return f"dominated by {len(beaten)} front point(s)" if beaten else "on the front"


@click.command("tune-fusion")
@click.argument("model")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="labelled CSV / Parquet file or directory (e.g. the validation split)")
@click.option("--group", default=None,
              help="request column NDCG is computed within (default: the version's [data] "
                   "group, else request_id)")
@click.option("--k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="NDCG cut-off")
@click.option("--method", type=click.Choice(METHODS), default="bayes", show_default=True,
              help="grid, random, or bayes (Optuna: TPE for one task, NSGA-II on the per-task "
                   "NDCGs for several)")
@click.option("--trials", type=click.IntRange(min=1, max=MAX_TRIALS), default=200,
              show_default=True, help="weight vectors to evaluate, anchors included")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="random and bayes: the search's random seed")
@click.option("--tasks", "tasks_option", default=None,
              help="comma-separated tasks whose weights are searched and whose NDCG is "
                   "measured (default: the tasks [fusion] weights names, else every task)")
@click.option("--priority", "priorities", multiple=True,
              help="TASK=W multiplier of a task in the recommendation rule (repeatable)")
@click.option("--write", is_flag=True,
              help="record the search in the version's metrics (fusion_search) and serve the "
                   "recommended weights (version tag fusion_weights)")
@click.option("--json", "as_json", is_flag=True, help="print the search result as JSON")
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
@device_option
def tune_fusion(model: str, data_path: Path, group: str | None, k: int, method: str,
                trials: int, seed: int, tasks_option: str | None, priorities: tuple[str, ...],
                write: bool, as_json: bool, registry: str | None,
                device: torch.device) -> None:
    """Search the fusion weights of MODEL for per-task NDCG@k and show the Pareto front."""
    from rankengine.artifact import to_json

    if not data_path.exists():
        raise DataError(f"{data_path}: data file or directory not found")
    store, version, loaded = _load(model, registry, device)
    if write and (store is None or version is None):
        raise click.UsageError("--write needs a registry reference (NAME@ALIAS or "
                               "NAME/VERSION), not an artifact directory")
    label = version.ref if version else str(model)
    kind = loaded.config.fusion.kind
    if loaded.fusion.weights() is None:
        fields = ", ".join(type(loaded.fusion.params).model_fields) or "(none)"
        raise RankEngineError(f"{label}: fusion '{kind}' has no per-task weights to tune (its "
                              f"parameters: {fields}); tune-fusion searches the weights of "
                              f"weighted_sum / weighted_product fusions")
    names = loaded.graph.names
    tasks = _pick_tasks(tasks_option, names,
                        list(getattr(loaded.fusion.params, "weights", {}) or {}))
    priority = _parse_priority(priorities, tasks)
    group = group or loaded.config.data.group or "request_id"
    metric = f"ndcg@{k}"
    result = run_search(loaded, data_path, group=group, tasks=tasks, k=k, method=method,
                        trials=trials, seed=seed, priority=priority,
                        log=lambda m: click.echo(m, err=True))
    record = result.record(metric=metric, data=str(data_path.resolve()), group=group,
                           method=method, seed=seed, priority=priority)
    if as_json:
        click.echo(to_json(record), nl=False)
    else:
        _print(result, metric=metric, priority=priority, method=method,
               title=f"fusion weights of {label} ({kind}): Pareto front of {metric} per task on "
                     f"{data_path.name}, grouped by {group}")
    if not write:
        return
    assert store is not None and version is not None
    weights = result.points[result.recommended]
    # The tag is read back at every load: it must build (it always does from a search).
    fusion_with_weights(loaded.config, loaded.engine, loaded.graph,
                        format_fusion_weights(weights), where=f"{label} recommended weights")
    store.patch_version(version.model, version.version, metrics={"fusion_search": record},
                        tags={FUSION_WEIGHTS_TAG: format_fusion_weights(weights)})
    click.echo(f"wrote {version.ref}: metrics.fusion_search ({len(record['points'])} points) and "
               f"tag {FUSION_WEIGHTS_TAG}={format_fusion_weights(weights)}; predict, rank and "
               f"serve load these weights (a running server picks them up on restart)",
               err=as_json)
