"""``rankengine report``: the page's sections and numbers against the registry's, on real models."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rankengine_plugins.calibrators import BiasCalibrator
from rankengine_plugins.metrics import auc as plugin_auc
from rankengine_plugins.metrics import decile_calibration

from rankengine import Metric, NoParams, hookimpl
from rankengine.model.calibration import Calibration
from rankengine.pluginmanager import load_engine
from rankengine.registry import RegistryStore
from rankengine.registry.artifacts import load_version, path_of
from rankengine.report.build import (
    DECILES,
    CurveSet,
    MetricInfo,
    TaskCurves,
    artifact_metrics,
    column_info,
    gather_compare,
    gather_report,
    metric_catalog,
    reliability,
    roc_curve,
    score_curves,
    verdict,
)
from rankengine.report.html import _curves_section, pareto_front, render_compare, render_report

from .conftest import Dom, Registry, invoke

SECTIONS = {"graph", "metrics", "curves", "training", "gates", "fusion", "provenance"}


@pytest.fixture(scope="module")
def page(champion_page: Path) -> Dom:
    return Dom(champion_page.read_text())


def stored(registry: Registry, ref: str = "m/2") -> tuple[dict, dict]:
    store = RegistryStore(registry.url)
    try:
        version = store.resolve(ref)
    finally:
        store.close()
    return version.metrics, {"plugins": version.plugins, "fingerprint": version.data_fingerprint,
                             "graph": version.task_graph}


def test_sections_and_self_containment(registry: Registry, page: Dom) -> None:
    assert page.ids >= SECTIONS | {"task-graph", "report-data", "loss-curves", "loss-weights"}
    assert page.data["ref"] == "m/2" and page.data["aliases"] == ["champion"]
    text = (registry.root / "m-champion.html").read_text()
    csp = page.find("meta", http_equiv="Content-Security-Policy")
    assert csp and "default-src 'none'" in csp[0]["content"]
    # Nothing is loaded from anywhere: every src / href / xlink:href points inside the page.
    links = [v for _, a in page.elements for k, v in a.items() if k == "src" or
             k.endswith("href")]
    assert links and all(v.startswith(("#", "data:")) for v in links), links
    assert not re.search(r"url\((?!#)", text) and "@import" not in text
    # A section the model has no data for says so instead of disappearing.
    assert "no fusion weight search" in text


def test_gate_heatmap_is_the_artifacts_gate_stats(registry: Registry, page: Dom) -> None:
    store = RegistryStore(registry.url)
    try:
        version = store.resolve("m/2")
    finally:
        store.close()
    stats = artifact_metrics(version).get("gate_stats")
    text = (registry.root / "m-champion.html").read_text()
    if stats is None:  # a rankengine that does not record gate statistics yet
        assert "no gate statistics recorded" in text and "gate-heatmap" not in page.ids
        return
    assert "gate-heatmap" in page.ids
    cells = {(c["data-task"], c["data-expert"]): float(c["data-value"])
             for c in page.having("td", "data-expert")}
    assert cells == {(task, e): w for task, entry in stats.items()
                     for e, w in zip(entry["experts"], entry["weights"], strict=True)}


def test_metric_cells_are_the_registry_metrics(registry: Registry, page: Dom) -> None:
    metrics, _ = stored(registry)
    cells = page.having("td", "data-metric")
    assert page.data["metrics"] == metrics["splits"]
    checked = 0
    for cell in cells:
        want = metrics["splits"][cell["data-split"]][cell["data-task"]].get(cell["data-metric"])
        if want is None:
            assert cell["data-value"] == ""
        else:
            assert float(cell["data-value"]) == want
            checked += 1
    # Every (split, task, metric) the registry holds has its cell.
    assert checked == sum(v is not None for split in metrics["splits"].values()
                          for task in split.values() for v in task.values())
    assert {"auc", "auc_cond", "gauc", "logloss", "calibration", "rmse"} <= {
        c["data-metric"] for c in cells}


def test_curves_match_the_stored_metrics(registry: Registry, page: Dom) -> None:
    """All 3,000 test rows are scored, so the ROC areas are the registry's AUCs."""
    metrics, _ = stored(registry)
    test = metrics["splits"]["test"]
    curves = page.data["curves"]
    assert curves["split"] == "test" and curves["rows"] == curves["rows_total"] == 3000
    for task in ("click", "favorite", "order", "pay"):
        got = curves["tasks"][task]
        assert got["roc"]["area"] == pytest.approx(test[task]["auc"], abs=1e-9)
        assert got["roc"]["positives"] == test[task]["positives"]
        assert got["reliability"]["ratio"] == pytest.approx(test[task]["calibration"],
                                                            rel=1e-6)
        assert sum(got["reliability"]["rows"]) == 3000
        figure = page.find("div", id=f"curves-{task}")[0]
        assert float(figure["data-roc-area"]) == pytest.approx(test[task]["auc"], abs=1e-9)
        if task != "click":
            assert got["roc_cond"]["area"] == pytest.approx(test[task]["auc_cond"], abs=1e-9)
            assert got["reliability_cond"]["ratio"] == pytest.approx(
                test[task]["calibration_cond"], rel=1e-6)
    assert curves["tasks"]["click"]["roc_cond"] is None  # a root has no parent subspace
    assert "dwell" not in curves["tasks"]  # regression: no ROC


