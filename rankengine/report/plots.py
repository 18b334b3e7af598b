"""Figures as inline SVG: matplotlib for plots, plain SVG for the task graph.

Figures are built as ``matplotlib.figure.Figure`` objects, never through pyplot, so no GUI
backend is chosen or needed (works on headless machines) and no global figure state is kept.
"""

from __future__ import annotations

import io
import itertools
import math
from html import escape
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rankengine.report.build import Curve, Reliability

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
STYLE: Any = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
              "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
              "legend.fontsize": 8, "legend.frameon": False}
_salt = itertools.count()


def to_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element (no XML prolog, ids unique across the page)."""
    buffer = io.StringIO()
    # Text as <text> (the browser's sans-serif), not glyph paths: smaller, faster, selectable.
    # ("none" is matplotlib's own value for that setting, not a component's name.)
    with rc_context({"svg.hashsalt": f"re{next(_salt)}", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    start = text.index("<svg")
    return text[start:].replace("<metadata>", "<!--", 1).replace("</metadata>", "-->", 1)


def _colors(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def curves_figure(task: str, roc: Curve | None, roc_cond: Curve | None,
                  rel: Reliability | None, rel_cond: Reliability | None, parent: str | None,
                  rel_raw: Reliability | None = None) -> str:
    """ROC (entire space and given the parent) beside the reliability diagram (with the
    model's own predictions before its calibrator, ``rel_raw``, when it has one)."""
    with rc_context(STYLE):
        fig = Figure(figsize=(8.4, 3.4))
        ax_roc, ax_rel = fig.subplots(1, 2)
        ax_roc.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":")
        if roc is not None:
            ax_roc.plot(roc.fpr, roc.tpr, color=PALETTE[0], lw=1.6,
                        label=f"entire space  AUC {roc.auc:.4f}")
        if roc_cond is not None:
            ax_roc.plot(roc_cond.fpr, roc_cond.tpr, color=PALETTE[1], lw=1.4, ls="--",
                        label=f"given {parent}  AUC {roc_cond.auc:.4f}")
        ax_roc.set(xlabel="false positive rate", ylabel="true positive rate",
                   title=f"{task}: ROC", xlim=(0, 1), ylim=(0, 1.01))
        ax_roc.set_aspect("equal")
        ax_roc.legend(loc="lower right")
        top = 0.0
        for r, color, label, marker, style in (
                (rel_raw, "#999", "before calibration", "^", "--"),
                (rel, PALETTE[0], "entire space", "o", "-"),
                (rel_cond, PALETTE[1], f"given {parent}", "s", "-")):
            if r is None:
                continue
            ax_rel.plot(r.predicted, r.observed, marker=marker, ms=3.5, lw=1.2, color=color,
                        ls=style, label=f"{label}  mean p / rate {r.calibration:.3f}")
            top = max(top, *r.predicted, *r.observed)
        top = min(1.0, top * 1.08) if top > 0 else 1.0
        ax_rel.plot([0, top], [0, top], color="#999", lw=0.8, ls=":", label="calibrated")
        ax_rel.set(xlabel="mean prediction (equal-count bins)", ylabel="observed rate",
                   title=f"{task}: reliability", xlim=(0, top), ylim=(0, top))
        ax_rel.legend(loc="upper left")
        fig.tight_layout()
    return to_svg(fig)


def loss_figure(history: list[dict[str, Any]], tasks: list[str], best_epoch: int | None) -> str:
    """Train and validation loss per task per epoch (one panel per task, plus the total)."""
    epochs = [int(h["epoch"]) for h in history]
    panels = [*tasks, "total"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    with rc_context(STYLE):
        fig = Figure(figsize=(2.9 * cols, 2.3 * rows))
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        for ax, task in zip(axes, panels, strict=False):
            if task == "total":
                train = [h.get("train_loss_total") for h in history]
            else:
                train = [h.get("train_loss", {}).get(task) for h in history]
            valid = [h.get("valid_loss", {}).get(task) for h in history]
            ax.plot(epochs, _nan(train), marker="o", ms=3, color=PALETTE[0], label="train")
            ax.plot(epochs, _nan(valid), marker="s", ms=3, color=PALETTE[1], label="valid")
            if best_epoch:
                ax.axvline(best_epoch, color="#999", lw=0.8, ls=":")
            ax.set_title(task if task != "total" else "total (weighted)")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].legend()
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        fig.tight_layout()
    return to_svg(fig)


