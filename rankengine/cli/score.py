"""``rankengine evaluate``, ``predict`` and ``rank``: score labelled or unlabelled data with a
model directory or a registry reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import pyarrow as pa
import pyarrow.compute as pc
from rich.markup import escape
from rich.table import Table

from rankengine.cli.common import (
    console,
    device_option,
    load_model,
    print_calibration_shift,
    print_metrics,
)

if TYPE_CHECKING:
    import torch


@click.command()
@click.argument("model")
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="CSV / Parquet file or directory with the label columns")
@click.option("--json", "as_json", is_flag=True, help="print metrics as JSON")
@device_option
def evaluate(model: str, registry: str | None, data_path: Path, as_json: bool,
             device: torch.device) -> None:
    """Per-task metrics of MODEL (a directory or NAME@ALIAS / NAME/VERSION) on labelled data."""
    from rankengine.artifact import to_json
    from rankengine.data.batching import TensorData
    from rankengine.data.dataset import encode_table, label_columns, oracle_columns
    from rankengine.data.io import read_table
    from rankengine.evaluate import node_metrics, select_metrics
    from rankengine.scoring import PredictionModule, named_outputs

    loaded = load_model(model, registry, device)
    cfg, graph = loaded.config, loaded.graph
    extras = oracle_columns(graph)
    columns = [*loaded.pipeline.source_columns, *label_columns(graph), *extras]
    if cfg.data.group:
        columns.append(cfg.data.group)
    table = read_table(data_path, list(dict.fromkeys(columns)), format=cfg.data.format,
                       csv=cfg.data.csv, sources=loaded.engine.components.sources)
    data = encode_table(table, loaded.pipeline, graph, policy=cfg.data.inconsistent,
                        group=cfg.data.group, extras=extras, where=str(data_path))
    entire, conditional = PredictionModule(loaded.model).predict_all(
        TensorData(data), cfg.train.eval_batch_size)
    named_outputs(graph, loaded.fusion, entire, conditional,  # no silent NaN metric
                  label=lambda row: f"{data_path}: row {row}")
    chosen = select_metrics(loaded.engine.components.metrics, cfg.evaluate.metrics)
    metrics = node_metrics(graph, data, entire, conditional, chosen)
    if as_json:
        click.echo(to_json(metrics))
        return
    print_metrics(metrics, f"metrics on {data_path} ({len(data):,} rows)", loaded.engine)
    if loaded.model.calibration.active:  # the model's own predictions, for comparison
        raw = PredictionModule(loaded.model, calibrated=False).predict_all(
            TensorData(data), cfg.train.eval_batch_size)
        print_calibration_shift(node_metrics(graph, data, *raw, chosen), metrics,
                                loaded.engine, "the model's calibrator")


@click.command()
@click.argument("model")
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="scores file (.csv or .parquet)")
@click.option("--keep", default="", help="comma-separated input columns to copy to the output")
@device_option
def predict(model: str, registry: str | None, data_path: Path, output: Path, keep: str,
            device: torch.device) -> None:
    """Batch-score a file with MODEL: per-task probabilities and the fused score."""
    from rankengine.data.io import read_table
    from rankengine.predict import score_table, write_table

    loaded = load_model(model, registry, device)
    kept = list(dict.fromkeys(c.strip() for c in keep.split(",") if c.strip()))
    outputs = {"score", *(f"{p}_{n}" for n in loaded.graph.names for p in ("p", "pc"))}
    clash = [c for c in kept if c in outputs]
    if clash:  # the score would silently replace the copied column
        raise click.BadParameter(f"'{clash[0]}' is also an output column; rename it in the "
                                 f"data or drop it from --keep", param_hint="--keep")
    table = read_table(data_path, [*loaded.pipeline.source_columns, *kept],
                       format=loaded.config.data.format, csv=loaded.config.data.csv,
                       sources=loaded.engine.components.sources)
    scores = score_table(loaded, table, where=str(data_path))
    out = pa.table({**{c: table.column(c) for c in kept}, **scores})
    write_table(out, output)
    click.echo(f"wrote {out.num_rows:,} rows to {output}")


@click.command()
@click.argument("model")
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path))
@click.option("--request", "request_id", default=None,
              help="value of the [data] group column to rank (default: the first request "
                   "with a logged click, i.e. a positive first task)")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True)
@device_option
def rank(model: str, registry: str | None, data_path: Path, request_id: str | None,
         top_k: int, device: torch.device) -> None:
    """Rank the candidates of one request with MODEL by the fused score and print them."""
    from rankengine.data.io import read_table
    from rankengine.errors import DataError
    from rankengine.predict import score_table

    loaded = load_model(model, registry, device)
    group = loaded.config.data.group
    if not group:
        raise click.ClickException("the model's config has no [data] group column to rank by")
    table = read_table(data_path, format=loaded.config.data.format, csv=loaded.config.data.csv,
                       sources=loaded.engine.components.sources)
    if group not in table.column_names:
        raise DataError(f"{data_path}: no column '{group}' (the model's [data] group) to pick "
                        f"a request by")
    if table.num_rows == 0:
        raise DataError(f"{data_path}: no rows to rank")
    ids = table.column(group)
    if request_id is None:
        first_label = loaded.graph.nodes[0].spec.label_columns[0]
        engaged = pc.indices_nonzero(pc.equal(table.column(first_label), 1)) \
            if first_label in table.column_names else pa.array([], pa.uint64())
        wanted = ids[engaged[0].as_py() if len(engaged) else 0]
    else:
        try:
            wanted = pa.scalar(request_id).cast(ids.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise click.BadParameter(f"{request_id!r} is not a value of {data_path} column "
                                     f"'{group}' ({ids.type})", param_hint="--request") from None
    if not wanted.is_valid:  # a null id matches no row, not even itself
        raise DataError(f"{data_path}: the {group} picked to rank is empty (null); pass "
                        f"--request ID")
    request = table.filter(pc.equal(ids, wanted))
    if request.num_rows == 0:
        raise DataError(f"{data_path}: no rows with {group} = {wanted.as_py()}")
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