def decile_cells(dom: Dom, task: str) -> dict[tuple[str, str], list[float | None]]:
    """(stage, column) → the column's values by decile, and (stage, "worst") → [largest gap],
    read from the cells of the table ``deciles-{task}``."""
    out: dict[tuple[str, str], list[float | None]] = {}
    inside = False
    for tag, a in dom.elements:
        if tag == "table":
            inside = a.get("id") == f"deciles-{task}"
        elif inside and tag == "td" and "data-stage" in a:
            key = (a["data-stage"], a.get("data-column", "worst"))
            value = a.get("data-value", a.get("data-worst", ""))
            out.setdefault(key, []).append(float(value) if value else None)
    return out


def test_decile_tables_are_the_stored_decile_calibration(registry: Registry, page: Dom) -> None:
    """Every binary task has its table of the 3,000 test rows; its largest |ratio - 1| is the
    registry's decile calibration (same rows, same deciles)."""
    metrics, _ = stored(registry)
    test = metrics["splits"]["test"]
    for task in ("click", "favorite", "order", "pay"):
        deciles = page.data["curves"]["tasks"][task]["deciles"]
        assert len(deciles["rows"]) == DECILES and sum(deciles["rows"]) == 3000
        cells = decile_cells(page, task)
        assert {stage for stage, _ in cells} == {"after"}  # no calibrator: no "before"
        assert cells["after", "predicted"] == pytest.approx(deciles["predicted"], rel=1e-12)
        assert cells["after", "worst"] == [pytest.approx(test[task]["decile_calibration"],
                                                         rel=1e-6)]
        assert cells["after", "ratio"] == [None if r is None else pytest.approx(r)
                                           for r in deciles["ratios"]]
    assert "deciles-dwell" not in page.ids  # regression: no table