def weights_figure(history: list[dict[str, Any]], tasks: list[str]) -> str:
    """The loss-weighting scheme's per-task weight at the end of every epoch."""
    epochs = [int(h["epoch"]) for h in history]
    colors = _colors(tasks)
    with rc_context(STYLE):
        fig = Figure(figsize=(5.6, 2.8))
        ax = fig.subplots()
        for task in tasks:
            ax.plot(epochs, _nan([h.get("loss_weights", {}).get(task) for h in history]),
                    marker="o", ms=3, color=colors[task], label=task)
        ax.set(xlabel="epoch", ylabel="loss weight", title="loss weights over time")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
    return to_svg(fig)


def gate_figure(tasks: list[str], experts: list[str], weights: np.ndarray) -> str:
    """Heatmap of the mean gate weight per task (rows) and expert (columns)."""
    with rc_context(STYLE):
        fig = Figure(figsize=(max(3.5, 0.75 * len(experts) + 2.0),
                                  max(2.0, 0.45 * len(tasks) + 1.2)))
        ax = fig.subplots()
        masked = np.ma.masked_invalid(weights)
        image = ax.imshow(masked, cmap="Blues", vmin=0.0, vmax=max(1e-9, float(np.nanmax(
            weights)) if np.isfinite(weights).any() else 1.0), aspect="auto")
        ax.set_xticks(range(len(experts)), experts, rotation=30, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        ax.grid(False)
        for (r, c), value in np.ndenumerate(weights):
            if math.isfinite(value):
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value > 0.6 * float(np.nanmax(weights)) else "#222")
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label="mean gate weight")
        ax.set_title("mean gate weight per task and expert")
        fig.tight_layout()
    return to_svg(fig)


def pareto_figure(points: list[dict[str, Any]], x: str, y: str, front: list[int],
                  recommended: int | None, *, current: dict[str, Any] | None = None,
                  label: str = "", joined: bool = True) -> str:
    """Fusion candidates on two metrics, the non-dominated front, the pick and today's weights.

    ``joined``: the front is over these two metrics only, so it is drawn as a line.
    """
    xs = _nan([p.get("metrics", {}).get(x) for p in points])
    ys = _nan([p.get("metrics", {}).get(y) for p in points])
    with rc_context(STYLE):
        fig = Figure(figsize=(5.4, 3.8))
        ax = fig.subplots()
        ax.scatter(xs, ys, s=12, color="#bbb", label="candidates")
        ordered = sorted(front, key=lambda i: xs[i])
        ax.plot([xs[i] for i in ordered], [ys[i] for i in ordered], marker="o", ms=4,
                ls="-" if joined else "", color=PALETTE[0],  # "": markers only
                label="Pareto front" if joined else "Pareto front (all metrics)")
        if current and isinstance(current.get("metrics"), dict):
            cx, cy = _nan([current["metrics"].get(x), current["metrics"].get(y)])
            ax.scatter([cx], [cy], s=60, marker="D", color=PALETTE[2], zorder=3,
                       label="current weights")
        if recommended is not None and 0 <= recommended < len(points):
            ax.scatter([xs[recommended]], [ys[recommended]], s=110, marker="*",
                       color=PALETTE[1], zorder=4, label="recommended")
        suffix = f" {label}" if label else ""
        ax.set(xlabel=f"{x}{suffix}", ylabel=f"{y}{suffix}", title="fusion weight search")
        ax.legend()
        fig.tight_layout()
    return to_svg(fig)


