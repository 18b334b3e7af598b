"""The ``rankengine`` group: one-line errors, the built-in commands and plugins' commands.

Every command lives in the module of its family (``rankengine.cli.train``, ``.score``, ...);
this module only assembles them. Nothing below the CLI imports ``rankengine.cli``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import click

from rankengine.cli.export import export
from rankengine.cli.plugins import plugins
from rankengine.cli.registry import db, models
from rankengine.cli.report import report
from rankengine.cli.score import evaluate, predict, rank
from rankengine.cli.serve import serve
from rankengine.cli.simulate import simulate
from rankengine.cli.train import train
from rankengine.cli.tune import tune_fusion
from rankengine.errors import RankEngineError, one_line
from rankengine.scaffold import plugin

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
        engine.hooks.register_commands(self)

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


for _command in (train, evaluate, predict, rank, serve, export, simulate, plugins, db, models,
                 report, tune_fusion, plugin):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="rankengine")


__all__ = ["DEBUG_ENV", "RankEngineGroup", "cli", "main"]
