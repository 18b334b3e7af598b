"""HTML reports of registered versions: one version in depth, or two side by side.

``rankengine report NAME@ALIAS`` and ``rankengine report --compare A B`` (see
:mod:`rankengine.report.cli`); :func:`build_report` / :func:`build_compare` return the page as a
string for other callers. Imports stay lazy: the command line loads this package on every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from rankengine.registry.store import RegistryStore

from rankengine.report.limits import MAX_ROWS


def build_report(store: RegistryStore, ref: str, *, max_rows: int = MAX_ROWS,
                 device: torch.device | None = None) -> str:
    """The self-contained HTML report of one version."""
    from rankengine.report.build import gather_report
    from rankengine.report.html import render_report

    return render_report(gather_report(store, ref, max_rows=max_rows, device=device))


def build_compare(store: RegistryStore, a: str, b: str) -> str:
    """The self-contained HTML page putting versions ``a`` and ``b`` side by side."""
    from rankengine.report.build import gather_compare
    from rankengine.report.html import render_compare

    return render_compare(gather_compare(store, a, b))


__all__ = ["MAX_ROWS", "build_compare", "build_report"]
