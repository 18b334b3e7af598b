"""What several commands share: the console, common options, opening the registry, loading
a model by directory or registry reference, and printing metrics."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from rankengine.registry.store import RegistryStore, resolve_url

if TYPE_CHECKING:
    import torch

    from rankengine.bundle import ModelBundle
    from rankengine.config import EngineConfig
    from rankengine.pluginmanager import Engine

F = TypeVar("F", bound=Callable[..., Any])

#: The registry URL the help texts name (the order is :func:`rankengine.registry.resolve_url`'s).
URL_HELP = "registry URL (default: $RANKENGINE_REGISTRY_URL, else sqlite:///rankengine.db)"


def console() -> Console:
    # Tables stay readable when piped or captured: never narrower than 150 columns there.
    return Console(width=None if sys.stdout.isatty() else 150)


def config_option(f: F) -> F:
    return click.option("-c", "--config", "config_path", default="engine.toml", show_default=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="engine.toml to use")(f)


def device_option(f: F) -> F:
    """``--device``: where the model scores, resolved against this machine."""
    return click.option("--device", default="auto", show_default=True, callback=_device,
                        help="where the model runs: auto (CUDA when available), cpu, cuda, "
                             "cuda:N")(f)


def _device(_: click.Context, param: click.Parameter, value: str) -> torch.device:
    from rankengine.device import DeviceError, resolve_device

    try:
        return resolve_device(value)
    except DeviceError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def finite(_: click.Context, param: click.Parameter, value: float) -> float:
    """A float option's callback: click.FloatRange lets NaN through (every comparison with it
    is false), and an unbounded one lets infinity through."""
    if value != value:
        raise click.BadParameter(f"{value} is not a number", param=param)
    if value in (math.inf, -math.inf):
        raise click.BadParameter(f"{value} is not a finite number", param=param)
    return value


def open_store(url: str | None, config: EngineConfig | None = None, *, create: bool = False,
               check_schema: bool = True) -> RegistryStore:
    """The registry a command uses, closed when the command finishes.

    The URL is :func:`rankengine.registry.resolve_url`'s: ``url`` (the command's
    ``--registry`` / ``--url``), else ``$RANKENGINE_REGISTRY_URL``, else ``[registry] url`` of
    ``config``, else ``sqlite:///rankengine.db``. Only ``train`` and ``db upgrade`` pass
    ``create``: every other command refuses a database that holds no registry, with a one-line
    error naming the URL, and never creates a SQLite file.
    """
    store = RegistryStore(resolve_url(url, config), check_schema=check_schema,
                          create_if_empty=create)
    click.get_current_context().call_on_close(store.close)
    return store


def load_model(model: str, registry: str | None,
               device: torch.device | None = None) -> ModelBundle:
    """An artifact directory, or a registry reference NAME@ALIAS / NAME/VERSION / NAME, its
    model on ``device``."""
    if Path(model).is_dir():
        from rankengine.artifact import load_artifact

        return load_artifact(model, device=device)
    from rankengine.registry.artifacts import load_version

    return load_version(open_store(registry), model, device=device)[1]


def metric_columns(engine: Engine | None = None) -> list[tuple[str, str]]:
    """(key, header) of the per-task table, asked of the registered metrics: each metric's
    label; for metrics where higher is better (ranking quality), also the oracle beside it, on
    the parent-positive rows, and on all rows against counterfactual labels."""
    if engine is None:
        from rankengine.pluginmanager import load_engine

        engine = load_engine()
    columns: list[tuple[str, str]] = []
    for component in engine.components.metrics:
        metric, name = component.factory, component.name
        label = metric.label or name
        columns.append((name, label))
        if metric.direction == "higher":
            columns += [(f"oracle_{name}", "oracle"), (f"{name}_cond", f"{label}|parent"),
                        (f"oracle_{name}_cond", "oracle"),
                        (f"{name}_cond_entire", f"{label}|parent (all rows)"),
                        (f"oracle_{name}_cond_entire", "oracle")]
    return [*columns, ("positives", "positives")]


def print_metrics(metrics: dict[str, dict[str, Any]], title: str,
                  engine: Engine | None = None) -> None:
    """One row per task: the registered metrics, with the oracle beside the model; below the
    table, why the metrics shown as "-" are undefined."""
    present = [(k, h) for k, h in metric_columns(engine)
               if any(k in m for m in metrics.values())]
    view = Table(title=title)
    view.add_column("task")
    for _, header in present:
        view.add_column(header, justify="right")
    for task, values in metrics.items():
        view.add_row(task, *[_fmt(values.get(k), whole=k == "positives") for k, _ in present])
    console().print(view)
    from rankengine.evaluate import undefined_summary

    notes = undefined_summary(metrics)
    if notes:
        click.echo("undefined (-):\n" + "".join(f"  {task}: {why}\n" for task, why in
                                               notes.items()), nl=False)


def print_calibration_shift(before: dict[str, dict[str, Any]],
                            after: dict[str, dict[str, Any]], engine: Engine,
                            where: str) -> None:
    """Each metric with a target (the calibration ratio), the model's own → calibrated."""
    for metric in engine.components.metrics:
        if metric.factory.direction != "target":
            continue
        shifts = [f"{task} {before[task][metric.name]:.3f} → {values[metric.name]:.3f}"
                  for task, values in after.items()
                  if isinstance(values.get(metric.name), float)
                  and isinstance(before.get(task, {}).get(metric.name), float)]
        if shifts:
            click.echo(f"{metric.factory.label} before → after calibration ({where}): "
                       f"{', '.join(shifts)}")


def _fmt(value: float | None, *, whole: bool = False) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.0f}" if whole or abs(value) >= 100 else f"{value:.4f}"
