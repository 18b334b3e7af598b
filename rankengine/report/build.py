"""Gather what a report shows: registry entity, stored metrics and history, and curves.

The metrics tables come from the registry (what ``models show`` / ``models diff`` read); the
per-epoch history, gate statistics and fusion search come from the artifact's ``metrics.json``;
ROC and reliability curves and the per-decile calibration tables are computed here by scoring
the version's evaluation split, at most ``max_rows`` rows of it (a seeded random sample beyond
that).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from rankengine.artifact import MANIFEST, read_manifest, sha256_file
from rankengine.bundle import ModelBundle
from rankengine.errors import ArtifactError, RankEngineError
from rankengine.registry.artifacts import digest, load_version, path_of
from rankengine.registry.store import ModelVersion, RegistryError, RegistryStore
from rankengine.report.limits import MAX_ROWS

if TYPE_CHECKING:
    import torch

    from rankengine.pluginmanager import Engine

ROC_POINTS = 300
RELIABILITY_BINS = 15
DECILES = 10  # rows of the per-decile calibration table

Direction = Literal["higher", "lower", "target", "neutral"]
"""How the report ranks a metric column: the registered metric's own direction, or ``neutral``
(counts, oracles, metrics no installed plugin registers): shown, never called better or worse."""

Verdict = Literal["better", "worse", "same", "neutral"]
"""Is B better than A: ``neutral`` where the column is not ranked or a value is missing."""

# Metrics the registry stores per task that are counts or properties of the data, not quality.
COUNTS = {"positives": ("positives", "positive rows"), "rows": ("rows", "rows evaluated"),
          "rows_cond": ("rows|parent", "parent-positive rows")}  # name → (header, description)
ORACLE = "oracle_"  # evaluation's prefix for a metric of the true probabilities (simulated data)
# evaluation's suffixes: (suffix, header suffix, what the column is judged on)
VARIANTS = [
    ("", "", ""),
    ("_cond", "|parent", "on the parent-positive rows, with p(task | parent)"),
    ("_entire", " (all rows)", "on every row, with p(parent)·E[value]"),
    ("_cond_entire", "|parent (all rows)",
     "p(task | parent) on counterfactual labels of every row"),
]


@dataclass
class Curve:
    """One ROC curve (downsampled for drawing; ``auc`` is computed on every point)."""

    fpr: list[float]
    tpr: list[float]
    auc: float
    rows: int
    positives: int

    def as_dict(self) -> dict[str, Any]:
        return {"fpr": self.fpr, "tpr": self.tpr, "area": _num(self.auc), "rows": self.rows,
                "positives": self.positives}


@dataclass
class Reliability:
    """Equal-count bins: mean prediction, observed rate and rows per bin."""

    predicted: list[float]
    observed: list[float]
    rows: list[int]
    calibration: float  # mean prediction / mean label over all rows

    @property
    def ratios(self) -> list[float | None]:
        """Mean prediction / observed rate per bin; None where the bin has no positive label."""
        return [p / o if o > 0 else None for p, o in zip(self.predicted, self.observed,
                                                            strict=True)]

    def as_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "observed": self.observed, "rows": self.rows,
                "ratio": _num(self.calibration), "ratios": self.ratios}


@dataclass
class TaskCurves:
    roc: Curve | None = None
    roc_cond: Curve | None = None  # on the parent-positive rows, with p(task | parent)
    reliability: Reliability | None = None
    reliability_cond: Reliability | None = None
    #: the model's own predictions, before its calibrator (None: the model has none)
    reliability_uncalibrated: Reliability | None = None
    #: the calibration table: :data:`DECILES` equal-mass bins of the predictions (entire space)
    deciles: Reliability | None = None
    #: the same of the model's own predictions, before its calibrator (None: it has none)
    deciles_uncalibrated: Reliability | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.as_dict() if v is not None else None) for k, v in (
            ("roc", self.roc), ("roc_cond", self.roc_cond), ("reliability", self.reliability),
            ("reliability_cond", self.reliability_cond),
            ("reliability_uncalibrated", self.reliability_uncalibrated),
            ("deciles", self.deciles), ("deciles_uncalibrated", self.deciles_uncalibrated))}


@dataclass
class CurveSet:
    split: str
    source: str
    rows: int  # rows scored
    rows_total: int  # rows in the split
    tasks: dict[str, TaskCurves] = field(default_factory=dict)


@dataclass
class VersionReport:
    """Everything one version's report shows."""

    version: ModelVersion
    graph: dict[str, dict[str, Any]]  # task → {type, after, via, label}
    #: split → task → metric → value, and "undefined" → metric → why it has none
    metrics: dict[str, dict[str, dict[str, Any]]]
    history: list[dict[str, Any]]
    artifact_metrics: dict[str, Any]
    curves: CurveSet | None = None
    notes: dict[str, str] = field(default_factory=dict)  # section → why it is partial / skipped
    #: registered metric name → how it ranks and what it is called (the model's engine's table)
    catalog: dict[str, MetricInfo] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return self.version.ref

    @property
    def gate_stats(self) -> dict[str, Any] | None:
        found = self.artifact_metrics.get("gate_stats") or self.version.metrics.get("gate_stats")
        return found if isinstance(found, dict) and found else None

    @property
    def fusion_search(self) -> dict[str, Any] | None:
        found = (self.artifact_metrics.get("fusion_search")
                 or self.version.metrics.get("fusion_search"))
        return found if isinstance(found, dict) and found.get("points") else None

    @property
    def best_epoch(self) -> int | None:
        value = self.version.metrics.get("best_epoch", self.artifact_metrics.get("best_epoch"))
        return int(value) if isinstance(value, int | float) else None


