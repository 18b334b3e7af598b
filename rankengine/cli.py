"""The ``rankengine`` command line."""

from __future__ import annotations

import contextlib
import math
import os
import re
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

from rankengine.errors import RankEngineError, one_line
from rankengine.registry.cli import finite

F = TypeVar("F", bound=Callable[..., Any])


def console() -> Console:
    # Tables stay readable when piped or captured: never narrower than 150 columns there.
    return Console(width=None if sys.stdout.isatty() else 150)


DEBUG_ENV = "RANKENGINE_DEBUG"


class RankEngineGroup(click.Group):
    """Prints errors as one clear line instead of a traceback, and finds plugins' commands.

    Plugin commands are looked up only when a name is not a built-in command (or for the
    command list in ``--help``), so ``--version``, ``simulate``, ``models`` ... never read the
    engine.toml in the working directory.
    """

    _plugin_commands_loaded = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and not self._plugin_commands_loaded:
            try:
                self._load_plugin_commands()
            except RankEngineError as exc:
                raise click.UsageError(f"no such command '{cmd_name}' (plugin commands could "
                                       f"not be loaded: {one_line(str(exc))})") from None
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: click.Context) -> list[str]:
        # --help still lists the built-ins; the plugin command itself reports why
        with contextlib.suppress(RankEngineError):
            self._load_plugin_commands()
        return super().list_commands(ctx)

    def _load_plugin_commands(self) -> None:
        """Let the plugins engine.toml enables (else the built-ins) add subcommands."""
        if self._plugin_commands_loaded:
            return
        self._plugin_commands_loaded = True
        from rankengine.config import load_config
        from rankengine.pluginmanager import load_engine

        path = Path("engine.toml")
        cfg = load_config(path) if path.exists() else None
        engine = load_engine(cfg.engine.plugins if cfg else ["builtin"],
                             cfg.engine.disable if cfg else [])
        engine.call("rankengine_register_commands", cli=self)

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line_usage(exc) from None
        except RankEngineError as exc:
            raise click.ClickException(one_line(str(exc))) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except MemoryError as exc:
            raise click.ClickException(
                f"out of memory: {one_line(str(exc)) or 'an allocation failed'}; the data, "
                f"the model or a size setting is larger than this machine can hold") from exc
        except Exception as exc:
            # Input errors are RankEngineErrors naming the file, key or row; anything else is a
            # bug, still reported as one line unless a developer asks for the traceback.
            if os.environ.get(DEBUG_ENV):
                raise
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {one_line(str(exc))} (a bug in "
                f"rankengine or a plugin; set {DEBUG_ENV}=1 for the traceback)") from exc


def _one_line_usage(exc: click.UsageError) -> click.UsageError:
    """Click prints the usage and a hint over three lines; one line says the same."""
    if exc.ctx is None or isinstance(exc, click.exceptions.NoArgsIsHelpError):
        return exc  # a bare group (`rankengine models`) shows its help, as click does
    plain = click.UsageError(f"{one_line(exc.format_message())} (see "
                             f"'{exc.ctx.command_path} --help')")
    return plain  # exit code 2, as click's


@click.group(cls=RankEngineGroup)
@click.version_option(package_name="rankengine")
def cli() -> None:
    """Multi-task recommender ranking: train, evaluate and score task-graph models."""


def config_option(f: F) -> F:
    return click.option("-c", "--config", "config_path", default="engine.toml", show_default=True,
                        type=click.Path(dir_okay=False, path_type=Path),
                        help="engine.toml to use")(f)


GATE = re.compile(r"^\s*(\w+)\.(\w+)\s*(>=|<=|==|>|<)\s*([\w.+-]+)\s*$")


@cli.command()
@config_option
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write a standalone artifact directory instead of registering a version")
@click.option("--overwrite", is_flag=True, help="with -o: replace an existing directory")
@click.option("--registry", default=None, help="registry URL (default: [registry] url)")
@click.option("--model", "model_name", default=None, help="model name (default: [registry] model)")
@click.option("--promote", default=None, help="alias to point at the new version")
@click.option("--if", "gate", default=None,
              help='promotion gate: "TASK.METRIC OP ALIAS|NUMBER", e.g. "order.auc >= champion"')
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE tag on the version (repeatable)")
@click.option("--parent", type=click.IntRange(min=1), default=None,
              help="version this one was fine-tuned from")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="override [train] epochs")