def test_decile_table_shows_before_and_after_calibration() -> None:
    # decile k (100 rows) predicts k/10 and holds 10·k positives, except decile 1 (none):
    # calibrated in deciles 2..10; the model's own predictions are half of that.
    p = np.repeat(np.arange(1, 11) / 10, 100)
    y = np.concatenate([np.r_[np.ones(10 * k), np.zeros(100 - 10 * k)] for k in range(1, 11)])
    y[:10] = 0.0
    raw = p / 2
    tc = TaskCurves(roc_curve(y, p), None, reliability(y, p), None, reliability(y, raw),
                    reliability(y, p, DECILES), reliability(y, raw, DECILES))
    report = SimpleNamespace(curves=CurveSet("test", "t.parquet", 1000, 1000, {"order": tc}),
                             graph={"order": {"type": "binary"}}, notes={})
    html = _curves_section(report)  # type: ignore[arg-type]
    cells = decile_cells(Dom(html), "order")
    assert cells["before", "predicted"] == pytest.approx(np.arange(1, 11) / 20)
    assert cells["after", "predicted"] == pytest.approx(np.arange(1, 11) / 10)
    assert cells["before", "observed"] == cells["after", "observed"] == pytest.approx(
        [0.0, *(np.arange(2, 11) / 10)])
    assert cells["before", "ratio"] == [None, *[pytest.approx(0.5)] * 9]
    assert cells["after", "ratio"] == [None, *[pytest.approx(1.0)] * 9]
    # the last row is the largest gap, as the metric computes it (decile 1 skipped)
    assert decile_calibration(y, raw) == pytest.approx(0.5)
    assert decile_calibration(y, p) == pytest.approx(0.0, abs=1e-12)
    assert cells["before", "worst"] == [pytest.approx(0.5)]
    assert cells["after", "worst"] == [pytest.approx(0.0, abs=1e-12)]
    assert '<th colspan="3">before calibration</th><th colspan="3">after calibration</th>' in html
    assert re.search(r'<td title="no positive label in this decile" data-stage="before" '
                     r'data-column="ratio" data-value="">-</td>', html)


def test_the_decile_table_scores_before_and_after_the_model_s_calibrator(
        registry: Registry) -> None:
    """m/2 with a calibrator that adds 0.5 to click's logit: "before" is the model the registry
    evaluated, "after" its calibrated predictions, higher in every decile."""
    metrics, _ = stored(registry)
    store = RegistryStore(registry.url)
    try:
        _, loaded = load_version(store, "m/2")
    finally:
        store.close()
    shift = BiasCalibrator(NoParams())
    shift.bias.data.fill_(0.5)
    loaded.model.calibration = Calibration(loaded.graph, [shift, *[None] * (len(loaded.graph)
                                                                           - 1)])
    assert loaded.graph.nodes[0].name == "click" and loaded.model.calibration.active
    click = score_curves(loaded, "test").tasks["click"]
    assert click.deciles is not None and click.deciles_uncalibrated is not None
    assert click.deciles.rows == click.deciles_uncalibrated.rows == [300] * DECILES
    assert all(a > b for a, b in zip(click.deciles.predicted, click.deciles_uncalibrated.predicted,
                                     strict=True))
    worst = max(abs(r - 1) for r in click.deciles_uncalibrated.ratios if r is not None)
    assert worst == pytest.approx(metrics["splits"]["test"]["click"]["decile_calibration"],
                                  rel=1e-6)