@dataclass
class CompareReport:
    a: VersionReport
    b: VersionReport
    catalog: dict[str, MetricInfo]  # registered metric name → direction, target, label
    notes: dict[str, str] = field(default_factory=dict)


# -- gathering ------------------------------------------------------------------------------


def gather_report(store: RegistryStore, ref: str, *, max_rows: int = MAX_ROWS,
                  seed: int = 0, device: torch.device | None = None) -> VersionReport:
    """Resolve ``ref``, load its verified artifact (its model on ``device``) and score its
    evaluation split for curves."""
    version = _ready(store, ref)
    try:
        _, loaded = load_version(store, version.ref, device=device)
    except ArtifactError as exc:
        raise ArtifactError(f"cannot report on {_named(version, ref)}: {exc}") from exc
    report = _report_of(version, loaded.metrics)
    report.catalog = metric_catalog(loaded.engine)
    try:
        report.curves = score_curves(_located(loaded, version), _split_of(report),
                                     max_rows=max_rows, seed=seed)
    except RankEngineError as exc:
        # The stored metrics still make a useful report when the data has moved away.
        report.notes["curves"] = f"no curves: {exc}"
    return report


def _located(loaded: ModelBundle, version: ModelVersion) -> ModelBundle:
    """The loaded model with its data paths as training read them.

    Versions trained since data paths are saved absolute need nothing; older ones saved the
    config's relative paths, which mean nothing next to the artifact: the registry's data
    fingerprint holds the absolute path training read for each split.
    """
    data = loaded.config.data
    sources = (version.data_fingerprint or {}).get("sources") or {}
    paths = {}
    for split in ("train", "valid", "test"):
        path, recorded = getattr(data, split), (sources.get(split) or {}).get("path")
        if path and recorded and not Path(path).expanduser().is_absolute():
            paths[split] = str(recorded)
    if not paths:
        return loaded
    config = loaded.config.model_copy(update={"data": data.model_copy(update=paths)})
    return loaded.replace(config=config)