@click.option("--resume", is_flag=True,
              help="continue from the newest intact checkpoint in [train] checkpoint_dir")
@click.option("--quiet", is_flag=True, help="no progress bar or progress messages")
def train(config_path: Path, output: Path | None, overwrite: bool, registry: str | None,
          model_name: str | None, promote: str | None, gate: str | None, tags: tuple[str, ...],
          parent: int | None, epochs: int | None, resume: bool, quiet: bool) -> None:
    """Train the model described by engine.toml and register it (or write it with -o).

    Runs unchanged under ``torchrun --nproc-per-node N``: every rank trains on its share of the
    data, rank 0 alone evaluates, registers and prints.
    """
    import os

    from rankengine.artifact import save_artifact
    from rankengine.config import load_config
    from rankengine.distributed import shutdown
    from rankengine.train import train as run_training

    main_rank = os.environ.get("RANK", "0") == "0"

    config = load_config(config_path)
    if epochs is not None:
        config.train.epochs = epochs
    if gate and not promote:
        raise click.UsageError("--if needs --promote ALIAS")
    if gate and not GATE.match(gate):
        raise click.UsageError(f"--if {gate!r}: expected TASK.METRIC OP ALIAS|NUMBER, e.g. "
                               f"\"order.auc >= champion\"")
    tag_map: dict[str, str] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"--tag {t!r}: expected KEY=VALUE with a non-empty KEY")
        if key in tag_map:  # the first value would be dropped silently
            raise click.UsageError(f"--tag {t!r}: KEY '{key}' is given twice")
        tag_map[key] = value
    # An empty value would silently fall back to the config's model, alias or registry.
    for option, given in (("--model", model_name), ("--promote", promote),
                          ("--registry", registry)):
        if given is not None and not given.strip():
            raise click.BadParameter("empty; give a value or leave the option out",
                                     param_hint=option)
    engine = None
    if "fusion_weights" in tag_map:  # replaces the fusion's weights at every load: check now
        from rankengine.train import build_graph, engine_for
        from rankengine.tune import fusion_with_weights

        engine = engine_for(config)
        fusion_with_weights(config, engine, build_graph(config, engine),
                            tag_map["fusion_weights"], where="--tag fusion_weights")
    store = None
    if output is None and main_rank:  # other ranks never touch the registry
        from rankengine.errors import ConfigError
        from rankengine.registry.cli import open_store
        from rankengine.registry.store import RegistryError, check_model_name, check_name

        try:  # a bad name fails before training, naming where it came from
            check_model_name(model_name or config.registry.model)
        except RegistryError as exc:
            if model_name:
                raise click.BadParameter(str(exc), param_hint="--model") from None
            raise ConfigError(str(exc), source=config.source, key="registry.model") from None
        if promote:
            try:
                check_name(promote, "alias")
            except RegistryError as exc:
                raise click.BadParameter(str(exc), param_hint="--promote") from None
        store = open_store(config.registry_url(registry))  # refuses an outdated schema now
        if parent is not None:  # an unknown parent fails before training, not after
            try:
                store.get_version(model_name or config.registry.model, parent)
            except RegistryError as exc:
                raise click.BadParameter(str(exc), param_hint="--parent") from None
    elif output is not None and output.exists() and not overwrite:
        raise click.ClickException(f"{output} already exists; pass --overwrite to replace it")
    try:
        trained = run_training(config, engine=engine, progress=not quiet and sys.stderr.isatty(),
                               log=(lambda m: None) if quiet else
                               (lambda m: click.echo(m, err=True)), resume=resume)
    finally:
        shutdown()
    if not main_rank:
        return
    result = trained.result
    split = "test" if "test" in result.metrics else "valid"
    print_metrics(result.metrics[split], f"{split} metrics (best epoch {result.best_epoch})")
    for name, report in result.label_reports.items():
        if report["inconsistent"]:
            click.echo(f"{name}: inconsistent labels {report['inconsistent']} → policy "
                       f"{report['policy']}, rows dropped {report['rows_dropped']}", err=True)
    click.echo(f"trained {result.epochs_run} epoch(s) in {result.train_seconds:.1f}s "
               f"({result.samples_per_second:,.0f} samples/s)")
    if store is None:
        assert output is not None
        click.echo(f"artifact: {save_artifact(trained, output, overwrite=overwrite)}")
        return
    from rankengine.registry.artifacts import register

    name = model_name or config.registry.model
    version = register(store, config.resolve_path(config.registry.artifacts), trained, name,
                       tags=tag_map, parent_version=parent)
    click.echo(f"registered {version.ref} (ready) in {store.url}")
    if promote:
        passed, why = _gate(store, version, promote, gate, split)
        if passed:
            move = store.set_alias(name, promote, version.version, reason=why)
            click.echo(f"{name}@{promote}: {move.from_version} → {move.to_version} ({why})")
        else:
            click.echo(f"{name}@{promote} not moved: {why}")


