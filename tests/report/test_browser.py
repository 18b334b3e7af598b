"""The reports in a real headless browser (Debian's chromium): they run, fetch nothing, log nothing.

Chromium prints every console message of the page (errors, uncaught exceptions, blocked
fetches) to stderr with ``--enable-logging=stderr --v=0``; the page's own script marks
``<body data-ready="1">`` once its data block parsed and every section it lists exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Dom, Registry, invoke

CONSOLE = re.compile(r':CONSOLE[^\]]*\] "(?P<message>.*)", source: (?P<source>.*)$', re.M)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does it): "
                    "the reports are not checked in a browser")
    return found


def browse(chromium: str, page: Path, profile: Path, *args: str) -> tuple[str, list[str]]:
    """Load ``page`` headless; returns stdout and the console messages the page produced."""
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=3000", *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [m.group("message") for m in CONSOLE.finditer(done.stderr)]


def test_console_messages_are_caught(chromium: str, tmp_path: Path) -> None:
    """The check below is not vacuous: a blocked fetch, an error and an exception all show."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" "
        "content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>"
        "<img src=\"http://example.invalid/x.png\">"
        "<script>console.error('boom'); notDefined();</script></body></html>")
    dom, console = browse(chromium, bad, tmp_path / "profile", "--dump-dom")
    assert "<body>" in dom
    assert any("violates the following Content Security Policy" in m for m in console), console
    assert "boom" in console and any("notDefined is not defined" in m for m in console)


@pytest.mark.parametrize("kind", ["report", "compare"])
def test_report_renders_in_chromium(chromium: str, registry: Registry, champion_page: Path,
                                    tmp_path: Path, kind: str) -> None:
    page = champion_page
    if kind == "compare":
        page = tmp_path / "compare.html"
        code, output = invoke("report", "--compare", "m/1", "m/2", "--registry", registry.url,
                              "-o", str(page))
        assert code == 0, output
    source = Dom(page.read_text())

    dumped, console = browse(chromium, page, tmp_path / "profile", "--dump-dom")
    assert console == []
    dom = Dom(dumped)
    body = dom.find("body")[0]
    assert body.get("data-ready") == "1"  # the page's script ran to the end
    assert int(body["data-cells"]) == len(source.having("td", "data-metric"))
    assert set(source.data["sections"]) <= dom.ids
    if kind == "report":
        assert {"task-graph", "curves-click", "loss-curves"} <= dom.ids
        # The browser sees the same numbers the file holds.
        shown = {(c["data-split"], c["data-task"], c["data-metric"]): c["data-value"]
                 for c in dom.having("td", "data-metric")}
        test = source.data["metrics"]["test"]
        assert float(shown[("test", "order", "auc_cond")]) == test["order"]["auc_cond"]
        assert float(shown[("test", "dwell", "rmse")]) == test["dwell"]["rmse"]
    else:
        assert len(dom.having("tr", "data-verdict")) == len(source.data["deltas"])

    shot = tmp_path / f"{kind}.png"
    _, console = browse(chromium, page, tmp_path / "profile", "--hide-scrollbars",
                        "--window-size=1280,2400", f"--screenshot={shot}")
    assert console == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    print(f"screenshot of the {kind} page: {shot}")
