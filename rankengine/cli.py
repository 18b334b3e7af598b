"""The ``rankengine`` command line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rankengine.errors import RankEngineError

F = TypeVar("F", bound=Callable[..., Any])


def console() -> Console:
    # Tables stay readable when piped or captured: never narrower than 150 columns there.
    return Console(width=None if sys.stdout.isatty() else 150)


class RankEngineGroup(click.Group):
    """Prints rankengine's own errors as one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RankEngineError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=RankEngineGroup)
@click.version_option(package_name="rankengine")
def cli() -> None:
    """Multi-task recommender ranking: train, evaluate and score task-graph models."""


def config_option(f: F) -> F:
    return click.option("-c", "--config", "config_path", default="engine.toml", show_default=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="engine.toml to use")(f)


@cli.command()
@config_option
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/latest"), show_default=True, help="artifact directory to write")
@click.option("--overwrite", is_flag=True, help="replace an existing artifact directory")
@click.option("--epochs", type=int, default=None, help="override [train] epochs")
@click.option("--quiet", is_flag=True, help="no progress bar")
def train(config_path: Path, output: Path, overwrite: bool, epochs: int | None,
          quiet: bool) -> None:
    """Train the model described by engine.toml and write a self-contained artifact."""
    from rankengine.artifact import save_artifact
    from rankengine.config import load_config
    from rankengine.train import train as run_training

    config = load_config(config_path)
    if epochs is not None:
        config.train.epochs = epochs
    if output.exists() and not overwrite:
        raise click.ClickException(f"{output} already exists; pass --overwrite to replace it")
    trained = run_training(config, progress=not quiet and sys.stderr.isatty(),
                           log=lambda m: click.echo(m, err=True))
    path = save_artifact(trained, output, overwrite=overwrite)
    result = trained.result
    split = "test" if "test" in result.metrics else "valid"
    print_metrics(result.metrics[split], f"{split} metrics (best epoch {result.best_epoch})")
    for name, report in result.label_reports.items():
        if report["inconsistent"]:
            click.echo(f"{name}: inconsistent labels {report['inconsistent']} → policy "
                       f"{report['policy']}, rows dropped {report['rows_dropped']}", err=True)
    click.echo(f"trained {result.epochs_run} epoch(s) in {result.train_seconds:.1f}s "
               f"({result.samples_per_second:,.0f} samples/s); artifact: {path}")


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="CSV / Parquet file or directory with the label columns")
@click.option("--json", "as_json", is_flag=True, help="print metrics as JSON")
def evaluate(artifact: Path, data_path: Path, as_json: bool) -> None:
    """Per-task metrics of a trained artifact on labelled data."""
    from rankengine.artifact import load_artifact, to_json
    from rankengine.data.batching import TensorData
    from rankengine.data.dataset import encode_table, label_columns, oracle_columns
    from rankengine.data.io import read_table
    from rankengine.evaluate import node_metrics, predict_arrays, select_metrics

    loaded = load_artifact(artifact)
    cfg, graph = loaded.config, loaded.graph
    extras = oracle_columns(graph)
    columns = [*loaded.pipeline.source_columns, *label_columns(graph), *extras]
    if cfg.data.group:
        columns.append(cfg.data.group)
    table = read_table(data_path, list(dict.fromkeys(columns)), format=cfg.data.format,
                       csv=cfg.data.csv)
    data = encode_table(table, loaded.pipeline, graph, policy=cfg.data.inconsistent,
                        group=cfg.data.group, extras=extras, where=str(data_path))
    entire, conditional = predict_arrays(loaded.model, TensorData(data), cfg.train.eval_batch_size)
    metrics = node_metrics(graph, data, entire, conditional,
                           select_metrics(loaded.engine.components.metrics, cfg.evaluate.metrics))
    if as_json:
        click.echo(to_json(metrics))
    else:
        print_metrics(metrics, f"metrics on {data_path} ({len(data):,} rows)")


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="scores file (.csv or .parquet)")
@click.option("--keep", default="", help="comma-separated input columns to copy to the output")
def predict(artifact: Path, data_path: Path, output: Path, keep: str) -> None:
    """Batch-score a file: per-task probabilities and the fused score."""
    from rankengine.artifact import load_artifact
    from rankengine.data.io import read_table
    from rankengine.predict import score_table, write_table

    loaded = load_artifact(artifact)
    kept = [c.strip() for c in keep.split(",") if c.strip()]
    table = read_table(data_path, [*loaded.pipeline.source_columns, *kept],
                       format=loaded.config.data.format, csv=loaded.config.data.csv)
    scores = score_table(loaded, table, where=str(data_path))
    out = pa.table({**{c: table.column(c) for c in kept}, **scores})
    write_table(out, output)
    click.echo(f"wrote {out.num_rows:,} rows to {output}")


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path))
@click.option("--request", "request_id", default=None,
              help="value of the [data] group column to rank (default: the first request "
                   "with a logged click, i.e. a positive first task)")