def _gate(store: Any, version: Any, alias: str, gate: str | None,
          split: str) -> tuple[bool, str]:
    """Evaluate ``TASK.METRIC OP ALIAS|NUMBER`` on the new version's metrics."""
    import operator

    from rankengine.registry.store import NotFoundError

    if not gate:
        return True, "promoted without a gate"
    match = GATE.match(gate)
    assert match is not None
    task, metric, op, rhs = match.groups()
    ops = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt,
           "<": operator.lt}

    def value(v: Any) -> tuple[float | None, str]:
        """The metric's value, or None and why it has none (an undefined metric)."""
        try:
            values = v.metrics["splits"][split][task]
            found = values[metric]
        except (KeyError, TypeError):
            raise click.ClickException(
                f"--if {gate!r}: {v.ref} has no {split} metric {task}.{metric}") from None
        if isinstance(found, int | float) and not isinstance(found, bool) \
                and math.isfinite(found):
            return float(found), ""
        reasons = values.get("undefined") if isinstance(values, dict) else None
        why = reasons.get(metric) if isinstance(reasons, dict) else None
        return None, str(why or "not a number")

    def undefined(v: Any, why: str) -> tuple[bool, str]:
        return False, (f"gate {gate}: {v.ref} {task}.{metric} is undefined on the {split} "
                       f"split ({why}): failed")

    mine, why = value(version)
    if mine is None:
        return undefined(version, why)
    try:
        other = float(rhs)
        label = rhs
    except ValueError:
        try:
            other_version = store.resolve(f"{version.model}@{rhs}")
        except NotFoundError:
            return True, f"gate {gate}: no {rhs} yet, {task}.{metric} = {mine:.4f}"
        theirs, why = value(other_version)
        if theirs is None:
            return undefined(other_version, why)
        other, label = theirs, f"{other_version.ref}"
    verdict = ops[op](mine, other)
    return verdict, f"gate {task}.{metric} {mine:.4f} {op} {other:.4f} ({label}): " + \
        ("passed" if verdict else "failed")


def load_model(model: str, registry: str | None) -> Any:
    """An artifact directory, or a registry reference NAME@ALIAS / NAME/VERSION / NAME."""

    if Path(model).is_dir():
        from rankengine.artifact import load_artifact

        return load_artifact(model)
    from rankengine.registry.artifacts import load_version
    from rankengine.registry.cli import open_store

    return load_version(open_store(registry, create_if_empty=False), model)[1]


@cli.command()
@click.argument("model")
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="CSV / Parquet file or directory with the label columns")
@click.option("--json", "as_json", is_flag=True, help="print metrics as JSON")
def evaluate(model: str, registry: str | None, data_path: Path, as_json: bool) -> None:
    """Per-task metrics of MODEL (a directory or NAME@ALIAS / NAME/VERSION) on labelled data."""
    from rankengine.artifact import to_json
    from rankengine.data.batching import TensorData
    from rankengine.data.dataset import encode_table, label_columns, oracle_columns
    from rankengine.data.io import read_table
    from rankengine.evaluate import (
        entire_outputs,
        node_metrics,
        predict_arrays,
        require_finite,
        select_metrics,
    )

    loaded = load_model(model, registry)
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
    require_finite(entire_outputs(entire, graph.names), lambda row: f"{data_path}: row {row}")
    metrics = node_metrics(graph, data, entire, conditional,
                           select_metrics(loaded.engine.components.metrics, cfg.evaluate.metrics))
    if as_json:
        click.echo(to_json(metrics))
    else:
        print_metrics(metrics, f"metrics on {data_path} ({len(data):,} rows)")


