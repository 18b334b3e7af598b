"""One self-contained HTML page per report: inline CSS, inline SVG, no network fetches.

A Content-Security-Policy forbids every fetch (images are inline SVG), and the numbers the page
shows are repeated in a ``<script type="application/json" id="report-data">`` block and in
``data-*`` attributes of the table cells, so tools (and the tests) can read them back.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from rankengine.artifact import json_safe
from rankengine.config import flat_keys
from rankengine.evaluate import undefined_summary
from rankengine.report import plots
from rankengine.report.build import (
    COUNTS,
    DECILES,
    CompareReport,
    MetricInfo,
    Reliability,
    TaskCurves,
    VersionReport,
    base_metric,
    column_info,
    column_order,
    dict_diff,
)

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'")

UNDEFINED = "undefined"  # a task's metric → why it has no value (rankengine.evaluate)
NOTHING = "(none)"  # an empty list of aliases, tags, ...

CSS = """
:root { --fg:#1b2631; --muted:#5d6d7e; --line:#d5dbdb; --bg:#fbfcfc; --accent:#2e86c1;
        --good:#1e8449; --good-bg:#e9f7ef; --bad:#b03a2e; --bad-bg:#fdedec; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); margin: 0; }
header { background: #1b2631; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .meta { color: #d6dbdf; font-size: 13px; }
header .meta span { margin-right: 18px; white-space: nowrap; }
nav { padding: 8px 32px; background: #eaeded; border-bottom: 1px solid var(--line);
      font-size: 13px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
main { padding: 8px 32px 40px; max-width: 1600px; }
section { margin: 22px 0; padding: 14px 18px; background: #fff; border: 1px solid var(--line);
          border-radius: 8px; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 14px; margin: 14px 0 6px; color: var(--muted); }
table { border-collapse: collapse; font-size: 12.5px; margin: 4px 0 10px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 7px; text-align: right; }
th { background: #f4f6f6; font-weight: 600; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
td.text { text-align: left; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
          font-size: 12px; word-break: break-all; }
td.missing, td.undefined { color: #aab7b8; }
td.undefined { cursor: help; }
.scroll { overflow-x: auto; }
.note { color: var(--muted); font-style: italic; margin: 6px 0; }
.skipped { color: var(--muted); }
table.compare td:nth-child(2) { text-align: left; }
.better { color: var(--good); background: var(--good-bg); font-weight: 600; }
.worse { color: var(--bad); background: var(--bad-bg); font-weight: 600; }
.figure { margin: 6px 0 14px; }
.figure svg { max-width: 100%; height: auto; }
.task-curves { display: inline-block; vertical-align: top; margin-right: 12px; }
details pre { background: #f4f6f6; padding: 10px; font-size: 11.5px; overflow-x: auto; }
.pair { display: flex; gap: 24px; flex-wrap: wrap; }
.pair > div { flex: 1 1 420px; min-width: 0; }
footer { color: var(--muted); font-size: 12px; padding: 0 32px 24px; }
"""

# Proves in a browser that the page's data block parses and the sections are there.
SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var missing = (data.sections || []).filter(function (id) {
    return !document.getElementById(id); });
  if (missing.length) { throw new Error("report sections missing: " + missing.join(", ")); }
  document.body.setAttribute("data-ready", "1");
  document.body.setAttribute("data-cells",
    String(document.querySelectorAll("td[data-metric]").length));
})();
"""


def render_report(report: VersionReport) -> str:
    """The HTML page of one version."""
    v = report.version
    tasks = list(report.graph) or sorted({t for s in report.metrics.values() for t in s})
    sections: list[tuple[str, str, str]] = [
        ("graph", "Task graph", _graph_section(report)),
        ("metrics", "Metrics per task", _metrics_section(report)),
        ("curves", "ROC and reliability", _curves_section(report)),
        ("training", "Training", _training_section(report, tasks)),
        ("gates", "MoE gates", _gates_section(report)),
        ("fusion", "Fusion search", _fusion_section(report)),
        ("provenance", "Data and plugins", _provenance_section(report)),
    ]
    curves = report.curves
    data = {
        "kind": "report", "ref": v.ref, "model": v.model, "version": v.version,
        "status": v.status, "aliases": list(v.aliases), "tags": v.tags,
        "best_epoch": report.best_epoch, "metrics": report.metrics, "history": report.history,
        "loss_weights": report.artifact_metrics.get("loss_weights"),
        "curves": None if curves is None else {
            "split": curves.split, "source": curves.source, "rows": curves.rows,
            "rows_total": curves.rows_total,
            "tasks": {t: c.as_dict() for t, c in curves.tasks.items()}},
        "gate_stats": report.gate_stats, "fusion_search": report.fusion_search,
        "data_fingerprint": v.data_fingerprint, "plugins": v.plugins,
        "task_graph": report.graph, "notes": report.notes,
        "sections": [s[0] for s in sections],
    }
    meta = [("status", v.status), ("aliases", ", ".join(v.aliases) or NOTHING),
            ("created", f"{v.created_at:%Y-%m-%d %H:%M:%S %Z}".strip()),
            ("best epoch", str(report.best_epoch or "?")),
            ("parent", str(v.parent_version) if v.parent_version else NOTHING),
            ("tags", ", ".join(f"{k}={val}" for k, val in v.tags.items()) or NOTHING)]
    return _page(f"{v.ref} — rankengine report", v.ref, meta, sections, data)


def render_compare(cmp: CompareReport) -> str:
    """Two versions side by side: metric deltas, differences in config, plugins and data."""
    a, b = cmp.a, cmp.b
    sections = [
        ("compare-metrics", "Metrics", _compare_metrics(cmp)),
        ("compare-training", "Training", _compare_training(a, b)),
        ("compare-graph", "Task graphs", _compare_graphs(a, b)),
        ("compare-config", "Config, plugins and data", _compare_config(a, b)),
    ]
    rows = _compare_rows(cmp)
    data = {"kind": "compare", "a": a.ref, "b": b.ref,
            "metrics": {"a": a.metrics, "b": b.metrics}, "deltas": rows,
            "sections": [s[0] for s in sections]}
    meta = [(f"{x.ref}", f"{x.version.status}, aliases {', '.join(x.version.aliases) or NOTHING}, "
                         f"created {x.version.created_at:%Y-%m-%d %H:%M:%S}") for x in (a, b)]
    return _page(f"{a.ref} vs {b.ref} — rankengine compare", f"{a.ref} → {b.ref}", meta,
                 sections, data)


def write_html(text: str, path: Path) -> Path:
    """Write through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# -- page ---------------------------------------------------------------------------------------


def _page(title: str, heading: str, meta: list[tuple[str, str]],
          sections: list[tuple[str, str, str]], data: dict[str, Any]) -> str:
    from rankengine.version import __version__

    payload = json.dumps(json_safe(data), default=str, allow_nan=False)
    payload = payload.replace("</", "<\\/")  # never closes the script element early
    nav = "".join(f'<a href="#{sid}">{escape(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(name)}</h2>{html}</section>'
                   for sid, name, html in sections)
    meta_html = "".join(f"<span><b>{escape(k)}</b> {escape(v)}</span>" for k, v in meta)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{escape(heading)}</h1><div class=\"meta\">{meta_html}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<footer>rankengine {escape(__version__)} · generated {generated}</footer>"
        f'<script type="application/json" id="report-data">{payload}</script>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )


def _skip(why: str) -> str:
    return f'<p class="note skipped">{escape(why)}</p>'


def _fmt(value: Any, metric: str = "") -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-" if value is None else escape(str(value))
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return "-"
    if metric in COUNTS or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4f}"


def _attr(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return repr(float(value))
    return ""


def _ordered_metrics(tables: list[dict[str, dict[str, Any]]],
                     catalog: dict[str, MetricInfo]) -> list[str]:
    # "undefined" maps metrics without a value to the reason: notes, not a column
    present = {k for table in tables for row in table.values() for k in row if k != UNDEFINED}
    return column_order(present, catalog)


def _header(metric: str, catalog: dict[str, MetricInfo]) -> str:
    info = column_info(metric, catalog)
    return f'<th title="{escape(info.description or metric)}">{escape(info.label)}</th>'


def _legend(catalog: dict[str, MetricInfo], present: set[str]) -> str:
    """The registered metrics shown, each with its description (from its plugin)."""
    bases = {base_metric(k, catalog) for k in present}
    return "; ".join(f"{i.label}: {i.description}" for m, i in catalog.items()
                     if m in bases and i.description)


# -- sections -----------------------------------------------------------------------------------


def _graph_section(report: VersionReport) -> str:
    if not report.graph:
        return _skip("the registry entry has no task graph")
    rows = "".join(
        f'<tr><td>{escape(t)}</td><td class="text">{escape(str(s.get("type", "")))}</td>'
        f'<td class="text">{escape(str(s.get("after") or "-"))}</td>'
        f'<td class="text">{escape(str(s.get("via") or "-"))}</td>'
        f'<td class="text">{escape(" | ".join(s.get("label") or []))}</td></tr>'
        for t, s in report.graph.items())
    return (f'<div class="pair"><div class="figure">{plots.graph_svg(report.graph)}</div>'
            f"<div><table><tr><th>task</th><th>type</th><th>after</th><th>via</th>"
            f"<th>label columns</th></tr>{rows}</table></div></div>")


def _metrics_section(report: VersionReport) -> str:
    if not report.metrics:
        return _skip("the registry entry holds no metrics")
    out = []
    shown: set[str] = set()
    order: list[str] = [s for s in ("test", "valid") if s in report.metrics]
    order += [s for s in report.metrics if s not in order]
    for split in order:
        table = report.metrics[split]
        cols = _ordered_metrics([table], report.catalog)
        shown.update(cols)
        head = "<tr><th>task</th>" + "".join(_header(c, report.catalog) for c in cols) + "</tr>"
        body = []
        for task, values in table.items():
            found = values.get(UNDEFINED)
            reasons: dict[str, Any] = found if isinstance(found, dict) else {}
            cells = []
            for c in cols:
                value = values.get(c)
                why = reasons.get(c)
                cls = ' class="undefined"' if why else ' class="missing"' if value is None \
                    else ""
                tip = f' title="undefined: {escape(str(why))}"' if why else ""
                cells.append(f'<td{cls}{tip} data-split="{escape(split)}" '
                             f'data-task="{escape(task)}" data-metric="{escape(c)}" '
                             f'data-value="{_attr(value)}">{_fmt(value, c)}</td>')
            body.append(f"<tr><td>{escape(task)}</td>{''.join(cells)}</tr>")
        best = f" (best epoch {report.best_epoch})" if report.best_epoch else ""
        out.append(f'<h3 id="metrics-{escape(split)}">{escape(split)} split{best}</h3>'
                   f'<div class="scroll"><table class="metrics" data-split="{escape(split)}">'
                   f"{head}{''.join(body)}</table></div>")
        notes = undefined_summary(table)
        if notes:
            items = "".join(f"<li>{escape(task)}: {escape(why)}</li>"
                            for task, why in notes.items())
            out.append(f'<div class="note undefined-metrics" data-split="{escape(split)}">'
                       f"Undefined on this split (-):<ul>{items}</ul></div>")
    legend = _legend(report.catalog, shown)
    out.append('<p class="note">|parent: on the rows where the parent task happened, with '
               "p(task | parent). oracle: the true probabilities of simulated data."
               + (f" {escape(legend)}." if legend else "") + "</p>")
    return "".join(out)


def _curves_section(report: VersionReport) -> str:
    curves = report.curves
    if curves is None:
        return _skip(report.notes.get("curves", "no curves were computed"))
    sampled = (f"a seeded random {curves.rows:,} of its {curves.rows_total:,} rows"
               if curves.rows < curves.rows_total else f"all {curves.rows:,} rows")
    out = [f'<p class="note">Scored at report time: the {escape(curves.split)} split '
           f"({escape(curves.source)}), {sampled}; the ROC curves' areas are over the rows "
           f"scored. Each table cuts the rows into {DECILES} equal-mass bins (deciles) of the "
           f"prediction (before the model's calibrator and after it, each by its own "
           f"predictions): mean prediction, mean label and their ratio (1 is calibrated; - "
           f"where a decile has no positive label).</p>"]
    for task, spec in report.graph.items():
        tc = curves.tasks.get(task)
        if tc is None:
            why = ("regression task: see its metrics in the table above"
                   if spec.get("type") == "regression" else "no positive and negative rows")
            out.append(f'<div class="figure" id="curves-{escape(task)}"><h3>{escape(task)}</h3>'
                       f"{_skip(why)}</div>")
            continue
        if tc.roc is None and tc.reliability is None:
            out.append(f'<div class="figure" id="curves-{escape(task)}"><h3>{escape(task)}</h3>'
                       f'{_skip("this split has no positive (or no negative) rows")}</div>')
            continue
        svg = plots.curves_figure(task, tc.roc, tc.roc_cond, tc.reliability,
                                  tc.reliability_cond, spec.get("after"),
                                  tc.reliability_uncalibrated)
        area = _attr(tc.roc.auc) if tc.roc else ""
        out.append(f'<div class="figure task-curves" id="curves-{escape(task)}" '
                   f'data-task="{escape(task)}" data-roc-area="{area}">{svg}'
                   f"{_deciles_table(task, tc)}</div>")
    return "".join(out)


def _deciles_table(task: str, tc: TaskCurves) -> str:
    """Calibration per decile of the prediction: mean prediction, mean label and their ratio,
    before the model's calibrator and after (each set cut by its own predictions)."""
    stages = [(s, name, r) for s, name, r in (
        ("before", "before calibration", tc.deciles_uncalibrated),
        ("after", "after calibration" if tc.deciles_uncalibrated else "model (no calibrator)",
         tc.deciles)) if r is not None]
    if not stages:
        return ""
    rows = max(len(r.rows) for _, _, r in stages)
    top = "".join(f'<th colspan="3">{escape(name)}</th>' for _, name, _ in stages)
    sub = "<th>mean p</th><th>mean label</th><th>p / label</th>" * len(stages)
    body = []
    for d in range(rows):
        cells = []
        for stage, _, r in stages:
            values = ((r.predicted[d], r.observed[d], r.ratios[d]) if d < len(r.rows)
                      else (None, None, None))
            for column, value in zip(("predicted", "observed", "ratio"), values, strict=True):
                tip = ' title="no positive label in this decile"' \
                    if column == "ratio" and value is None and d < len(r.rows) else ""
                cells.append(f'<td{tip} data-stage="{stage}" data-column="{column}" '
                             f'data-value="{_attr(value)}">{_fmt(value)}</td>')
        body.append(f'<tr data-decile="{d + 1}"><td>{d + 1}</td>{"".join(cells)}</tr>')
    worst = "".join(
        f'<td colspan="3" data-stage="{stage}" data-worst="{_attr(_worst(r))}">'
        f"{_fmt(_worst(r))}</td>" for stage, _, r in stages)
    return (f'<table class="deciles" id="deciles-{escape(task)}" data-task="{escape(task)}">'
            f'<tr><th rowspan="2">decile of p</th>{top}</tr><tr>{sub}</tr>{"".join(body)}'
            f'<tr class="worst"><td title="the decile calibration metric: deciles without a '
            f'positive label are skipped">largest |p / label - 1|</td>{worst}</tr></table>')


def _worst(r: Reliability) -> float | None:
    gaps = [abs(x - 1.0) for x in r.ratios if x is not None]
    return max(gaps) if gaps else None


def _training_section(report: VersionReport, tasks: list[str]) -> str:
    history = report.history
    if not history:
        return _skip(report.notes.get("training", "no per-epoch history"))
    out = [f'<div class="figure" id="loss-curves">'
           f"{plots.loss_figure(history, tasks, report.best_epoch)}</div>"]
    if any(h.get("loss_weights") for h in history):
        out.append(f'<div class="figure" id="loss-weights">'
                   f"{plots.weights_figure(history, tasks)}</div>")
    else:
        out.append(_skip("no loss weights recorded per epoch"))
    head = ("<tr><th>epoch</th><th>train loss</th><th>valid loss</th>"
            + "".join(f"<th>w({escape(t)})</th>" for t in tasks) + "</tr>")
    rows = []
    for h in history:
        weights = h.get("loss_weights") or {}
        rows.append(
            f'<tr data-epoch="{h.get("epoch")}"><td>{h.get("epoch")}</td>'
            f'<td>{_fmt(h.get("train_loss_total"))}</td>'
            f'<td>{_fmt((h.get("valid_loss") or {}).get("total"))}</td>'
            + "".join(f"<td>{_fmt(weights.get(t))}</td>" for t in tasks) + "</tr>")
    out.append(f'<div class="scroll"><table id="history-table">{head}{"".join(rows)}</table>'
               "</div>")
    return "".join(out)


def _gates_section(report: VersionReport) -> str:
    stats = report.gate_stats
    if not stats:
        return _skip("no gate statistics recorded (shared-bottom backbone, or a model trained "
                     "before rankengine recorded them)")
    tasks, experts = [], []
    for task, entry in stats.items():
        if not isinstance(entry, dict) or len(entry.get("experts", [])) != len(
                entry.get("weights", [])):
            continue
        tasks.append(task)
        experts += [str(e) for e in entry["experts"] if str(e) not in experts]
    if not tasks:
        return _skip("gate statistics are present but not in the expected "
                     "{task: {experts: [...], weights: [...]}} form")
    grid = np.full((len(tasks), len(experts)), np.nan)
    for r, task in enumerate(tasks):
        entry = stats[task]
        for e, w in zip(entry["experts"], entry["weights"], strict=True):
            if isinstance(w, int | float):
                grid[r, experts.index(str(e))] = float(w)
    cells = "".join(
        f'<tr><td>{escape(t)}</td>' + "".join(
            f'<td data-task="{escape(t)}" data-expert="{escape(e)}" '
            f'data-value="{_attr(grid[r, c])}">{_fmt(grid[r, c])}</td>'
            for c, e in enumerate(experts)) + "</tr>"
        for r, t in enumerate(tasks))
    table = ('<div class="scroll"><table id="gate-table"><tr><th>task</th>'
             + "".join(f"<th>{escape(e)}</th>" for e in experts) + f"</tr>{cells}</table></div>")
    return (f'<div class="figure" id="gate-heatmap">{plots.gate_figure(tasks, experts, grid)}'
            f"</div>{table}{_load_table(stats, tasks, experts)}")


def _load_table(stats: dict[str, Any], tasks: list[str], experts: list[str]) -> str:
    """Sparse gates: the share of rows each task's gate routed to each expert."""
    loaded = [t for t in tasks if isinstance(stats[t].get("load"), list) and
              len(stats[t]["load"]) == len(stats[t]["experts"])]
    if not loaded:
        return ""
    rows = []
    for task in loaded:
        share = dict(zip(map(str, stats[task]["experts"]), stats[task]["load"], strict=True))
        rows.append(f"<tr><td>{escape(task)}</td>" + "".join(
            f'<td data-load-task="{escape(task)}" data-load-expert="{escape(e)}" '
            f'data-value="{_attr(share.get(e, math.nan))}">{_fmt(share.get(e, math.nan))}</td>'
            for e in experts) + "</tr>")
    return ('<p class="note">Sparse gates: the share of rows each gate routed to each expert '
            '(its load).</p><div class="scroll"><table id="load-table"><tr><th>task</th>'
            + "".join(f"<th>{escape(e)}</th>" for e in experts) + "</tr>" + "".join(rows)
            + "</table></div>")


def _fusion_section(report: VersionReport) -> str:
    search = report.fusion_search
    if not search:
        return _skip("no fusion weight search was run for this version")
    points = [p for p in search.get("points", []) if isinstance(p, dict)]
    recommended = search.get("recommended")
    recommended = recommended if isinstance(recommended, int) else None
    current = search.get("current") if isinstance(search.get("current"), dict) else None
    label = str(search.get("metric") or "")
    names = _ordered_keys([p.get("metrics") or {} for p in points])
    weight_names = _ordered_keys([p.get("weights") or {} for p in points])
    # Keys are task names (a ranking metric per task, higher is better) or TASK.METRIC.
    ranks = {}
    for m in names:
        info = column_info(m.rsplit(".", 1)[-1], report.catalog)
        ranks[m] = info if info.direction != "neutral" else MetricInfo(m, m, "higher")
    front = pareto_front(points, names, ranks)
    out = [f'<p class="note">{len(points)} weightings stored'
           + (f" of {search['evaluated']:,} evaluated" if isinstance(search.get("evaluated"),
                                                                    int) else "")
           + (f", scored by {escape(label)}" if label else "")
           + f"; {len(front)} on the Pareto front.</p>"]
    if len(names) >= 2:
        shown = names[:2]
        if len(names) > 2:
            out.append(f'<p class="note">The plot shows {escape(shown[0])} and '
                       f"{escape(shown[1])}; the front is over all {len(names)} metrics.</p>")
        out.append('<div class="figure" id="pareto">'
                   + plots.pareto_figure(points, shown[0], shown[1], front, recommended,
                                         current=current, label=label,
                                         joined=len(names) == 2) + "</div>")
    else:
        out.append(_skip("fewer than two metrics per candidate: no front to draw"))
    head = ("<tr><th>#</th>" + "".join(f"<th>w({escape(w)})</th>" for w in weight_names)
            + "".join(f"<th>{escape(m)}</th>" for m in names) + "<th></th></tr>")

    def row(key: str, p: dict[str, Any], mark: str, cls: str) -> str:
        return (f'<tr{cls} data-point="{key}"><td>{key}</td>'
                + "".join(f"<td>{_fmt((p.get('weights') or {}).get(w))}</td>"
                          for w in weight_names)
                + "".join(f"<td>{_fmt((p.get('metrics') or {}).get(m))}</td>" for m in names)
                + f"<td>{mark}</td></tr>")

    rows = [row("current", current, "current weights", "")] if current else []
    for i, p in enumerate(points):
        mark = "recommended" if i == recommended else ("front" if i in front else "")
        rows.append(row(str(i), p, mark, ' class="better"' if i == recommended else ""))
    out.append(f'<div class="scroll"><table id="fusion-table">{head}{"".join(rows)}</table></div>')
    return "".join(out)


def pareto_front(points: list[dict[str, Any]], names: list[str],
                 ranks: dict[str, MetricInfo]) -> list[int]:
    """Indices of the candidates no other candidate beats on every metric.

    ``ranks`` says how each metric ranks (``higher`` where it is missing or ``neutral``).
    """
    def score(p: dict[str, Any], m: str) -> float:
        value = (p.get("metrics") or {}).get(m)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return -math.inf
        info = ranks.get(m)
        if info is None or info.direction in ("higher", "neutral"):
            return float(value)
        if info.direction == "target" and info.target is not None:
            return -abs(value - info.target)
        return -float(value)

    scored = [[score(p, m) for m in names] for p in points]
    front = []
    for i, si in enumerate(scored):
        dominated = any(all(x >= y for x, y in zip(sj, si, strict=True)) and sj != si
                        for j, sj in enumerate(scored) if j != i)
        if not dominated:
            front.append(i)
    return front


def _ordered_keys(dicts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for d in dicts:
        out += [k for k in d if k not in out]
    return out


def _provenance_section(report: VersionReport) -> str:
    v = report.version
    fp = v.data_fingerprint or {}
    rows = fp.get("rows", {})
    sources = fp.get("sources", {})
    out = ["<h3>data fingerprint</h3>"]
    if sources:
        body = "".join(
            f'<tr data-split="{escape(split)}"><td>{escape(split)}</td>'
            f'<td class="text">{escape(str(s.get("path", "")))}</td>'
            f'<td>{_fmt(s.get("files"))}</td><td>{_fmt(s.get("bytes"))}</td>'
            f'<td>{_fmt(rows.get(split))}</td>'
            f'<td class="text" data-sha="{escape(str(s.get("schema_sha256", "")))}">'
            f'{escape(str(s.get("schema_sha256", ""))[:16])}…</td></tr>'
            for split, s in sources.items())
        out.append('<table id="fingerprint"><tr><th>split</th><th>path</th><th>files</th>'
                   f"<th>bytes</th><th>rows used</th><th>schema sha256</th></tr>{body}</table>")
    else:
        out.append(_skip("no data fingerprint recorded"))
    plugin_rows = "".join(f'<tr data-plugin="{escape(k)}"><td>{escape(k)}</td>'
                          f'<td class="text">{escape(str(ver))}</td></tr>'
                          for k, ver in sorted(v.plugins.items()))
    out.append(f'<h3>plugins</h3><table id="plugins"><tr><th>plugin</th><th>version</th></tr>'
               f"{plugin_rows}</table>")
    reports = report.artifact_metrics.get("label_reports") or {}
    if reports:
        body = "".join(
            f"<tr><td>{escape(s)}</td><td>{escape(str(r.get('policy')))}</td>"
            f"<td>{_fmt(r.get('rows_in'))}</td>"
            f"<td class=\"text\">{escape(json.dumps(r.get('inconsistent') or {}))}</td>"
            f"<td>{_fmt(r.get('rows_dropped'))}</td></tr>" for s, r in reports.items())
        out.append("<h3>label reports</h3><table><tr><th>split</th><th>policy</th>"
                   "<th>rows in</th><th>inconsistent</th><th>rows dropped</th></tr>"
                   f"{body}</table>")
    out.append(f"<h3>artifact</h3><table><tr><td>uri</td><td class=\"text\">"
               f"{escape(str(v.artifact_uri))}</td></tr><tr><td>manifest sha256</td>"
               f"<td class=\"text\">{escape(str(v.artifact_sha256))}</td></tr><tr><td>size</td>"
               f"<td>{_fmt(v.artifact_size)} bytes</td></tr></table>")
    out.append("<details><summary>resolved config</summary><pre>"
               f"{escape(json.dumps(v.config, indent=2, default=str))}</pre></details>")
    return "".join(out)


# -- compare ------------------------------------------------------------------------------------


def _compare_rows(cmp: CompareReport) -> list[dict[str, Any]]:
    rows = []
    splits: list[str] = [s for s in ("test", "valid") if s in cmp.a.metrics or s in cmp.b.metrics]
    splits += sorted((set(cmp.a.metrics) | set(cmp.b.metrics)) - set(splits))
    for split in splits:
        ta, tb = cmp.a.metrics.get(split, {}), cmp.b.metrics.get(split, {})
        tasks = list(dict.fromkeys([*ta, *tb]))
        for metric in _ordered_metrics([ta, tb], cmp.catalog):
            info = column_info(metric, cmp.catalog)
            for task in tasks:
                x, y = ta.get(task, {}).get(metric), tb.get(task, {}).get(metric)
                if x is None and y is None:
                    continue
                delta = y - x if isinstance(x, int | float) and isinstance(y, int | float) \
                    else None
                rows.append({"split": split, "task": task, "metric": metric, "a": x, "b": y,
                             "delta": delta, "direction": info.direction,
                             "target": info.target, "label": info.label,
                             "verdict": info.verdict(x, y)})
    return rows


def _compare_metrics(cmp: CompareReport) -> str:
    rows = _compare_rows(cmp)
    if not rows:
        return _skip("neither version holds metrics")
    out = []
    for split in dict.fromkeys(r["split"] for r in rows):
        body = []
        for r in (r for r in rows if r["split"] == split):
            cls = {"better": ' class="better"', "worse": ' class="worse"'}.get(r["verdict"], "")
            arrow = {"better": " ✔", "worse": " ✘"}.get(r["verdict"], "")
            info = column_info(r["metric"], cmp.catalog)
            head, tip, goal = info.label, info.description or r["metric"], info.goal
            base = base_metric(r["metric"], cmp.catalog)
            delta = "-" if r["delta"] is None else f"{r['delta']:+.4f}"
            if r["metric"] in COUNTS and r["delta"] is not None:
                delta = f"{r['delta']:+,.0f}"
            body.append(
                f'<tr data-split="{escape(split)}" data-task="{escape(r["task"])}" '
                f'data-metric="{escape(r["metric"])}" data-verdict="{r["verdict"]}">'
                f'<td>{escape(r["task"])}</td><td title="{escape(tip)} ({escape(base)})">'
                f"{escape(head)}</td><td>{_fmt(r['a'], r['metric'])}</td>"
                f"<td>{_fmt(r['b'], r['metric'])}</td>"
                f'<td{cls} data-delta="{_attr(r["delta"])}">{delta}{arrow}</td>'
                f'<td class="note">{goal}</td></tr>')
        out.append(f"<h3>{escape(split)} split</h3><div class=\"scroll\"><table "
                   f'class="compare" data-split="{escape(split)}"><tr><th>task</th>'
                   f"<th>metric</th><th>{escape(cmp.a.ref)}</th><th>{escape(cmp.b.ref)}</th>"
                   f"<th>Δ (B - A)</th><th></th></tr>{''.join(body)}</table></div>")
    counts = {k: sum(r["verdict"] == k for r in rows) for k in ("better", "worse")}
    out.insert(0, f'<p id="compare-summary" data-better="{counts["better"]}" '
                  f'data-worse="{counts["worse"]}">{escape(cmp.b.ref)} vs {escape(cmp.a.ref)}: '
                  f'<span class="better">{counts["better"]} better</span>, '
                  f'<span class="worse">{counts["worse"]} worse</span> '
                  f"({escape(_directions_in_words(cmp, rows))}).</p>")
    out[1:1] = [f'<p class="note">{escape(why)}</p>' for why in cmp.notes.values()]
    return "".join(out)


def _directions_in_words(cmp: CompareReport, rows: list[dict[str, Any]]) -> str:
    """How the compared metrics rank, e.g. ``AUC / GAUC: higher is better; ...``."""
    bases = {base_metric(r["metric"], cmp.catalog) for r in rows}
    goals: dict[str, list[str]] = {}
    for name, info in cmp.catalog.items():
        if name in bases:
            goals.setdefault(info.goal, []).append(info.label)
    words = [f"{' / '.join(labels)}: {goal}" for goal, labels in goals.items()]
    return "; ".join([*words, "counts, oracles and unregistered metrics are not ranked"])


def _compare_training(a: VersionReport, b: VersionReport) -> str:
    if not a.history and not b.history:
        return _skip("neither version has a per-epoch history")
    facts = "".join(
        f"<tr><td>{escape(x.ref)}</td><td>{_fmt(x.artifact_metrics.get('epochs_run'))}</td>"
        f"<td>{_fmt(x.best_epoch)}</td><td>{_fmt(x.artifact_metrics.get('train_seconds'))}</td>"
        f"<td>{_fmt(x.artifact_metrics.get('samples_per_second'))}</td></tr>" for x in (a, b))
    return (f'<div class="figure" id="compare-loss">'
            f"{plots.compare_loss_figure((a.ref, a.history), (b.ref, b.history))}</div>"
            "<table><tr><th>version</th><th>epochs</th><th>best epoch</th><th>seconds</th>"
            f"<th>samples/s</th></tr>{facts}</table>")


def _compare_graphs(a: VersionReport, b: VersionReport) -> str:
    same = a.graph == b.graph
    note = ('<p class="note">same task graph</p>' if same
            else '<p class="note"><b>the task graphs differ</b></p>')
    return (f'{note}<div class="pair"><div><h3>{escape(a.ref)}</h3>'
            f"{plots.graph_svg(a.graph, 'graph-a') if a.graph else _skip('no graph')}</div>"
            f"<div><h3>{escape(b.ref)}</h3>"
            f"{plots.graph_svg(b.graph, 'graph-b') if b.graph else _skip('no graph')}</div></div>")


def _compare_config(a: VersionReport, b: VersionReport) -> str:
    def table(title: str, diff: dict[str, tuple[Any, Any]], tid: str) -> str:
        if not diff:
            return f"<h3>{escape(title)}</h3>{_skip('identical')}"
        body = "".join(f'<tr data-key="{escape(k)}"><td class="text">{escape(k)}</td>'
                       f'<td class="text">{escape(json.dumps(x, default=str))}</td>'
                       f'<td class="text">{escape(json.dumps(y, default=str))}</td></tr>'
                       for k, (x, y) in diff.items())
        return (f'<h3>{escape(title)}</h3><div class="scroll"><table id="{tid}"><tr><th>key</th>'
                f"<th>{escape(a.ref)}</th><th>{escape(b.ref)}</th></tr>{body}</table></div>")

    va, vb = a.version, b.version
    return (table("config", dict_diff(flat_keys(va.config), flat_keys(vb.config)), "config-diff")
            + table("plugins", dict_diff(va.plugins, vb.plugins), "plugin-diff")
            + table("data fingerprint", dict_diff(flat_keys(va.data_fingerprint),
                                                 flat_keys(vb.data_fingerprint)), "data-diff"))