@click.option("--top-k", type=int, default=10, show_default=True)
def rank(artifact: Path, data_path: Path, request_id: str | None, top_k: int) -> None:
    """Rank the candidates of one request by the fused score and print them."""
    from rankengine.artifact import load_artifact
    from rankengine.data.io import read_table
    from rankengine.predict import score_table

    loaded = load_artifact(artifact)
    group = loaded.config.data.group
    if not group:
        raise click.ClickException("the model's config has no [data] group column to rank by")
    table = read_table(data_path, format=loaded.config.data.format, csv=loaded.config.data.csv)
    ids = table.column(group)
    if request_id is None:
        first_label = loaded.graph.nodes[0].spec.label_columns[0]
        engaged = pc.indices_nonzero(pc.equal(table.column(first_label), 1)) \
            if first_label in table.column_names else pa.array([], pa.uint64())
        wanted = ids[engaged[0].as_py() if len(engaged) else 0]
    else:
        wanted = pa.scalar(request_id).cast(ids.type)
    request = table.filter(pc.equal(ids, wanted))
    if request.num_rows == 0:
        raise click.ClickException(f"no rows with {group} = {request_id}")
    scores = score_table(loaded, request, where=str(data_path))
    order = (-scores["score"]).argsort()[:top_k]
    labels = [n.spec.label_columns[0] for n in loaded.graph.nodes]
    view = Table(title=f"{group} {wanted.as_py()}: {request.num_rows} candidates ranked by "
                       f"{loaded.config.fusion.kind}")
    view.add_column("rank", justify="right")
    shown = [c for c in ("item_id", "position") if c in request.column_names]
    for col in shown:
        view.add_column(col, justify="right")
    view.add_column("score", justify="right")
    for node in loaded.graph.nodes:
        header = f"p({node.name})" if node.type == "binary" else escape(f"E[{node.name}]")
        view.add_column(header, justify="right")
    view.add_column("logged " + "/".join(loaded.graph.names))
    for r, i in enumerate(order, 1):
        logged = "/".join(f"{request.column(c)[int(i)].as_py():.4g}" for c in labels
                          if c in request.column_names)
        view.add_row(str(r), *[str(request.column(c)[int(i)].as_py()) for c in shown],
                     f"{scores['score'][i]:.4g}",
                     *[f"{scores['p_' + n][i]:.4g}" for n in loaded.graph.names], logged)
    console().print(view)


@cli.command()
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data/funnel"), show_default=True)
@click.option("--requests", type=int, default=50_000, show_default=True,
              help="requests to simulate (each shows --slate-size items)")
@click.option("--slate-size", type=int, default=10, show_default=True)
@click.option("--correlation", type=float, default=0.5, show_default=True,
              help="correlation of click and conversion factors")
@click.option("--inconsistent-rate", type=float, default=0.0, show_default=True)
@click.option("--shards", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
def simulate(output: Path, requests: int, slate_size: int, correlation: float,
             inconsistent_rate: float, shards: int, seed: int) -> None:
    """Write a simulated impression log (click → favorite / order → pay, dwell time)."""
    from rankengine.simulate import SimulationConfig, write_funnel

    try:
        config = SimulationConfig(requests=requests, slate_size=slate_size,
                                  conversion_correlation=correlation,
                                  inconsistent_rate=inconsistent_rate, seed=seed)
        paths = write_funnel(output, config, shards=shards)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for split, path in paths.items():
        click.echo(f"{split}: {path}")


@cli.command()
@config_option
@click.option("--all", "show_all", is_flag=True,
              help="list every installed plugin, not only those engine.toml enables")
def plugins(config_path: Path, show_all: bool) -> None:
    """List plugins: name, version, origin and the hooks they implement."""
    from rankengine.config import load_config
    from rankengine.pluginmanager import discover_plugins, load_engine

    if show_all or not config_path.exists():
        enabled, disabled = list(discover_plugins()), []
    else:
        cfg = load_config(config_path)
        enabled, disabled = cfg.engine.plugins, cfg.engine.disable
    engine = load_engine(enabled, disabled)
    view = Table(title="rankengine plugins")
    for col in ("name", "version", "origin", "hooks", "components"):
        view.add_column(col)
    tables = [getattr(engine.components, f) for f in engine.components.__dataclass_fields__]
    for name, plugin in sorted(engine.plugins.items()):
        comps = [f"{t.singular}:{c.name}" for t in tables for c in t if c.plugin == name]
        view.add_row(name, plugin.info.version, plugin.info.origin,
                     "\n".join(plugin.hooks), ", ".join(comps))
    console().print(view)


METRIC_COLUMNS = [
    ("auc", "AUC"), ("oracle_auc", "oracle"), ("auc_cond", "AUC|parent"),
    ("oracle_auc_cond", "oracle"), ("auc_cond_entire", "AUC|parent (all rows)"),
    ("oracle_auc_cond_entire", "oracle"), ("gauc", "GAUC"), ("logloss", "logloss"),
    ("calibration", "calib"), ("rmse", "RMSE"), ("positives", "positives"),
]


def print_metrics(metrics: dict[str, dict[str, float]], title: str) -> None:
    """One row per task: the headline metrics, with the oracle beside the model."""
    present = [(k, h) for k, h in METRIC_COLUMNS if any(k in m for m in metrics.values())]
    view = Table(title=title)
    view.add_column("task")
    for _, header in present:
        view.add_column(header, justify="right")
    for task, values in metrics.items():
        view.add_row(task, *[_fmt(values.get(k), whole=k == "positives") for k, _ in present])
    console().print(view)


def _fmt(value: float | None, *, whole: bool = False) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.0f}" if whole or abs(value) >= 100 else f"{value:.4f}"


def _load_extra_commands() -> None:
    """Let enabled plugins add subcommands (rankengine_register_commands)."""
    from rankengine.config import load_config
    from rankengine.pluginmanager import load_engine

    path = Path("engine.toml")
    try:
        cfg = load_config(path) if path.exists() else None
        engine = load_engine(cfg.engine.plugins if cfg else ["builtin"],
                             cfg.engine.disable if cfg else [])
    except RankEngineError:
        return  # the failing command will report the problem itself
    engine.call("rankengine_register_commands", cli=cli)


def main() -> None:
    _load_extra_commands()
    cli(prog_name="rankengine")


if __name__ == "__main__":
    main()

