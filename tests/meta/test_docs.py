"""The plugin author's guide and the config reference stay true to the code.

Every hook must appear in docs/plugins.md with its exact signature (that it is exercised by a
test is checked by test_layout.test_every_hook_is_exercised_by_a_test).
"""

from __future__ import annotations

import inspect
import re

import pytest

from rankengine import hookspecs, pluginmanager, testing
from rankengine.config import EngineSection

from ..conftest import REPO
from .test_layout import hook_names

GUIDE = REPO / "docs" / "plugins.md"


def signature(name: str) -> str:
    """``name(arg: Annotation, ...) -> Return`` as written in hookspecs.py."""
    sig = inspect.signature(getattr(hookspecs, name))
    args = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"{name}({args}) -> {sig.return_annotation}"


def documented_hooks() -> dict[str, str]:
    """Hook name → the signature in the guide's ``### `...` `` headings."""
    found = re.findall(r"^### `(rankengine_\w+)(\(.*)`$", GUIDE.read_text(), re.MULTILINE)
    return {name: f"{name}{rest}" for name, rest in found}


def test_signature_renders_the_spec() -> None:
    assert signature("rankengine_after_epoch") == (
        "rankengine_after_epoch(context: TrainContext, epoch: int, metrics: dict[str, Any]) "
        "-> None")


@pytest.mark.parametrize("name", hook_names())
def test_every_hook_is_documented_with_its_exact_signature(name: str) -> None:
    headings = documented_hooks()
    assert name in headings, f"docs/plugins.md has no '### `{signature(name)}`' section"
    assert headings[name] == signature(name)


def test_guide_documents_no_hook_that_does_not_exist() -> None:
    assert sorted(set(documented_hooks()) - set(hook_names())) == []


def test_guide_names_the_switches_fixtures_and_scaffold() -> None:
    text = GUIDE.read_text()
    for needed in (pluginmanager.DISABLE_AUTOLOAD_ENV, pluginmanager.ALLOW_ENV,
                   pluginmanager.TRACE_ENV, "RANKENGINE_HOOK_API", "rankengine plugin new",
                   "pytest11", hookspecs.PROJECT):
        assert needed in text, needed
    fixtures = [n for n in testing.__all__ if n.startswith("rankengine_")]
    assert fixtures == ["rankengine_config", "rankengine_dataset", "rankengine_engine",
                        "rankengine_registry"]
    helpers = [n for n in testing.__all__ if callable(getattr(testing, n))
               and not n.startswith("rankengine_")]
    for name in fixtures + helpers:
        assert f"`{name}" in text, f"docs/plugins.md does not mention {name}"


def test_config_reference_documents_every_engine_key() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    section = text[text.index("## `[engine]`"):text.index("## `[data]`")]
    for key in EngineSection.model_fields:
        assert f"| `{key}` |" in section, key
