"""Batch scoring with a loaded artifact: per-task predictions and the fused ranking score."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch

from rankengine.artifact import LoadedModel
from rankengine.data.batching import TensorData
from rankengine.data.dataset import EncodedData
from rankengine.errors import DataError
from rankengine.evaluate import predict_arrays


def score_table(loaded: LoadedModel, table: pa.Table, *, where: str = "data",
                batch_size: int = 16384) -> dict[str, np.ndarray]:
    """``p_<task>`` (entire space), ``pc_<task>`` (given the parent) and ``score`` (fused)."""
    categorical, dense, sequences = loaded.pipeline.transform(table, where=where)
    labels = np.zeros((table.num_rows, len(loaded.graph)), dtype=np.float32)
    data = TensorData(EncodedData(categorical, dense, sequences, labels))
    entire, conditional = predict_arrays(loaded.model, data, batch_size)
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(loaded.graph.names):
        out[f"p_{name}"] = entire[:, i]
        if loaded.graph.parent_index[i] >= 0:
            out[f"pc_{name}"] = conditional[:, i]
    with torch.inference_mode():
        out["score"] = loaded.fusion(torch.from_numpy(entire)).numpy()
    return out


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write CSV or Parquet (by suffix) through a temporary file and an atomic rename."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".csv", ".parquet", ".pq")):
        raise DataError(f"{path}: output must end in .csv or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if name.endswith(".csv"):
            pa_csv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