def compare_loss_figure(a: tuple[str, list[dict[str, Any]]],
                        b: tuple[str, list[dict[str, Any]]]) -> str:
    """Total train and validation loss per epoch of two versions."""
    with rc_context(STYLE):
        fig = Figure(figsize=(6.0, 3.0))
        ax = fig.subplots()
        for (ref, history), color in ((a, PALETTE[0]), (b, PALETTE[1])):
            epochs = [int(h["epoch"]) for h in history]
            ax.plot(epochs, _nan([h.get("train_loss_total") for h in history]), color=color,
                    marker="o", ms=3, label=f"{ref} train")
            ax.plot(epochs, _nan([h.get("valid_loss", {}).get("total") for h in history]),
                    color=color, marker="s", ms=3, ls="--", label=f"{ref} valid")
        ax.set(xlabel="epoch", ylabel="weighted total loss", title="loss per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
    return to_svg(fig)


def _nan(values: list[Any]) -> list[float]:
    return [float(v) if isinstance(v, int | float) else float("nan") for v in values]


# -- the task graph --------------------------------------------------------------------------

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 132, 46, 36, 64, 20


def graph_svg(graph: dict[str, dict[str, Any]], svg_id: str = "task-graph") -> str:
    """Tasks as boxes in layers by depth; ``after`` edges solid, ESM² ``via`` edges dashed.

    ``svg_id`` prefixes every id inside, so two graphs can share a page.
    """
    depth: dict[str, int] = {}

    def level(name: str, seen: tuple[str, ...] = ()) -> int:
        if name not in depth:
            parent = str(graph[name].get("after"))
            ok = parent in graph and parent not in seen
            depth[name] = level(parent, (*seen, name)) + 1 if ok else 0
        return depth[name]

    for name in graph:
        level(name)
    layers: dict[int, list[str]] = {}
    for name in graph:  # declaration (topological) order within a layer
        layers.setdefault(depth[name], []).append(name)
    widest = max((len(v) for v in layers.values()), default=1)
    width = max(360, PAD * 2 + widest * NODE_W + (widest - 1) * GAP_X)
    height = PAD * 2 + len(layers) * NODE_H + (len(layers) - 1) * GAP_Y + GAP_Y // 2 + 34
    pos: dict[str, tuple[float, float]] = {}
    for d, names in layers.items():
        row_w = len(names) * NODE_W + (len(names) - 1) * GAP_X
        x0 = (width - row_w) / 2
        for i, name in enumerate(names):
            pos[name] = (x0 + i * (NODE_W + GAP_X), PAD + d * (NODE_H + GAP_Y))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{svg_id}" class="task-graph" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="task graph">',
        f'<defs><marker id="{svg_id}-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#555"/></marker>'
        f'<marker id="{svg_id}-arrow-via" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#c0392b"/></marker></defs>',
    ]
    for name, spec in graph.items():
        parent = spec.get("after")
        if parent in pos:
            (px, py), (cx, cy) = pos[parent], pos[name]
            x1, y1 = px + NODE_W / 2, py + NODE_H
            x2, y2 = cx + NODE_W / 2, cy
            mid = (y1 + y2) / 2
            parts.append(
                f'<path class="edge edge-after" data-from="{escape(parent)}" '
                f'data-to="{escape(name)}" d="M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} '
                f'{x2:.1f},{mid:.1f} {x2:.1f},{y2 - 1:.1f}" fill="none" stroke="#555" '
                f'stroke-width="1.6" marker-end="url(#{svg_id}-arrow)"/>')
    for name, spec in graph.items():
        via = spec.get("via")
        if via in pos:
            (vx, vy), (cx, cy) = pos[via], pos[name]
            left = vx < cx
            x1 = vx + NODE_W * (0.78 if left else 0.22)
            x2 = cx + NODE_W * (0.22 if left else 0.78)
            y1, y2 = vy + NODE_H, cy + NODE_H + 1
            bend = max(y1, y2) + GAP_Y * 0.5
            parts.append(
                f'<path class="edge edge-via" data-from="{escape(via)}" data-to="{escape(name)}" '
                f'd="M{x1:.1f},{y1:.1f} C{x1:.1f},{bend:.1f} {x2:.1f},{bend:.1f} {x2:.1f},'
                f'{y2:.1f}" fill="none" stroke="#c0392b" stroke-width="1.4" '
                f'stroke-dasharray="5 4" marker-end="url(#{svg_id}-arrow-via)"/>')
    for name, spec in graph.items():
        x, y = pos[name]
        regression = spec.get("type") == "regression"
        label = spec.get("label") or []
        label_text = " | ".join(label) if isinstance(label, list) else str(label)
        fill, stroke = ("#fdf2e9", "#e67e22") if regression else ("#eaf2fb", "#2e86c1")
        parts.append(
            f'<g class="node" id="{svg_id}-node-{escape(name)}" data-task="{escape(name)}" '
            f'data-type="{escape(str(spec.get("type", "binary")))}">'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="8" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
            f'<text x="{x + NODE_W / 2:.1f}" y="{y + 19:.1f}" text-anchor="middle" '
            f'font-size="13" font-weight="600" fill="#1b2631">{escape(name)}</text>'
            f'<text x="{x + NODE_W / 2:.1f}" y="{y + 35:.1f}" text-anchor="middle" '
            f'font-size="10" fill="#566573">{escape(_clip(label_text, 22))}'
            f'{" (value)" if regression else ""}</text></g>')
    ly = height - 14
    parts.append(
        f'<g class="legend" font-size="10" fill="#444">'
        f'<line x1="{PAD}" y1="{ly}" x2="{PAD + 26}" y2="{ly}" stroke="#555" stroke-width="1.6"/>'
        f'<text x="{PAD + 32}" y="{ly + 3}">after (parent → child)</text>'
        f'<line x1="{PAD + 170}" y1="{ly}" x2="{PAD + 196}" y2="{ly}" stroke="#c0392b" '
        f'stroke-width="1.4" stroke-dasharray="5 4"/>'
        f'<text x="{PAD + 202}" y="{ly + 3}">via (ESM² branch)</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
