"""Data path: reading CSV / Parquet with pyarrow, fitted feature pipelines, columnar batches."""

from rankengine.data.batching import Batch, TensorData, iterate_batches
from rankengine.data.dataset import EncodedData, encode_table
from rankengine.data.io import read_table
from rankengine.data.pipeline import FeatureLayout, FeaturePipeline

__all__ = [
    "Batch",
    "EncodedData",
    "FeatureLayout",
    "FeaturePipeline",
    "TensorData",
    "encode_table",
    "iterate_batches",
    "read_table",
]
