"""``rankengine db ...`` and ``rankengine models ...``: the registry from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from rankengine.cli.common import URL_HELP, console, finite, open_store
from rankengine.config import flat_keys
from rankengine.registry import migrations
from rankengine.registry.store import AliasMove, ModelVersion

url_option = click.option("--url", "--registry", "url", default=None, help=URL_HELP)
json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


def _print(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _console_print(view: Table) -> None:
    console().print(view)


@click.group()
def db() -> None:
    """Registry schema migrations (Alembic)."""


def _revision(_: click.Context, param: click.Parameter, value: str) -> str:
    """Alembic asserts on an empty revision instead of naming it."""
    if not value.strip():
        raise click.BadParameter("empty; give a revision id, 'head' or 'base'", param=param)
    return value


@db.command("upgrade")
@url_option
@click.argument("revision", default="head", callback=_revision)
def db_upgrade(url: str | None, revision: str) -> None:
    """Upgrade the schema to REVISION (default: the newest), creating the registry if needed."""
    store = open_store(url, create=True, check_schema=False)
    before = migrations.current(store)
    migrations.upgrade(store, revision)
    click.echo(f"{store.url}: {before or '(empty)'} → {migrations.current(store)}")


@db.command("downgrade")
@url_option
@click.argument("revision", callback=_revision)
def db_downgrade(url: str | None, revision: str) -> None:
    """Downgrade the schema to REVISION ('base' removes every table)."""
    store = open_store(url, check_schema=False)  # never creates the database
    before = migrations.current(store)
    migrations.downgrade(store, revision)
    click.echo(f"{store.url}: {before} → {migrations.current(store) or '(base)'}")


@db.command("current")
@url_option
def db_current(url: str | None) -> None:
    """Show the schema revision of the database and the one this rankengine needs."""
    store = open_store(url, check_schema=False)  # never creates the database
    have, want = migrations.current(store), migrations.head()
    state = "up to date" if have == want else "behind: run rankengine db upgrade"
    click.echo(f"{store.url}: {have or '(empty)'} (head {want}, {state})")


@click.group()
def models() -> None:
    """Registered models, versions and aliases."""


def _version_dict(v: ModelVersion, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": v.model, "version": v.version, "status": v.status,
        "created_at": v.created_at.isoformat(), "aliases": list(v.aliases),
        "artifact_uri": v.artifact_uri, "artifact_sha256": v.artifact_sha256,
        "artifact_size": v.artifact_size, "parent_version": v.parent_version, "tags": v.tags,
    }
    if full:
        out.update(config=v.config, task_graph=v.task_graph, plugins=v.plugins,
                   data_fingerprint=v.data_fingerprint, metrics=v.metrics)
    return out


def headline(v: ModelVersion) -> dict[str, float]:
    """``task.metric`` of the headline metrics (as registered) on the test split (else
    valid) for a compact view."""
    from rankengine.pluginmanager import load_engine

    shown = {c.name for c in load_engine().components.metrics if c.factory.headline}
    splits = v.metrics.get("splits", {})
    split = splits.get("test") or splits.get("valid") or {}
    return {f"{task}.{k}": val for task, m in split.items() for k, val in m.items()
            if k in shown and val is not None}


@models.command("list")
@url_option
@json_option
def models_list(url: str | None, as_json: bool) -> None:
    """Every registered model with its latest version and aliases."""
    store = open_store(url)
    found = store.list_models()
    if as_json:
        _print([{"name": m.name, "last_version": m.last_version, "aliases": m.aliases,
                 "created_at": m.created_at.isoformat()} for m in found])
        return
    view = Table(title=f"models in {store.url}")
    for col in ("name", "versions", "aliases", "created"):
        view.add_column(col)
    for m in found:
        view.add_row(m.name, str(m.last_version),
                     ", ".join(f"{a}→{v}" for a, v in sorted(m.aliases.items())),
                     m.created_at.strftime("%Y-%m-%d %H:%M"))
    _console_print(view)


@models.command("versions")
@click.argument("name")
@url_option
@json_option
def models_versions(name: str, url: str | None, as_json: bool) -> None:
    """The versions of a model: status, aliases and headline metrics."""
    versions = open_store(url).list_versions(name)
    if as_json:
        _print([_version_dict(v) | {"headline": headline(v)} for v in versions])
        return
    view = Table(title=f"versions of {name}")
    for col in ("version", "status", "aliases", "created", "test metrics"):
        view.add_column(col)
    for v in versions:
        metrics = " ".join(f"{k}={val:.4f}" for k, val in headline(v).items())
        view.add_row(str(v.version), v.status, ", ".join(v.aliases),
                     v.created_at.strftime("%Y-%m-%d %H:%M:%S"), metrics)
    _console_print(view)


@models.command("show")
@click.argument("ref")
@url_option
@json_option
@click.option("--open", "open_report", is_flag=True,
              help="also write the version's HTML report to a temporary file and open it")
def models_show(ref: str, url: str | None, as_json: bool, open_report: bool) -> None:
    """One version (NAME@ALIAS, NAME/VERSION or NAME for the latest ready one)."""
    store = open_store(url)
    v = store.resolve(ref)
    if open_report:
        from rankengine.cli.report import open_report as write_and_open

        write_and_open(store, v.ref)
    if as_json:
        _print(_version_dict(v, full=True))
        return
    view = Table(title=f"{v.ref} ({v.status})", show_header=False)
    view.add_column("field")
    view.add_column("value")
    for key, value in _version_dict(v).items():
        view.add_row(key, str(value))
    view.add_row("plugins", ", ".join(f"{k} {ver}" for k, ver in v.plugins.items()))
    view.add_row("data", json.dumps(v.data_fingerprint.get("rows", {})))
    for key, value in headline(v).items():
        view.add_row(key, f"{value:.4f}")
    history = store.alias_history(v.model)
    for move in history[-5:]:
        view.add_row(f"alias {move.alias}", f"{move.from_version} → {move.to_version} by "
                     f"{move.moved_by} at {move.moved_at:%Y-%m-%d %H:%M:%S} {move.reason}")
    _console_print(view)


@models.command("promote")
@click.argument("ref")
@click.argument("alias")
@click.option("--reason", default="", help="kept in the alias history")
@url_option
@json_option
def models_promote(ref: str, alias: str, reason: str, url: str | None, as_json: bool) -> None:
    """Point ALIAS at the version REF names."""
    store = open_store(url)
    v = store.resolve(ref)
    _report_move(store.set_alias(v.model, alias, v.version, reason=reason), as_json)


def _report_move(move: AliasMove, as_json: bool) -> None:
    if as_json:
        _print({"model": move.model, "alias": move.alias, "from": move.from_version,
                "to": move.to_version, "moved_at": move.moved_at.isoformat(),
                "moved_by": move.moved_by, "reason": move.reason})
    else:
        click.echo(f"{move.model}@{move.alias}: {move.from_version} → {move.to_version}")


@models.command("rollback")
@click.argument("name")
@click.argument("alias")
@url_option
@json_option
def models_rollback(name: str, alias: str, url: str | None, as_json: bool) -> None:
    """Move ALIAS back to the version it pointed at before its latest move."""
    _report_move(open_store(url).rollback(name, alias), as_json)


@models.command("delete")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="do not ask")
@url_option
@json_option
def models_delete(ref: str, yes: bool, url: str | None, as_json: bool) -> None:
    """Delete a version (NAME/VERSION) and its artifact; aliased versions are refused."""
    from rankengine.registry.artifacts import remove_tree, stored_artifact

    if "/" not in ref and "@" not in ref:  # NAME alone would delete its latest version
        raise click.BadParameter(f"'{ref}' names a model, not a version; give NAME/VERSION "
                                 f"or NAME@ALIAS", param_hint="REF")
    store = open_store(url)
    v = store.resolve(ref)
    artifact = stored_artifact(v)  # refused before anything is deleted if it looks wrong
    if not yes:
        click.confirm(f"delete {v.ref} and its artifact?", abort=True)
    store.delete_version(v.model, v.version)
    if artifact is not None:
        remove_tree(artifact, artifact.parent.parent)
    if as_json:
        _print(_version_dict(v) | {"deleted": True})
    else:
        click.echo(f"deleted {v.ref} (version numbers are never reused)")


@models.command("gc")
@click.option("--older-than", type=click.FloatRange(0, 10 * 365 * 86400.0), default=3600.0,
              show_default=True, callback=finite,
              help="seconds a version must have been pending to count as abandoned")
@click.option("--artifacts", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="artifact root (default: [registry] artifacts of -c, else ./artifacts)")
@click.option("-c", "--config", "config_path", default=None,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="engine.toml whose [registry] url and artifacts to use")
@url_option
@json_option
def models_gc(older_than: float, artifacts: Path | None, config_path: Path | None,
              url: str | None, as_json: bool) -> None:
    """Clean up after killed registrations.

    Marks failed every version pending for longer than --older-than seconds (a registration
    killed mid-way never finishes) and removes the temporary and partial artifact folders of
    failed versions, only ever inside the artifact root.
    """
    from rankengine.registry.artifacts import collect_garbage

    root, config = artifacts, None
    if config_path is not None:
        from rankengine.config import load_config

        config = load_config(config_path)
        root = root or config.resolve_path(config.registry.artifacts)
    done = collect_garbage(open_store(url, config), root or Path("artifacts"),
                           older_than=older_than)
    if as_json:
        _print({"failed": done.failed, "removed": [str(p) for p in done.removed]})
        return
    for ref in done.failed:
        click.echo(f"{ref}: pending for over {older_than:g}s, marked failed")
    for path in done.removed:
        click.echo(f"removed {path}")
    if not done.failed and not done.removed:
        click.echo("nothing to clean up")


@models.command("diff")
@click.argument("a")
@click.argument("b")
@url_option
@json_option
def models_diff(a: str, b: str, url: str | None, as_json: bool) -> None:
    """Config, plugin and metric differences between two versions."""
    store = open_store(url)
    va, vb = store.resolve(a), store.resolve(b)
    config = _dict_diff(flat_keys(va.config), flat_keys(vb.config))
    plugins = _dict_diff(va.plugins, vb.plugins)
    ma, mb = flat_keys(va.metrics.get("splits", {})), flat_keys(vb.metrics.get("splits", {}))
    metrics = {k: {"a": ma.get(k), "b": mb.get(k),
                   "delta": (mb[k] - ma[k]) if isinstance(ma.get(k), float)
                   and isinstance(mb.get(k), float) else None}
               for k in sorted(set(ma) | set(mb)) if ma.get(k) != mb.get(k)}
    if as_json:
        _print({"a": va.ref, "b": vb.ref, "config": config, "plugins": plugins,
                "metrics": metrics})
        return
    view = Table(title=f"{va.ref} → {vb.ref}")
    for col in ("what", "key", va.ref, vb.ref, "delta"):
        view.add_column(col)
    for key, (x, y) in config.items():
        view.add_row("config", key, str(x), str(y), "")
    for key, (x, y) in plugins.items():
        view.add_row("plugin", key, str(x), str(y), "")
    for key, m in metrics.items():
        if key.endswith((".auc", ".gauc", ".logloss", ".rmse", ".auc_cond")):
            delta = f"{m['delta']:+.4f}" if m["delta"] is not None else ""
            view.add_row("metric", key, _num(m["a"]), _num(m["b"]), delta)
    _console_print(view)


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _dict_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


__all__ = ["db", "models"]