def gather_compare(store: RegistryStore, a: str, b: str, *,
                   engine: Engine | None = None) -> CompareReport:
    """Two versions' registry entities and stored metrics (no scoring).

    Metrics are ranked as ``engine``'s metric table describes them (default: the installed
    plugins, :func:`rankengine.pluginmanager.load_engine`).
    """
    reports = []
    for ref in (a, b):
        version = _ready(store, ref)
        reports.append(_report_of(version, artifact_metrics(version)))
    notes = {}
    try:
        catalog = metric_catalog(engine)
    except RankEngineError as exc:
        # The stored values still make a useful page; nothing is called better or worse.
        catalog, notes["metrics"] = {}, f"metrics are not ranked: {exc}"
    for report in reports:
        report.catalog = catalog
    return CompareReport(reports[0], reports[1], catalog, notes)


def _ready(store: RegistryStore, ref: str) -> ModelVersion:
    version = store.resolve(ref)
    if version.status != "ready" or not version.artifact_uri:
        raise RegistryError(f"{_named(version, ref)} is {version.status} and has no artifact "
                            f"to report on; only ready versions have one")
    return version


def _named(version: ModelVersion, ref: str) -> str:
    return version.ref if ref == version.ref else f"{version.ref} ({ref})"


def artifact_metrics(version: ModelVersion) -> dict[str, Any]:
    """The artifact's ``metrics.json``, checked against the registry's and manifest's hashes."""
    assert version.artifact_uri is not None
    path = path_of(version.artifact_uri)
    try:
        sha, _ = digest(path)
        if sha != version.artifact_sha256:
            raise ArtifactError(f"{path / MANIFEST}: sha256 does not match the registry's; the "
                                f"artifact was modified or replaced")
        manifest = read_manifest(path)
        file = path / "metrics.json"
        if not file.is_file() or sha256_file(file) != manifest["files"].get("metrics.json"):
            raise ArtifactError(f"{file}: missing or does not match its manifest checksum")
    except ArtifactError as exc:
        raise ArtifactError(f"cannot report on {version.ref}: {exc}") from exc
    found: dict[str, Any] = json.loads(file.read_text())
    return found


def _report_of(version: ModelVersion, stored: dict[str, Any]) -> VersionReport:
    graph = version.task_graph or {}
    splits = version.metrics.get("splits") or stored.get("metrics") or {}
    history = stored.get("history") or []
    report = VersionReport(version, graph, splits, history, stored)
    if not history:
        report.notes["training"] = "no per-epoch history in the artifact's metrics.json"
    return report


def _split_of(report: VersionReport) -> str:
    return "test" if "test" in report.metrics else "valid"


# -- curves -----------------------------------------------------------------------------------


def score_curves(loaded: ModelBundle, split: str, *, max_rows: int = MAX_ROWS,
                 seed: int = 0) -> CurveSet:
    """Score ``split`` of the loaded model's data (as its config names it) and build curves."""
    from rankengine.data.batching import TensorData
    from rankengine.data.dataset import encode_table, label_columns
    from rankengine.scoring import PredictionModule, named_outputs

    cfg, graph = loaded.config, loaded.graph
    columns = [*loaded.pipeline.source_columns, *label_columns(graph)]
    if cfg.data.group:
        columns.append(cfg.data.group)
    columns = list(dict.fromkeys(columns))
    table, source, total = _read_split(loaded, split, columns, max_rows, seed)
    data = encode_table(table, loaded.pipeline, graph, policy=cfg.data.inconsistent,
                        group=cfg.data.group, where=source)
    entire, conditional = PredictionModule(loaded.model).predict_all(
        TensorData(data), cfg.train.eval_batch_size)
    named_outputs(graph, loaded.fusion, entire, conditional,  # no silent NaN curve
                  label=lambda row: f"{source}: row {row}")
    labels = data.labels.astype(np.float64)
    raw = PredictionModule(loaded.model, calibrated=False).predict_all(
        TensorData(data), cfg.train.eval_batch_size)[0] \
        if loaded.model.calibration.active else None
    out = CurveSet(split, source, len(data), total)
    for i, node in enumerate(graph.nodes):
        if node.type != "binary":
            continue
        parent = graph.parent_index[i]
        curves = TaskCurves(roc_curve(labels[:, i], entire[:, i]), None,
                            reliability(labels[:, i], entire[:, i]), None,
                            deciles=reliability(labels[:, i], entire[:, i], DECILES))
        if parent >= 0:
            sub = labels[:, parent] == 1
            curves.roc_cond = roc_curve(labels[sub, i], conditional[sub, i])
            curves.reliability_cond = reliability(labels[sub, i], conditional[sub, i])
        if raw is not None:
            curves.reliability_uncalibrated = reliability(labels[:, i], raw[:, i])
            curves.deciles_uncalibrated = reliability(labels[:, i], raw[:, i], DECILES)
        out.tasks[node.name] = curves
    return out


