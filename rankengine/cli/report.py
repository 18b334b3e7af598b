"""``rankengine report``: write a version's HTML report, or two versions side by side."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rankengine.cli.common import URL_HELP, device_option, open_store
from rankengine.errors import RankEngineError
from rankengine.registry.store import RegistryStore
from rankengine.report.limits import MAX_ROWS

if TYPE_CHECKING:
    import torch


@click.command()
@click.argument("ref", required=False)
@click.option("--compare", nargs=2, default=None, metavar="A B",
              help="put two versions (NAME@ALIAS or NAME/VERSION) side by side")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file to write (default: report-NAME-VERSION.html, or "
                   "compare-NAME-A-vs-B.html)")
@click.option("--registry", "--url", "url", default=None, help=URL_HELP)
@click.option("--max-rows", type=click.IntRange(min=1), default=MAX_ROWS, show_default=True,
              help="rows of the evaluation split scored for the ROC and reliability curves")
@device_option
def report(ref: str | None, compare: tuple[str, str] | None, output: Path | None,
           url: str | None, max_rows: int, device: torch.device) -> None:
    """Write a self-contained HTML report of REF (NAME@ALIAS, NAME/VERSION or NAME).

    With --compare A B: metric deltas of B against A per split, task and metric (better / worse
    by each metric's direction), the loss curves of both and their config differences.
    """
    from rankengine.report import build_compare, build_report
    from rankengine.report.html import write_html

    if (ref is None) == (compare is None):
        raise click.UsageError("give either REF or --compare A B")
    if output is not None and output.name in ("", ".", ".."):  # click turns '' into '.'
        raise click.BadParameter("expected an HTML file name", param_hint="-o")
    store = open_store(url)
    if compare is not None:
        a, b = (store.resolve(r) for r in compare)  # fail fast on an unknown reference
        text = build_compare(store, *compare)
        path = output or Path(f"compare-{a.model}-{a.version}-vs-{b.model}-{b.version}.html")
    else:
        assert ref is not None
        version = store.resolve(ref)
        text = build_report(store, ref, max_rows=max_rows, device=device)
        path = output or Path(f"report-{version.model}-{version.version}.html")
    try:
        written = write_html(text, path)
    except OSError as exc:  # a parent that is a file, no permission, a full disk
        from rankengine.files import os_reason

        raise RankEngineError(f"{path}: cannot write the report: {os_reason(exc)}") \
            from None
    click.echo(f"wrote {written}")


def open_report(store: RegistryStore, ref: str) -> Path:
    """Write ``ref``'s report to a temporary file, print its path, and open it if we can."""
    from rankengine.report import build_report
    from rankengine.report.html import write_html

    version = store.resolve(ref)
    fd, name = tempfile.mkstemp(prefix=f"rankengine-{version.model}-{version.version}-",
                                suffix=".html")
    os.close(fd)
    path = write_html(build_report(store, ref), Path(name))
    click.echo(f"report: {path}")
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless:
        click.echo("no display to open a browser on; open the file above yourself")
        return path
    try:
        # Waiting for the opener (it hands off to the browser and exits) reports its failure.
        failed = click.launch(str(path), wait=True)
    except OSError as exc:
        failed, why = 1, str(exc)
    else:
        why = f"the opener exited with status {failed}"
    if failed:
        click.echo(f"could not open a browser ({why}); open the file above yourself")
    return path


__all__ = ["open_report", "report"]
