"""Batch scoring with a loaded artifact: per-task predictions and the fused ranking score."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rankengine.bundle import ModelBundle
from rankengine.data.batching import TensorData
from rankengine.data.dataset import EncodedData, group_ids
from rankengine.errors import DataError
from rankengine.files import os_reason, umask
from rankengine.scoring import PredictionModule, named_outputs


def score_table(loaded: ModelBundle, table: pa.Table, *, where: str = "data",
                batch_size: int = 16384) -> dict[str, np.ndarray]:
    """``p_<task>`` (entire space), ``pc_<task>`` (given the parent) and ``score`` (fused).

    A row whose predictions or score are not all finite numbers (extreme feature values) is
    a :class:`DataError` naming it (and its ``item_id`` when the table has one): a NaN would
    be written as a missing score and rank nowhere.
    """
    categorical, dense, sequences = loaded.pipeline.transform(table, where=where)
    labels = np.zeros((table.num_rows, len(loaded.graph)), dtype=np.float32)
    groups = None
    group = loaded.config.data.group  # requests: their context sequences are read once
    if group and group in table.column_names:
        try:
            groups = group_ids(table, group, where)
        except DataError:  # the ids only save work here: score row by row without them
            groups = None
    data = TensorData(EncodedData(categorical, dense, sequences, labels, groups))
    entire, conditional = PredictionModule(loaded.model).predict_all(data, batch_size)

    def label(row: int) -> str:
        item = f" (item_id {table.column('item_id')[row].as_py()})" \
            if "item_id" in table.column_names else ""
        return f"{where}: row {row}{item}"

    return named_outputs(loaded.graph, loaded.fusion, entire, conditional, label=label)


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write CSV or Parquet (by suffix) through a temporary file and an atomic rename."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".csv", ".parquet", ".pq")):
        raise DataError(f"{path}: output must end in .csv or .parquet")
    if name.endswith(".csv"):
        nested = [f for f in table.schema if pa.types.is_nested(f.type)]
        if nested:  # pyarrow's CSV writer refuses them only once the file is open
            raise DataError(f"{path}: CSV cannot hold column '{nested[0].name}' "
                            f"({nested[0].type}); write .parquet or leave it out")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:  # a parent that is a file, no permission
        raise DataError(f"{path}: cannot write here: {os_reason(exc)}") from None
    os.close(fd)
    try:
        if name.endswith(".csv"):
            pa_csv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would hide the scores from others
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write: {os_reason(exc)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