@cli.command()
@click.argument("model")
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="scores file (.csv or .parquet)")
@click.option("--keep", default="", help="comma-separated input columns to copy to the output")
def predict(model: str, registry: str | None, data_path: Path, output: Path, keep: str) -> None:
    """Batch-score a file with MODEL: per-task probabilities and the fused score."""
    from rankengine.data.io import read_table
    from rankengine.predict import score_table, write_table

    loaded = load_model(model, registry)
    kept = list(dict.fromkeys(c.strip() for c in keep.split(",") if c.strip()))
    outputs = {"score", *(f"{p}_{n}" for n in loaded.graph.names for p in ("p", "pc"))}
    clash = [c for c in kept if c in outputs]
    if clash:  # the score would silently replace the copied column
        raise click.BadParameter(f"'{clash[0]}' is also an output column; rename it in the "
                                 f"data or drop it from --keep", param_hint="--keep")
    table = read_table(data_path, [*loaded.pipeline.source_columns, *kept],
                       format=loaded.config.data.format, csv=loaded.config.data.csv)
    scores = score_table(loaded, table, where=str(data_path))
    out = pa.table({**{c: table.column(c) for c in kept}, **scores})
    write_table(out, output)
    click.echo(f"wrote {out.num_rows:,} rows to {output}")


@cli.command()
@click.argument("model")
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path))
@click.option("--request", "request_id", default=None,
              help="value of the [data] group column to rank (default: the first request "
                   "with a logged click, i.e. a positive first task)")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True)
def rank(model: str, registry: str | None, data_path: Path, request_id: str | None,
         top_k: int) -> None:
    """Rank the candidates of one request with MODEL by the fused score and print them."""
    from rankengine.data.io import read_table
    from rankengine.errors import DataError
    from rankengine.predict import score_table

    loaded = load_model(model, registry)
    group = loaded.config.data.group
    if not group:
        raise click.ClickException("the model's config has no [data] group column to rank by")
    table = read_table(data_path, format=loaded.config.data.format, csv=loaded.config.data.csv)
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


@cli.command()
@click.argument("ref")
@click.option("--registry", default=None, help="registry URL (default: $RANKENGINE_REGISTRY_URL "
                                                "or sqlite:///rankengine.db)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind; one that is not loopback needs an admin token")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 256),
              help="server processes")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 256),
              help="inference threads per process (the cores are split into torch threads "
                   "over workers x threads)")
@click.option("--poll-interval", default=30.0, show_default=True,
              type=click.FloatRange(0.1, 86400.0), callback=finite,
              help="seconds between registry checks for a moved alias")
@click.option("--max-candidates", default=2000, show_default=True,
              type=click.IntRange(1, 1_000_000), help="rows per request; more is a 400")
@click.option("--max-body-bytes", default=8 << 20, show_default=True,
              type=click.IntRange(1, 1 << 30),
              help="request body size; larger is a 413, refused by its Content-Length or "
                   "as soon as a streamed body passes it")
@click.option("--max-fusion-weight", default=100.0, show_default=True,
              type=click.FloatRange(0.0, 1e6, min_open=True), callback=finite,
              help="upper bound of per-request fusion_weights")
@click.option("--admin-token", envvar="RANKENGINE_ADMIN_TOKEN", default=None,
              show_envvar=True,
              help="required as 'Authorization: Bearer TOKEN' by POST "
                   "/v2/repository/models/NAME/load; needed when --host is not loopback "
                   "(prefer the environment variable: arguments show in ps)")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime"]), default="torch",
              show_default=True, help="what runs the forward pass; onnxruntime exports the "
              "model at load time (needs rankengine[export])")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="one log line per request (uvicorn's access log)")