def test_training_history_and_provenance(registry: Registry, page: Dom) -> None:
    _, facts = stored(registry)
    history = page.data["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(history[0]["train_loss"]) == set(facts["graph"])
    assert history[-1]["loss_weights"]["dwell"] == pytest.approx(0.1)
    assert [r["data-epoch"] for r in page.having("tr", "data-epoch")] == ["1", "2"]
    assert page.data["plugins"] == facts["plugins"]
    assert {p["data-plugin"] for p in page.having("tr", "data-plugin")} == set(facts["plugins"])
    assert page.data["data_fingerprint"] == facts["fingerprint"]
    shas = [c["data-sha"] for c in page.having("td", "data-sha")]
    assert shas == [s["schema_sha256"] for s in facts["fingerprint"]["sources"].values()]


def test_task_graph_diagram(registry: Registry, page: Dom) -> None:
    _, facts = stored(registry)
    graph = facts["graph"]
    nodes = {n["data-task"]: n["data-type"] for n in page.find("g", **{"class": "node"})}
    assert nodes == {t: spec["type"] for t, spec in graph.items()}
    after = {(e["data-from"], e["data-to"]) for e in page.find("path", **{"class":
                                                                           "edge edge-after"})}
    assert after == {(s["after"], t) for t, s in graph.items() if s["after"]}
    via = page.find("path", **{"class": "edge edge-via"})
    assert [(e["data-from"], e["data-to"]) for e in via] == [("favorite", "order")]
    assert via[0]["stroke-dasharray"]  # dashed


def test_sampled_curves_say_so(registry: Registry, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    code, output = invoke("report", "m/1", "--registry", registry.url, "-o", str(out),
                          "--max-rows", "500")
    assert code == 0, output
    dom = Dom(out.read_text())
    assert dom.data["curves"]["rows"] == 500 and dom.data["curves"]["rows_total"] == 3000
    assert "a seeded random 500 of its 3,000 rows" in out.read_text()
    assert sum(dom.data["curves"]["tasks"]["click"]["reliability"]["rows"]) == 500


def test_gate_stats_and_fusion_front_render_when_present(registry: Registry) -> None:
    store = RegistryStore(registry.url)
    try:
        report = gather_report(store, "m/2")
    finally:
        store.close()
    # What training and fusion tuning will record (metrics.json keys gate_stats, fusion_search).
    report.artifact_metrics["gate_stats"] = {
        "click": {"experts": ["e0", "e1"], "weights": [0.7, 0.3], "load": [1.0, 0.25]},
        "order": {"experts": ["e0", "e1", "order_own"], "weights": [0.2, 0.5, 0.3]},
    }
    # The shape `rankengine tune` records: per-task ranking metric of every weighting.
    points = [{"weights": {"click": 1.0, "order": w}, "metrics": {"click": a, "order": b}}
              for w, a, b in ((0.5, 0.70, 0.60), (1.0, 0.68, 0.64), (2.0, 0.66, 0.63),
                              (3.0, 0.60, 0.66))]
    report.artifact_metrics["fusion_search"] = {
        "metric": "ndcg@10", "points": points, "recommended": 1, "evaluated": 50,
        "current": {"weights": {"click": 1.0, "order": 1.0},
                    "metrics": {"click": 0.68, "order": 0.64}}}
    html = render_report(report)
    dom = Dom(html)
    assert {"gate-heatmap", "gate-table", "pareto", "fusion-table"} <= dom.ids
    cells = {(c["data-task"], c["data-expert"]): c["data-value"]
             for c in dom.having("td", "data-expert")}
    assert cells[("click", "e0")] == "0.7" and cells[("order", "order_own")] == "0.3"
    assert cells[("click", "order_own")] == ""  # click has no such expert: blank, not 0
    loads = {(c["data-load-task"], c["data-load-expert"]): c["data-value"]
             for c in dom.having("td", "data-load-expert")}  # sparse gates' routed shares
    assert "load-table" in dom.ids and loads == {
        ("click", "e0"): "1.0", ("click", "e1"): "0.25", ("click", "order_own"): ""}
    rows = {r["data-point"]: r.get("class") for r in dom.having("tr", "data-point")}
    assert list(rows) == ["current", "0", "1", "2", "3"]
    assert rows["1"] == "better"  # the recommended point is highlighted
    assert dom.data["gate_stats"]["order"]["weights"] == [0.2, 0.5, 0.3]
    assert "4 weightings stored of 50 evaluated, scored by ndcg@10; 3 on the Pareto front" in html
    # Point 2 (0.66, 0.63) is beaten by point 1 (0.68, 0.64) on both metrics.
    higher = {m: MetricInfo(m, m, "higher") for m in ("click", "order")}
    assert pareto_front(points, ["click", "order"], higher) == [0, 1, 3]
    # With lower-is-better, point 1 is the one beaten (by point 2).
    lower = {m: MetricInfo(m, m, "lower") for m in ("click", "order")}
    assert pareto_front(points, ["click", "order"], lower) == [0, 2, 3]
    # Closest to a target of 0.62 is best: point 2 (0.66, 0.63) beats points 0 and 1.
    target = {m: MetricInfo(m, m, "target", 0.62) for m in ("click", "order")}
    assert pareto_front(points, ["click", "order"], target) == [2, 3]


def test_compare_marks_deltas_by_metric_direction(registry: Registry, tmp_path: Path) -> None:
    out = tmp_path / "c.html"
    code, output = invoke("report", "--compare", "m/1", "m@champion", "--registry",
                          registry.url, "-o", str(out))
    assert code == 0, output
    dom = Dom(out.read_text())
    assert {"compare-metrics", "compare-training", "compare-config", "compare-loss"} <= dom.ids
    a, _ = stored(registry, "m/1")
    b, _ = stored(registry, "m/2")
    rows = dom.data["deltas"]
    seen = set()
    for r in rows:
        x = a["splits"][r["split"]][r["task"]].get(r["metric"])
        y = b["splits"][r["split"]][r["task"]].get(r["metric"])
        assert (r["a"], r["b"]) == (x, y)
        if x is None or y is None:
            assert r["verdict"] == "neutral"
            continue
        assert r["delta"] == pytest.approx(y - x, abs=1e-15)
        base = re.sub(r"_(cond_entire|cond|entire)$", "", r["metric"])
        if r["metric"].startswith("oracle_") or base in ("rows", "positives"):
            expected = "neutral"
        elif base == "calibration":
            expected = "better" if abs(y - 1) < abs(x - 1) else "worse"
        elif base in ("logloss", "rmse", "ece", "decile_calibration"):
            expected = "better" if y < x else "worse"
        else:
            expected = "better" if y > x else "worse"
        if x == y:
            expected = "same" if expected != "neutral" else "neutral"
        assert r["verdict"] == expected, r
        seen.add(base)
        cell = dom.find("tr", data_split=r["split"], data_task=r["task"],
                        data_metric=r["metric"])[0]
        assert cell["data-verdict"] == expected
    assert {"auc", "gauc", "logloss", "calibration", "rmse"} <= seen
    summary = dom.find("p", id="compare-summary")[0]
    assert int(summary["data-better"]) == sum(r["verdict"] == "better" for r in rows)
    assert int(summary["data-better"]) + int(summary["data-worse"]) > 0
    # The two versions differ in [train] epochs and nothing else in their configs.
    assert [k["data-key"] for k in dom.having("tr", "data-key")
            if k["data-key"].startswith("train.")] == ["train.epochs"]


class _ShareMetric:
    """A third-party plugin, registered in-process: a metric whose best value is a target."""

    @hookimpl
    def rankengine_register_metrics(self, register) -> None:  # type: ignore[no-untyped-def]
        register("share_gap", Metric(lambda y, p, g: float(p.mean()), direction="target",
                                     target=0.5, label="Share½"),
                 help="mean prediction (0.5 is best)")


def test_a_third_party_metric_is_ranked_and_headed_as_it_describes_itself(
        registry: Registry) -> None:
    engine = load_engine(extra=[("share", _ShareMetric())])
    store = RegistryStore(registry.url)
    try:
        cmp = gather_compare(store, "m/1", "m/2", engine=engine)
    finally:
        store.close()
    # Values chosen so that higher-is-better and lower-is-better would each be wrong once.
    values = {"click": (0.45, 0.60), "order": (0.70, 0.52), "pay": (0.40, 0.60)}
    for task, (x, y) in values.items():
        cmp.a.metrics["test"][task]["share_gap"] = x
        cmp.b.metrics["test"][task]["share_gap"] = y
    cmp.a.metrics["test"]["order"]["share_gap_cond"] = 0.58
    cmp.b.metrics["test"]["order"]["share_gap_cond"] = 0.55
    dom = Dom(render_compare(cmp))
    rows = {(r["task"], r["metric"]): r for r in dom.data["deltas"] if r["split"] == "test"}
    expected = {("click", "share_gap"): "worse", ("order", "share_gap"): "better",
                ("pay", "share_gap"): "same", ("order", "share_gap_cond"): "better"}
    for key, want in expected.items():
        assert rows[key]["verdict"] == want, rows[key]
        assert rows[key]["direction"] == "target" and rows[key]["target"] == 0.5
        cell = dom.find("tr", data_split="test", data_task=key[0], data_metric=key[1])[0]
        assert cell["data-verdict"] == want
    assert rows[("click", "share_gap")]["label"] == "Share½"
    assert rows[("order", "share_gap_cond")]["label"] == "Share½|parent"
    html = render_compare(cmp)
    assert ">Share½|parent</td>" in html and "closer to 0.5 is better" in html
    assert "Share½: closer to 0.5 is better" in html  # the summary's legend
    # The built-ins still rank as before beside it.
    assert rows[("click", "logloss")]["direction"] == "lower"

    # One version's page heads the column with the label and describes it.
    cmp.a.catalog = metric_catalog(engine)
    section = Dom(render_report(cmp.a))
    heads = {h.get("title"): h for h in section.having("th", "title")}
    assert "mean prediction (0.5 is best)" in heads
    assert "Share½: mean prediction (0.5 is best)" in render_report(cmp.a)


def test_verdict_directions() -> None:
    assert verdict(0.70, 0.71, "higher") == "better"
    assert verdict(0.30, 0.31, "lower") == "worse"
    assert verdict(1.10, 0.95, "target", 1.0) == "better"
    assert verdict(0.98, 1.05, "target", 1.0) == "worse"
    assert verdict(0.30, 0.45, "target", 0.5) == "better"  # closer to the metric's own target
    assert verdict(0.90, 1.10, "target", 1.0) == "same"  # as far on either side
    assert verdict(None, 0.5, "higher") == "neutral" and verdict(0.5, 0.5, "higher") == "same"
    assert verdict(math.nan, 0.5, "higher") == "neutral"
    assert verdict(0.4, 0.5, "neutral") == "neutral"


def test_columns_rank_and_are_headed_as_the_registered_metrics_say() -> None:
    catalog = metric_catalog()
    for name, info in catalog.items():  # whatever the installed plugins register
        assert info.label and info.direction in ("higher", "lower", "target")
        cond = column_info(f"{name}_cond", catalog)
        assert (cond.label, cond.direction, cond.target) == (f"{info.label}|parent",
                                                             info.direction, info.target)
        assert column_info(f"oracle_{name}", catalog).direction == "neutral"
    assert column_info("rows_cond", catalog).direction == "neutral"
    assert column_info("never_registered", catalog) == MetricInfo("never_registered",
                                                                  "never_registered")


def test_roc_area_is_the_metric_auc_with_ties() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(5000) < 0.2).astype(np.float64)
    p = np.round(rng.random(5000) * 0.5 + y * 0.2, 2)  # many ties
    curve = roc_curve(y, p)
    assert curve is not None and len(curve.fpr) <= 300
    assert curve.auc == pytest.approx(plugin_auc(y, p), abs=1e-12)
    assert (curve.fpr[0], curve.tpr[0], curve.fpr[-1], curve.tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert roc_curve(np.zeros(10), rng.random(10)) is None
    bins = reliability(y, p)
    assert bins is not None and sum(bins.rows) == 5000
    assert np.average(bins.predicted, weights=bins.rows) == pytest.approx(p.mean())


def test_bad_references_are_one_clear_line(registry: Registry, tmp_path: Path) -> None:
    out = tmp_path / "x.html"
    for args, message in (
        (["nope/1"], "no model named 'nope'"),
        (["m@nope"], "model 'm' has no alias 'nope'; aliases: champion"),
        (["m/9"], "model 'm' has no version 9"),
        (["--compare", "m/1", "m/9"], "model 'm' has no version 9"),
        ([], "give either REF or --compare A B"),
    ):
        code, output = invoke("report", *args, "--registry", registry.url, "-o", str(out))
        assert code != 0 and message in output, output
        assert "Traceback" not in output and not out.exists()


def test_versions_without_an_artifact_are_refused(registry: Registry, tmp_path: Path) -> None:
    store = RegistryStore(registry.url)
    try:
        pending = store.create_version("m", config={}, task_graph={}, plugins={},
                                       data_fingerprint={})
        champion = store.resolve("m@champion")
        # A ready version whose artifact directory has since gone away.
        gone = store.create_version("m", config={}, task_graph={}, plugins={},
                                    data_fingerprint={})
        missing = tmp_path / "deleted-artifact"
        store.mark_ready("m", gone.version, artifact_uri=missing.as_uri(),
                         artifact_sha256=champion.artifact_sha256 or "", artifact_size=1,
                         metrics={})
    finally:
        store.close()
    out = tmp_path / "x.html"
    code, output = invoke("report", f"m/{pending.version}", "--registry", registry.url,
                          "-o", str(out))
    assert code == 1 and f"m/{pending.version}" in output and "is pending" in output
    for args in ([f"m/{gone.version}"], ["--compare", "m/1", f"m/{gone.version}"]):
        code, output = invoke("report", *args, "--registry", registry.url, "-o", str(out))
        assert code == 1 and f"cannot report on m/{gone.version}" in output, output
        assert str(missing) in output and "Traceback" not in output
    assert not out.exists()


def test_models_show_open_prints_the_path_without_a_display(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # documented: where temp files go
    code, output = invoke("models", "show", "m/1", "--url", registry.url, "--open")
    assert code == 0, output
    path = Path(re.search(r"report: (\S+\.html)", output).group(1))  # type: ignore[union-attr]
    assert path.parent == tmp_path and Dom(path.read_text()).data["ref"] == "m/1"
    assert "no display" in output and "m/1 (ready)" in output  # the usual table follows


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="xdg-open is Linux's opener")
def test_models_show_open_launches_the_opener(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    opened = tmp_path / "opened.txt"
    opener = bin_dir / "xdg-open"  # stands in for the desktop's opener: records what it got
    opener.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    opener.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # documented: where temp files go
    code, output = invoke("models", "show", "m@champion", "--url", registry.url, "--open",
                          "--json")
    assert code == 0, output
    path = re.search(r"report: (\S+\.html)", output).group(1)  # type: ignore[union-attr]
    assert opened.read_text().strip() == path
    assert "could not open" not in output


def test_missing_data_still_reports_stored_metrics(registry: Registry, tmp_path: Path) -> None:
    """Curves need the evaluation data; without it the report says why and shows the rest."""
    store = RegistryStore(registry.url)
    try:
        version = store.resolve("m/1")
    finally:
        store.close()
    config = path_of(version.artifact_uri or "") / "config.json"
    test_file = Path(version.config["data"]["test"])
    assert config.is_file() and test_file.is_file()
    moved = tmp_path / "test.parquet"
    shutil.move(test_file, moved)
    try:
        out = tmp_path / "r.html"
        code, output = invoke("report", "m/1", "--registry", registry.url, "-o", str(out))
    finally:
        shutil.move(moved, test_file)
    assert code == 0, output
    dom = Dom(out.read_text())
    assert dom.data["curves"] is None and "not found" in dom.data["notes"]["curves"]
    assert str(test_file) in dom.data["notes"]["curves"]
    assert dom.having("td", "data-metric")


def test_curves_of_a_model_trained_with_relative_data_paths(tmp_path: Path, funnel_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The Quick start layout: engine.toml names data/funnel/... relative to itself; the report
    runs elsewhere and still finds the evaluation split (the artifact folder is not the
    config's folder)."""
    from ..conftest import tiny_config_text

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copytree(funnel_dir, project / "data" / "funnel")
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    text = tiny_config_text(funnel_dir, extra=f'[registry]\nurl = "{url}"\nmodel = "demo"\n')
    text = text.replace(f"{funnel_dir}/", "data/funnel/")
    assert 'test = "data/funnel/test.parquet"' in text
    (project / "engine.toml").write_text(text)
    monkeypatch.chdir(project)
    code, output = invoke("train", "-c", "engine.toml", "--quiet", "--epochs", "1")
    assert code == 0, output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, output = invoke("report", "demo/1", "--registry", url, "-o", "r.html")
    assert code == 0, output
    dom = Dom((elsewhere / "r.html").read_text())
    assert "curves" not in dom.data["notes"], dom.data["notes"]
    curves = dom.data["curves"]
    assert curves["source"] == str(project / "data" / "funnel" / "test.parquet")
    for task in ("click", "order"):
        assert curves["tasks"][task]["roc"]["fpr"] and curves["tasks"][task]["reliability"]
        assert dom.find("div", id=f"curves-{task}", data_task=task)
    # The saved config names the data absolutely; a missing file is named in full.
    store = RegistryStore(url)
    try:
        version = store.resolve("demo/1")
    finally:
        store.close()
    assert version.config["data"]["test"] == curves["source"]
    # Versions registered before saved relative paths: the data fingerprint's paths stand in.

    from rankengine.registry.artifacts import load_version
    from rankengine.report.build import _located

    store = RegistryStore(url)
    try:
        _, loaded = load_version(store, "demo/1")
    finally:
        store.close()
    relative = loaded.config.data.model_copy(update={"train": "data/funnel/train.parquet",
                                                     "test": "data/funnel/test.parquet"})
    old = loaded.replace(config=loaded.config.model_copy(update={"data": relative}))
    assert _located(old, version).config.data.test == curves["source"]
    assert _located(loaded, version) is loaded
    shutil.move(project / "data", tmp_path / "moved")
    code, output = invoke("report", "demo/1", "--registry", url, "-o", "r2.html")
    assert code == 0, output
    notes = Dom((elsewhere / "r2.html").read_text()).data["notes"]
    assert f"{curves['source']}: data file or directory not found" in notes["curves"]


def test_undefined_metrics_show_as_dashes_with_their_reason() -> None:
    from types import SimpleNamespace

    from rankengine.report.html import _compare_rows, _metrics_section

    metrics = {"test": {"order": {"auc": None, "logloss": 0.2, "gauc": None,
                                  "undefined": {"auc": "no positive labels",
                                                "gauc": "no positive labels"}}}}
    html = _metrics_section(SimpleNamespace(metrics=metrics, best_epoch=None,  # type: ignore[arg-type]
                                            catalog=metric_catalog()))
    dom = Dom(html)
    assert not dom.find("th", title="undefined")  # reasons are not a column
    cell = dom.find("td", data_metric="auc")[0]
    assert cell["class"] == "undefined" and cell["title"] == "undefined: no positive labels"
    assert "Undefined on this split (-):<ul><li>order: auc, gauc (no positive labels)</li>" in html
    side = SimpleNamespace(metrics=metrics)
    rows = _compare_rows(SimpleNamespace(a=side, b=side, catalog={}))  # type: ignore[arg-type]
    assert {r["metric"] for r in rows} == {"logloss"}


def test_output_paths_that_cannot_be_written_are_one_line(registry: Registry,
                                                          tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rankengine.cli import cli

    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, message in ((str(blocker / "r.html"), "cannot write the report: a part of the "
                                                   "path is a file, not a folder"),
                         ("", "-o: expected an HTML file name")):
        result = CliRunner().invoke(cli, ["report", "m/1", "--registry", registry.url,
                                          "-o", out])
        lines = result.stderr.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.output
        assert "internal error" not in lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