def _read_split(loaded: ModelBundle, split: str, columns: list[str], max_rows: int,
                seed: int) -> tuple[pa.Table, str, int]:
    """The split's rows (a seeded sample of ``max_rows`` when larger), a description, total."""
    from rankengine.data.io import open_source, read_table

    data = loaded.config.data
    direct = {"test": data.test if data.valid or data.valid_from != "test" else None,
              "valid": data.valid}.get(split)
    rng = np.random.default_rng(seed)
    if direct:
        path = loaded.config.resolve_path(direct)
        dataset = open_source(path, loaded.engine.components.sources, format=data.format,
                              csv=data.csv)
        missing = [c for c in columns if c not in dataset.schema().names]
        if not missing:
            total = dataset.num_rows()
            if total > max_rows:
                rows = np.sort(rng.choice(total, max_rows, replace=False))
                return dataset.take(pa.array(rows), columns), str(path), total
            return dataset.read(columns), str(path), total
        table = read_table(path, columns, format=data.format, csv=data.csv,  # names what's wrong
                           sources=loaded.engine.components.sources)
        source = str(path)
    else:
        # Carved out of another file at training time: redo the same seeded split.
        from rankengine.train.splits import read_splits

        splits = read_splits(loaded.config, columns, loaded.config.engine.seed, loaded.engine)
        chosen = splits.test if split == "test" else splits.valid
        if chosen is None:
            raise ArtifactError(f"the config of {loaded.path} names no {split} split")
        table, source = chosen, splits.sources[split]
    total = table.num_rows
    if total > max_rows:
        table = table.take(pa.array(np.sort(rng.choice(total, max_rows, replace=False))))
    return table, source, total