def serve(ref: str, registry: str | None, host: str, port: int, workers: int, threads: int,
          poll_interval: float, max_candidates: int, max_body_bytes: int,
          max_fusion_weight: float, admin_token: str | None, backend: str,
          access_log: bool) -> None:
    """Serve NAME[@ALIAS|/VERSION] over HTTP (Open Inference Protocol v2 + /v1/rank)."""
    import json as json_lib
    import os

    import uvicorn

    from rankengine.registry.store import RegistryStore, resolve_url
    from rankengine.serve import ENV
    from rankengine.serve.access import ADMIN_TOKEN_ENV, is_loopback
    from rankengine.serve.http import NoDelayHTTPProtocol
    from rankengine.serve.process import usable_cores

    admin_token = admin_token or None  # an empty variable is no token
    exposed = not is_loopback(host)
    if exposed and admin_token is None:
        raise click.UsageError(f"--host {host} is not a loopback address: give an admin token "
                               f"(--admin-token or {ADMIN_TOKEN_ENV}) to guard POST "
                               f"/v2/repository/models/NAME/load")
    url = resolve_url(registry)
    RegistryStore(url, create_if_empty=False).resolve(ref)  # fail fast: schema, name, alias
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RankEngineError("--backend onnxruntime needs onnxruntime: "
                                  "pip install 'rankengine[export]'") from None
    # Every server process applies this budget itself (rankengine.serve.app_from_env).
    per_thread = max(1, usable_cores() // (threads * workers))  # no oversubscribed cores
    os.environ[ENV] = json_lib.dumps({
        "registry": url, "ref": ref, "backend": backend, "torch_threads": per_thread,
        "settings": {"threads": threads, "poll_interval": poll_interval,
                     "max_candidates": max_candidates, "max_body_bytes": max_body_bytes,
                     "max_fusion_weight": max_fusion_weight, "admin_token": admin_token},
    })
    click.echo(f"serving {ref} from {url} on http://{host}:{port} ({workers} worker(s), "
               f"{threads} inference thread(s) each with {per_thread} torch thread(s), "
               f"{backend})", err=True)
    if exposed:
        click.echo(f"WARNING: {host} is reachable from other machines and only the admin "
                   f"endpoint checks a token: /v1/rank, /v2 (inference, metadata, health) and "
                   f"/metrics are unauthenticated; put an authenticating proxy in front if "
                   f"that matters", err=True)
    uvicorn.run("rankengine.serve:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info", access_log=access_log,
                http=NoDelayHTTPProtocol, timeout_graceful_shutdown=10)


@cli.command()
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
def export(model: str, fmt: str, output: Path, registry: str | None) -> None:
    """Export MODEL to ONNX or TorchScript (encoded inputs in, predictions + score out)."""
    from rankengine.export import export as run_export
    from rankengine.export import external_data, input_names

    suffixes = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript")}
    other = next(f for f in suffixes if f != fmt)
    if output.suffix.lower() in suffixes[other]:  # a runtime would try to load the wrong kind
        raise click.BadParameter(f"{output} names a {other} file but --format is {fmt}",
                                 param_hint="-o")
    if fmt == "onnx":  # needed to check the file: fail before writing it
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RankEngineError("--format onnx needs onnx and onnxruntime: pip install "
                                  "'rankengine[export]'") from None
    loaded = load_model(model, registry)
    path = run_export(loaded, output, fmt)
    try:
        diff = _check_export(loaded, path, fmt)
    except BaseException:  # an unchecked file is not left behind as if it were good
        path.unlink(missing_ok=True)
        external_data(path).unlink(missing_ok=True)
        raise
    weights = external_data(path)
    beside = f"; keep {weights.name} beside it: the weights" if weights.exists() else ""
    click.echo(f"wrote {path} (inputs: {', '.join(input_names(loaded))}; outputs: "
               f"{', '.join(loaded.graph.names)}, score; max |diff| {diff:.1e}{beside})")


def _check_export(loaded: Any, path: Path, fmt: str) -> float:
    """The largest difference between the exported model's outputs and rankengine's."""
    import numpy as np
    import torch

    from rankengine.export import example_inputs, input_names, reference_outputs

    inputs = example_inputs(loaded, 16)
    generator = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randint(0, 2, t.shape, generator=generator) if t.dtype == torch.long
                   else torch.randn(t.shape, generator=generator) for t in inputs)
    want = reference_outputs(loaded, inputs)
    if fmt == "torchscript":
        import warnings

        with warnings.catch_warnings():  # torch.jit.load's deprecation notice; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            got = torch.jit.load(str(path))(*inputs).detach().numpy()  # type: ignore[no-untyped-call]
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path))
        got = session.run(None, {n: t.numpy() for n, t in zip(input_names(loaded), inputs,
                                                               strict=True)})[0]
    diff = float(np.abs(got - want).max())
    if not diff <= 1e-5:  # NaN fails too
        raise click.ClickException(f"exported {fmt} differs from rankengine by {diff:.2e}")
    return diff


