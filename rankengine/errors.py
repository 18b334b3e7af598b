"""Errors that users see. Each names the place (file, key, row, plugin) and what was expected."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RankEngineError(Exception):
    """Base of every error rankengine raises on purpose; the CLI prints it without a traceback."""


class ConfigError(RankEngineError):
    """engine.toml is missing, malformed or names something that does not exist."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        where = ": ".join(part for part in (source, f"[{key}]" if key else None) if part)
        super().__init__(f"{where}: {message}" if where else message)


class UnknownComponentError(ConfigError):
    """A name that no enabled plugin registered."""


class GraphError(RankEngineError):
    """The declared task graph is not a valid DAG of behaviours."""


class DataError(RankEngineError):
    """Input data does not match what the configuration expects."""


class PluginError(RankEngineError):
    """A plugin failed to import, registered something twice, or implemented an unknown hook."""


class TrainingError(RankEngineError):
    """Training diverged (a non-finite loss) or cannot proceed."""


class ArtifactError(RankEngineError):
    """A model artifact is missing, incomplete or fails its checksum."""


class BadRequestError(RankEngineError):
    """A client's mistake in a request to the server: answered with ``status`` (400) and this
    message, never a 5xx."""

    status = 400


class UnscorableError(BadRequestError):
    """A well-formed request the model cannot score: some prediction or the fused score of a
    candidate is not a finite number (extreme feature values). Answered with 422. A serving
    back end raises it for a candidate it refuses to score."""

    status = 422


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, newlines included, as one space: errors are one
    line wherever they come from (a driver, Arrow, a plugin)."""
    return " ".join(text.split())


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ` did you mean 'x'?` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_name_message(what: str, name: str, choices: Iterable[str]) -> str:
    """`unknown backbone 'mmeo'; available: mmoe, omoe; did you mean 'mmoe'?`"""
    ordered = sorted(choices)
    available = ", ".join(ordered) if ordered else "(none registered)"
    return f"unknown {what} '{name}'; available: {available}{suggest(name, ordered)}"