def roc_curve(y: np.ndarray, p: np.ndarray, points: int = ROC_POINTS) -> Curve | None:
    """ROC with ties as one step (so its area is the Mann-Whitney AUC, ties counting half)."""
    positives = float(y.sum())
    negatives = float(len(y) - positives)
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tps = np.cumsum(ys)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / positives]
    fpr = np.r_[0.0, fps / negatives]
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    if len(fpr) > points:
        # Keep points evenly spaced along the curve's length (corners where it bends).
        length = np.r_[0.0, np.cumsum(np.hypot(np.diff(fpr), np.diff(tpr)))]
        keep = np.unique(np.searchsorted(length, np.linspace(0.0, length[-1], points)))
        keep = np.unique(np.r_[0, keep.clip(0, len(fpr) - 1), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return Curve([round(float(v), 6) for v in fpr], [round(float(v), 6) for v in tpr], area,
                 len(y), int(positives))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = RELIABILITY_BINS) -> Reliability | None:
    """Equal-count bins over the prediction (rare events crowd near 0; equal widths waste bins).

    Rows sorted by prediction (stable) and cut as ``np.array_split`` cuts: with ``bins`` = 10
    the bins are the deciles the built-in per-decile calibration metric measures.
    """
    if len(y) == 0 or float(y.sum()) == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    chunks = np.array_split(order, min(bins, len(y)))
    predicted = [float(p[c].mean()) for c in chunks if len(c)]
    observed = [float(y[c].mean()) for c in chunks if len(c)]
    rows = [len(c) for c in chunks if len(c)]
    return Reliability(predicted, observed, rows, float(p.mean()) / float(y.mean()))


# -- metric direction ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricInfo:
    """How the report ranks and names one metric column, as the registered metric describes it.

    ``direction`` and ``target`` are the metric's (``target``: closest to ``target`` is best),
    or ``neutral`` for a column that is not ranked; ``label`` is its column header and
    ``description`` the header's tooltip.
    """

    name: str
    label: str
    direction: Direction = "neutral"
    target: float | None = None
    description: str = ""
    task_type: str = "binary"
    headline: bool = True

    @property
    def goal(self) -> str:
        """The direction in words (shown beside a comparison)."""
        if self.direction == "target":
            return f"closer to {self.target:g} is better"
        return {"higher": "higher is better", "lower": "lower is better"}.get(self.direction,
                                                                           "not ranked")

    def verdict(self, a: float | None, b: float | None) -> Verdict:
        """Is ``b`` better than ``a``?"""
        return verdict(a, b, self.direction, self.target)


def metric_catalog(engine: Engine | None = None) -> dict[str, MetricInfo]:
    """Every metric ``engine`` registers (default: :func:`load_engine`'s), in table order."""
    if engine is None:
        from rankengine.pluginmanager import load_engine

        engine = load_engine()
    out = {}
    for component in engine.components.metrics:
        metric = component.factory
        out[component.name] = MetricInfo(
            component.name, metric.label or component.name, metric.direction, metric.target,
            component.help, metric.task_type, metric.headline)
    return out


def base_metric(metric: str, catalog: dict[str, MetricInfo] | None = None) -> str:
    """The registered metric a stored column measures (``X_cond`` → ``X``, ``oracle_X`` → X)."""
    metric = metric.removeprefix(ORACLE)
    if catalog is not None and metric in catalog:
        return metric
    for suffix, _, _ in sorted(VARIANTS, key=lambda v: -len(v[0])):
        if suffix and metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def column_info(metric: str, catalog: dict[str, MetricInfo]) -> MetricInfo:
    """How to rank and head the stored column ``metric`` (``auc_cond``, ``oracle_auc``, ...).

    Variants of a registered metric rank as it does and are headed after its label; counts,
    oracles (properties of the simulated data) and unregistered metrics are not ranked.
    """
    if metric in COUNTS:
        label, description = COUNTS[metric]
        return MetricInfo(metric, label, description=description)
    oracle = metric.startswith(ORACLE)
    rest = metric.removeprefix(ORACLE)
    base = base_metric(rest, catalog)
    info = catalog.get(base)
    if info is None:
        return MetricInfo(metric, metric)
    suffix = rest.removeprefix(base)
    head, judged = next(((h, j) for s, h, j in VARIANTS if s == suffix), (suffix, ""))
    label = ("oracle " if oracle else "") + info.label + head
    parts = [info.description or info.label, judged, "of the true probabilities" if oracle else ""]
    description = "; ".join(p for p in parts if p)
    if oracle:
        return MetricInfo(metric, label, description=description, task_type=info.task_type)
    return dataclasses.replace(info, name=metric, label=label, description=description)


def column_order(metrics: set[str], catalog: dict[str, MetricInfo]) -> list[str]:
    """Registered metrics (headline ones first) with their variants, oracles, counts, others."""
    bases = sorted(catalog, key=lambda m: not catalog[m].headline)
    known = [m + s for m in bases for s, _, _ in VARIANTS[:3]]
    known += [m + s for m in bases for s, _, _ in VARIANTS[3:]]
    known += [ORACLE + k for k in known]
    known += list(COUNTS)
    present = [k for k in known if k in metrics]
    return present + sorted(metrics - set(present))


def verdict(a: float | None, b: float | None, how: Direction, target: float | None = None,
            tol: float = 1e-12) -> Verdict:
    """Is ``b`` better than ``a`` for a metric with direction ``how`` (and ``target``)?"""
    if a is None or b is None or how == "neutral" or not (_finite(a) and _finite(b)):
        return "neutral"
    if how == "target":
        if target is None:
            return "neutral"
        a, b = -abs(a - target), -abs(b - target)
    elif how == "lower":
        a, b = -a, -b
    if abs(b - a) <= tol:
        return "same"
    return "better" if b > a else "worse"


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _num(value: float) -> float | None:
    return float(value) if _finite(value) else None


def dict_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
