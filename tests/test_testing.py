"""rankengine.testing: the fixtures plugin authors get from rankengine's pytest plugin."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rankengine import ArtifactError, Metric, hookimpl
from rankengine.pluginmanager import Engine
from rankengine.registry import RegistryStore
from rankengine.testing import tiny_config_text, train_tiny

pytest_plugins = ["pytester"]


class Share:
    """An in-process plugin: a metric, the share of positives among the top-scored half."""

    @hookimpl
    def rankengine_register_metrics(self, register) -> None:  # type: ignore[no-untyped-def]
        register("top_half_share", Metric(self.top_half_share))

    @staticmethod
    def top_half_share(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None) -> float:
        top = p >= np.median(p)
        return float(y[top].sum() / max(y.sum(), 1.0))


def test_dataset_is_a_small_simulated_funnel(rankengine_dataset: Path) -> None:
    rows = {split: pq.read_metadata(rankengine_dataset / f"{split}.parquet").num_rows
            for split in ("train", "valid", "test")}
    assert rows == {"train": 12_000, "valid": 1_500, "test": 1_500}
    columns = set(pq.read_schema(rankengine_dataset / "train.parquet").names)
    assert {"request_id", "click", "favorite", "order", "pay", "dwell_time", "item_price"} <= \
        columns


def test_engine_fixture_adds_in_process_plugins(rankengine_engine: Callable[..., Engine]) -> None:
    engine = rankengine_engine(Share(), enabled=["metrics"])
    assert set(engine.plugins) == {"metrics", "Share"}
    assert engine.components.metrics.get("top_half_share").plugin == "Share"
    named = rankengine_engine(("share", Share()), enabled=[])
    assert list(named.plugins) == ["share"]
    assert named.components.metrics.names() == ["top_half_share"]


def test_tiny_config_trains_with_a_plugin_and_registers(
        rankengine_config: Callable[..., Path], rankengine_engine: Callable[..., Engine],
        rankengine_registry: RegistryStore, tmp_path: Path) -> None:
    from rankengine.artifact import load_artifact
    from rankengine.registry.artifacts import load_version, path_of, register

    config = rankengine_config(extra='[evaluate]\nmetrics = ["auc", "top_half_share"]')
    assert config == tmp_path / "engine.toml"
    trained = train_tiny(config, rankengine_engine(Share()))
    valid = trained.result.metrics["valid"]
    assert set(valid["click"]) >= {"auc", "top_half_share"} and "gauc" not in valid["click"]
    assert valid["click"]["auc"] > 0.6  # one epoch of the tiny model already ranks
    assert 0.5 < valid["click"]["top_half_share"] <= 1.0
    version = register(rankengine_registry, tmp_path / "artifacts", trained, "tiny")
    assert version.ref == "tiny/1"
    assert rankengine_registry.url.endswith(str(tmp_path / "registry.db"))
    with pytest.raises(ArtifactError, match=r"'Share' was an in-process plugin when the model "
                                            r"was trained; pass an engine that has it"):
        load_version(rankengine_registry, "tiny/1")
    loaded = load_artifact(path_of(version.artifact_uri or ""), engine=trained.engine)
    assert loaded.graph.names == trained.graph.names


def test_tiny_config_options(rankengine_dataset: Path) -> None:
    text = tiny_config_text(rankengine_dataset, plugins=["builtin", "extra"], epochs=3,
                            fusion='kind = "weighted_sum"')
    assert 'plugins = ["builtin", "extra"]' in text and "epochs = 3" in text
    assert '[fusion]\nkind = "weighted_sum"' in text
    assert str(rankengine_dataset / "train.parquet") in text


def test_fixtures_need_no_conftest(pytester: pytest.Pytester) -> None:
    """In a fresh project, the fixtures come from the pytest11 entry point alone."""
    pytester.makepyfile(test_plugin="""
        from rankengine import Fusion, hookimpl

        class Last(Fusion):
            def __call__(self, predictions):
                return predictions[:, -1]

        class Plugin:
            @hookimpl
            def rankengine_register_fusions(self, register):
                register("last", Last)

        def test_engine(rankengine_engine):
            engine = rankengine_engine(("mine", Plugin()), enabled=["fusion"])
            assert engine.components.fusions.get("last").plugin == "mine"
            assert "weighted_sum" in engine.components.fusions.names()

        def test_config_points_at_the_dataset(rankengine_config, rankengine_dataset):
            text = rankengine_config(fusion='kind = "last"').read_text()
            assert str(rankengine_dataset / "valid.parquet") in text
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
