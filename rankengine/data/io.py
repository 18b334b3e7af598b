"""Read a data set (a file or a directory of shards) into a pyarrow Table.

Formats are data sources registered by plugins (see :mod:`rankengine.data.source`); these
functions find the source through the ``sources`` component table and ask it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel

from rankengine.data.source import DataSource, SourceTable, open_source

__all__ = ["DataSource", "open_source", "read_table"]


def read_table(
    path: str | Path,
    columns: Sequence[str] | None = None,
    *,
    sources: SourceTable,
    format: str | None = None,
    **options: BaseModel | Mapping[str, Any] | None,
) -> pa.Table:
    """Read ``path`` (a file or a directory of shards), keeping only ``columns`` if given.

    ``format`` names the source (else it is told from the path); ``options`` are per-source
    parameters keyed by source name (``csv=config.data.csv``). A missing column is an error
    naming the file, the column and the columns that exist.
    """
    source = open_source(path, sources, format=format, **options)
    if columns is not None:
        source.missing_columns(columns, source.schema().names)
    return source.read(list(dict.fromkeys(columns)) if columns else None)
