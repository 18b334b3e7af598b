"""``rankengine train``: train, then register a version (and move an alias behind a gate)."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import click

from rankengine.cli.common import config_option, print_calibration_shift, print_metrics

GATE = re.compile(r"^\s*(\w+)\.(\w+)\s*(>=|<=|==|>|<|\s+within\s+)\s*([\w.+-]+)\s*$")


@click.command()
@config_option
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write a standalone artifact directory instead of registering a version")
@click.option("--overwrite", is_flag=True, help="with -o: replace an existing directory")
@click.option("--registry", default=None,
              help="registry URL (default: $RANKENGINE_REGISTRY_URL, else [registry] url)")
@click.option("--model", "model_name", default=None, help="model name (default: [registry] model)")
@click.option("--promote", default=None, help="alias to point at the new version")
@click.option("--if", "gate", default=None,
              help='promotion gate: "TASK.METRIC OP ALIAS|NUMBER", e.g. "order.auc >= champion", '
                   'or "TASK.METRIC within TOLERANCE" for a metric with a target, e.g. '
                   '"order.calibration within 0.05"')
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
                               f"\"order.auc >= champion\", or TASK.METRIC within TOLERANCE, "
                               f"e.g. \"order.calibration within 0.05\"")
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
    if gate:  # a 'within' gate needs a metric with a target: known before training
        from rankengine.plan import engine_for

        engine = engine_for(config)
        _check_within(gate, engine)
    if "fusion_weights" in tag_map:  # replaces the fusion's weights at every load: check now
        from rankengine.fusion import fusion_with_weights
        from rankengine.plan import build_graph, engine_for

        engine = engine or engine_for(config)
        fusion_with_weights(config, engine, build_graph(config, engine),
                            tag_map["fusion_weights"], where="--tag fusion_weights")
    store = None
    if output is None and main_rank:  # other ranks never touch the registry
        from rankengine.cli.common import open_store
        from rankengine.errors import ConfigError
        from rankengine.registry.errors import RegistryError
        from rankengine.registry.store import check_model_name, check_name

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
        # the one command besides `db upgrade` that creates a registry; refuses an outdated one
        store = open_store(registry, config, create=True)
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
    result = trained.training
    split = "test" if "test" in result.metrics else "valid"
    calibrated = f", {result.calibration['kind']} calibration" if result.calibration else ""
    print_metrics(result.metrics[split],
                  f"{split} metrics (best epoch {result.best_epoch}{calibrated})", trained.engine)
    if result.calibration:
        print_calibration_shift(result.uncalibrated_metrics[split], result.metrics[split],
                                trained.engine, f"fitted on {result.calibration['fitted_on']}")
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
        passed, why = _gate(store, version, promote, gate, split, trained.engine)
        if passed:
            move = store.set_alias(name, promote, version.version, reason=why)
            click.echo(f"{name}@{promote}: {move.from_version} → {move.to_version} ({why})")
        else:
            click.echo(f"{name}@{promote} not moved: {why}")


def _check_within(gate: str, engine: Any) -> None:
    """``TASK.METRIC within TOLERANCE``: the metric has a target and TOLERANCE is a number."""
    match = GATE.match(gate)
    assert match is not None
    _, metric, op, rhs = match.groups()
    if op.strip() != "within":
        return
    known = {c.name: c.factory for c in engine.components.metrics}
    base = metric.removesuffix("_cond")
    if base not in known or known[base].direction != "target":
        with_target = sorted(n for n, m in known.items() if m.direction == "target")
        raise click.UsageError(f"--if {gate!r}: 'within' needs a metric with a target value "
                               f"({', '.join(with_target) or 'none registered'}); "
                               f"'{metric}' has none")
    try:
        tolerance = float(rhs)
    except ValueError:
        tolerance = math.nan
    if not math.isfinite(tolerance) or tolerance < 0:
        raise click.UsageError(f"--if {gate!r}: 'within' needs a tolerance >= 0, found {rhs!r}")


def _gate(store: Any, version: Any, alias: str, gate: str | None,
          split: str, engine: Any) -> tuple[bool, str]:
    """Evaluate ``TASK.METRIC OP ALIAS|NUMBER`` (or ``TASK.METRIC within TOLERANCE``, for a
    metric with a target) on the new version's metrics."""
    import operator

    from rankengine.registry.errors import NotFoundError

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
    if op.strip() == "within":  # checked before training: a target metric, a number
        target = engine.components.metrics.get(metric.removesuffix("_cond")).factory.target
        distance = abs(mine - target)
        verdict = distance <= float(rhs)
        return verdict, (f"gate {task}.{metric} {mine:.4f} within {float(rhs):g} of "
                         f"{target:g}: " + ("passed" if verdict else "failed"))
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
