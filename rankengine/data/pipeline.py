"""The fitted feature pipeline: one encoder per feature, saved inside every model artifact.

Training and serving run the same :meth:`FeaturePipeline.transform`, so there is no train/serve
skew by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from rankengine.config import FeatureSpec
from rankengine.errors import ArtifactError, DataError
from rankengine.interfaces import FeatureEncoder


@dataclass(frozen=True)
class FeatureLayout:
    """Where each feature lands in the encoded arrays; the model is built from this."""

    name: str
    output: str  # ids | dense | id_list (FeatureEncoder.output)
    side: str
    groups: tuple[str, ...]
    dim: int  # embedding dim (categorical, sequence) or number of floats (dense)
    cardinality: int  # ids (categorical, sequence); 0 for dense
    column: int  # column in the categorical / dense matrix, or sequence index
    pooling: str = "mean"
    #: the ids feature whose embedding table this id_list shares (its id k + 1 is that
    #: feature's id k), or None
    shares: str | None = None
    length: int = 0  # ids per row (id_list)


def feature_layout(features: Sequence[FeatureSpec], encoders: Sequence[FeatureEncoder], *,
                   cardinality: int | None = None) -> list[FeatureLayout]:
    """Where each feature lands, asked of its encoder. ``cardinality`` stands in for the real
    one (and 1 for a dense width that is only known after fitting) to build a model's layers
    before the encoders are fitted."""
    out: list[FeatureLayout] = []
    counters: dict[str, int] = {}
    for spec, encoder in zip(features, encoders, strict=True):
        kind = encoder.output
        dense = kind == "dense"
        width = 0
        if dense:
            try:
                width = int(encoder.width)
            except Exception:  # a width that depends on the fitted data
                if cardinality is None:
                    raise
                width = 1
            if cardinality is not None:
                width = max(width, 1)
        out.append(FeatureLayout(
            name=spec.name, output=kind, side=spec.side, groups=tuple(spec.groups),
            dim=width if dense else spec.dim,
            cardinality=0 if dense else cardinality or encoder.cardinality,
            column=counters.get(kind, 0), pooling=encoder.pooling,
            shares=encoder.shares_with,
            length=int(encoder.length) if kind == "id_list" else 0,
        ))
        counters[kind] = counters.get(kind, 0) + (width if dense else 1)
    return out


class FeaturePipeline:
    """Encoders for the configured features, in config order."""

    def __init__(self, features: Sequence[FeatureSpec], encoders: Sequence[FeatureEncoder]) -> None:
        """``encoders[i]`` encodes ``features[i]`` (built by :func:`rankengine.plan.make_plan`)."""
        if len(encoders) != len(features):
            raise ValueError(f"expected one encoder per feature ({len(features)}), found "
                             f"{len(encoders)}")
        self.features = list(features)
        self.encoders: list[FeatureEncoder] = list(encoders)
        self.fitted = False
        #: sequence name → its id_list features, aligned element by element (the same number
        #: of elements in every row); set by the plan from ``[[model.interactions]]``
        self.aligned: dict[str, list[str]] = {}

    @property
    def list_sources(self) -> set[str]:
        """The raw columns of ``id_list`` features (a request sends lists for them)."""
        return {f.source for f, e in zip(self.features, self.encoders, strict=True)
                if e.output == "id_list"}

    @property
    def source_columns(self) -> list[str]:
        return list(dict.fromkeys(spec.source for spec in self.features))

    def fit(self, table: pa.Table, *, where: str = "training data") -> FeaturePipeline:
        for spec, encoder in zip(self.features, self.encoders, strict=True):
            with _Naming(spec, where):
                encoder.fit(table.column(spec.source))
        self.fitted = True
        return self

    def transform(
        self, table: pa.Table, *, where: str = "data"
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Encode ``table`` → (categorical int64 [N, C], dense float32 [N, D], sequences)."""
        names = [spec.name for spec in self.features]
        return self.assemble(self.encode(table, names, where=where), table.num_rows)

    def encode(self, table: pa.Table, names: Sequence[str], *,
               where: str = "data") -> dict[str, np.ndarray]:
        """Encode only the features ``names`` (serving encodes context and items apart)."""
        if not self.fitted:
            raise RuntimeError("FeaturePipeline.encode called before fit/load")
        wanted = set(names)
        present = set(table.column_names)
        out: dict[str, np.ndarray] = {}
        for spec, encoder in zip(self.features, self.encoders, strict=True):
            if spec.name not in wanted:
                continue
            if spec.source not in present:
                raise DataError(f"{where}: feature '{spec.name}' needs column '{spec.source}'")
            with _Naming(spec, where):
                out[spec.name] = np.asarray(encoder.transform(table.column(spec.source)))
        self._check_aligned(table, wanted, where)
        return out

    def _check_aligned(self, table: pa.Table, names: set[str], where: str) -> None:
        """Each row's elements of an aligned sequence's columns are equally many: a category
        list one element short would pair every later item with the wrong category."""
        specs = {f.name: (f, e) for f, e in zip(self.features, self.encoders, strict=True)}
        for sequence, members in self.aligned.items():
            present = [m for m in members if m in names]
            if len(present) < 2:
                continue
            first, first_encoder = specs[present[0]]
            lengths = first_encoder.lengths(table.column(first.source))
            for name in present[1:]:
                spec, encoder = specs[name]
                other = encoder.lengths(table.column(spec.source))
                bad = np.flatnonzero(other != lengths)
                if len(bad):
                    row = int(bad[0])
                    raise DataError(
                        f"{where}: row {row}: sequence '{sequence}' is misaligned: column "
                        f"'{spec.source}' has {other[row]} elements, column '{first.source}' "
                        f"has {lengths[row]}")

    def placeholder(self, name: str) -> np.ndarray:
        """One encoded row of zeros for feature ``name``: stands in for a feature the model
        does not read at serving time (bias-tower features)."""
        for spec, encoder in zip(self.features, self.encoders, strict=True):
            if spec.name == name:
                if encoder.output == "ids":
                    return np.zeros(1, dtype=np.int64)
                if encoder.output == "dense":
                    return np.zeros((1, encoder.width), dtype=np.float32)
                return np.zeros((1, encoder.length), dtype=np.int64)
        raise KeyError(name)

    def assemble(self, encoded: dict[str, np.ndarray],
                 n: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Encoded features (each with n rows, or 1 row to broadcast) → model arrays; an
        ``id_list`` of 1 row stays 1 row (the model reads it once per context)."""
        categorical, dense, sequences = [], [], []
        for spec, encoder in zip(self.features, self.encoders, strict=True):
            values = encoded[spec.name]
            if encoder.output == "ids":
                categorical.append(np.broadcast_to(values.astype(np.int64).reshape(-1), (n,)))
            elif encoder.output == "dense":
                # explicit widths: numpy cannot infer a -1 axis of an array with no rows
                dense.append(np.broadcast_to(
                    values.astype(np.float32).reshape(len(values), encoder.width),
                    (n, encoder.width)))
            else:  # 1 row (a request's context) stays 1 row: the model reads it per context
                seq = values.astype(np.int64)
                if seq.ndim != 2:
                    seq = seq.reshape(len(values), -1)
                sequences.append(np.ascontiguousarray(seq))
        cat = np.stack(categorical, axis=1) if categorical else np.zeros((n, 0), np.int64)
        den = np.concatenate(dense, axis=1) if dense else np.zeros((n, 0), np.float32)
        return np.ascontiguousarray(cat), np.ascontiguousarray(den), sequences

    def layout(self) -> list[FeatureLayout]:
        return feature_layout(self.features, self.encoders)

    def state(self) -> dict[str, Any]:
        return {spec.name: encoder.state() for spec, encoder in zip(
            self.features, self.encoders, strict=True)}

    def load_state(self, state: Mapping[str, Any]) -> FeaturePipeline:
        for spec, encoder in zip(self.features, self.encoders, strict=True):
            if spec.name not in state:
                raise ArtifactError(f"fitted state of feature '{spec.name}' is missing")
            if not isinstance(state[spec.name], Mapping):
                raise ArtifactError(f"fitted state of feature '{spec.name}' must be an object, "
                                    f"found {type(state[spec.name]).__name__}")
            try:
                encoder.load_state(state[spec.name])
            except KeyError as exc:
                raise ArtifactError(f"fitted state of feature '{spec.name}' has no {exc}") \
                    from None
            except (TypeError, ValueError) as exc:
                raise ArtifactError(f"fitted state of feature '{spec.name}' (kind "
                                    f"{spec.kind}): {exc}") from None
        self.fitted = True
        return self


class _Naming:
    """Prefix encoder errors with the data source and the feature they concern."""

    def __init__(self, spec: FeatureSpec, where: str) -> None:
        self.spec, self.where = spec, where

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, DataError) and not getattr(exc, "_named", False):
            named = DataError(
                f"{self.where}: feature '{self.spec.name}' (column '{self.spec.source}', "
                f"kind {self.spec.kind}): {exc}"
            )
            named._named = True  # type: ignore[attr-defined]
            raise named from exc