@cli.command()
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data/funnel"), show_default=True)
@click.option("--requests", type=click.IntRange(min=1), default=50_000, show_default=True,
              help="requests to simulate (each shows --slate-size items)")
@click.option("--slate-size", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--correlation", type=float, default=0.5, show_default=True,
              help="correlation of click and conversion factors")
@click.option("--inconsistent-rate", type=float, default=0.0, show_default=True)
@click.option("--position-bias", type=float, default=0.6, show_default=True,
              help="click logit -= position_bias * log(position)")
@click.option("--logger-bias", type=float, default=0.0, show_default=True,
              help="> 0: a logging ranker shows promoted brands first (confounds position)")
@click.option("--shards", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="files per split (a directory of part-NNNNN.parquet when > 1)")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=7, show_default=True)
def simulate(output: Path, requests: int, slate_size: int, correlation: float,
             inconsistent_rate: float, position_bias: float, logger_bias: float, shards: int,
             seed: int) -> None:
    """Write a simulated impression log (click → favorite / order → pay, dwell time)."""
    from rankengine.simulate import SimulationConfig, write_funnel

    try:
        config = SimulationConfig(requests=requests, slate_size=slate_size,
                                  conversion_correlation=correlation,
                                  inconsistent_rate=inconsistent_rate,
                                  position_bias=position_bias, logger_bias=logger_bias,
                                  seed=seed)
        paths = write_funnel(output, config, shards=shards)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a full disk or a file that cannot be replaced, mid-way
        raise click.ClickException(f"{exc.filename or output}: cannot write the funnel: "
                                   f"{exc.strerror or exc}") from exc
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

    explicit = click.get_current_context().get_parameter_source("config_path") \
        is not click.core.ParameterSource.DEFAULT
    if explicit and not config_path.exists():  # else another config's plugins are listed
        from rankengine.errors import ConfigError

        raise ConfigError(f"configuration file not found: {config_path}",
                          source=str(config_path))
    if show_all or not config_path.exists():
        enabled, disabled = list(discover_plugins()), []
    else:
        cfg = load_config(config_path)
        enabled, disabled = cfg.engine.plugins, cfg.engine.disable
    engine = load_engine(enabled, disabled)
    view = Table(title="rankengine plugins")
    for col in ("name", "version", "origin", "hooks", "components"):
        view.add_column(col)
    tables = engine.components.tables()
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


def print_metrics(metrics: dict[str, dict[str, Any]], title: str) -> None:
    """One row per task: the headline metrics, with the oracle beside the model; below the
    table, why the metrics shown as "-" are undefined."""
    present = [(k, h) for k, h in METRIC_COLUMNS if any(k in m for m in metrics.values())]
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


def _fmt(value: float | None, *, whole: bool = False) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.0f}" if whole or abs(value) >= 100 else f"{value:.4f}"


def _add_command_groups() -> None:
    """Built-in commands that live next to the code they drive (imported lazily inside)."""
    from rankengine.registry.cli import db, models
    from rankengine.report.cli import report
    from rankengine.scaffold import plugin
    from rankengine.tune import tune_fusion

    for command in (db, models, report, tune_fusion, plugin):
        cli.add_command(command)


_add_command_groups()


def main() -> None:
    cli(prog_name="rankengine")


if __name__ == "__main__":
    main()

