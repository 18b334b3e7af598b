"""One tiny registry shared by the report tests: two trained versions of model ``m``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rankengine.cli import cli

from ..conftest import tiny_config_text


@dataclass(frozen=True)
class Registry:
    url: str
    root: Path


@pytest.fixture(scope="package")
def registry(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> Registry:
    """m/1 (1 epoch) and m/2 (2 epochs, aliased champion), registered by ``rankengine train``."""
    root = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{root / 'registry.db'}"
    extra = f'[registry]\nurl = "{url}"\nartifacts = "{root / "artifacts"}"\nmodel = "m"\n'
    config = root / "engine.toml"
    config.write_text(tiny_config_text(funnel_dir, extra=extra))
    for epochs in ("1", "2"):
        result = CliRunner().invoke(cli, ["train", "-c", str(config), "--quiet", "--epochs",
                                          epochs, *(["--promote", "champion"] if epochs == "2"
                                                    else [])])
        assert result.exit_code == 0, result.output
        assert "test metrics" in result.output  # the per-task table training ends with
    return Registry(url, root)


@pytest.fixture(scope="package")
def champion_page(registry: Registry) -> Path:
    """``rankengine report m@champion`` (m/2), written once for every test that reads it."""
    out = registry.root / "m-champion.html"
    code, output = invoke("report", "m@champion", "--registry", registry.url, "-o", str(out))
    assert code == 0, output
    assert f"wrote {out}" in output
    return out


def invoke(*args: str, **kwargs: Any) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), **kwargs)
    return result.exit_code, result.output


class Dom(HTMLParser):
    """Every element's tag and attributes, plus the text of ``<script id="report-data">``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self._in_data = False
        self._data: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        self.elements.append((tag, found))
        self._in_data = found.get("id") == "report-data"

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self._data.append(data)

    @property
    def data(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads("".join(self._data))
        return loaded

    @property
    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.elements if "id" in a}

    def find(self, tag: str | None = None, **attrs: str) -> list[dict[str, str]]:
        """Elements with ``tag`` whose attributes include ``attrs`` (``data_x`` → data-x)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [a for t, a in self.elements if (tag is None or t == tag)
                and all(a.get(k) == v for k, v in want.items())]

    def having(self, tag: str, attr: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and attr in a]
