"""``rankengine plugins``: the installed and enabled plugins."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from rankengine.cli.common import config_option, console


@click.command()
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
