"""Metrics that do not exist on the data (no positives, no rows) are reported as undefined, with
the reason, through the real ``train`` and ``evaluate`` commands: never an exception, never a
lost run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from rankengine.cli import cli
from rankengine.data.dataset import EncodedData
from rankengine.evaluate import node_metrics, select_metrics
from rankengine.graph import TaskGraph
from rankengine.pluginmanager import Engine

from .conftest import tiny_config_text

LABELS = ("click", "favorite", "order", "pay", "dwell_time")


def _zeroed(table: pa.Table, columns: tuple[str, ...]) -> pa.Table:
    for name in columns:
        field = table.schema.field(name)
        table = table.set_column(table.column_names.index(name), field,
                                 pa.array(np.zeros(table.num_rows), type=field.type))
    return table


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("degenerate")
    table = pq.read_table(funnel_dir / "test.parquet").slice(0, 400)
    clicked = table.filter(pa.compute.equal(table.column("click"), 1))
    out = {
        "one_row": clicked.slice(0, 1),  # one clicked impression: no AUC anywhere
        "all_zero": _zeroed(table, LABELS),  # no positive label at all
        "no_order": _zeroed(table, ("order", "pay")),  # pay's parent has no positive
        "no_rows": table.slice(0, 0),
    }
    paths = {}
    for name, part in out.items():
        paths[name] = root / f"{name}.parquet"
        pq.write_table(part, paths[name])
    return paths


def _config(tmp: Path, funnel: Path, data: Path, extra: str = "") -> Path:
    text = tiny_config_text(funnel, extra=extra)
    for split in ("train", "valid", "test"):
        text = text.replace(str(funnel / f"{split}.parquet"), str(data))
    path = tmp / "engine.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("name", "task", "metric", "reason"), [
    ("one_row", "click", "auc", "no negative labels"),
    ("all_zero", "click", "auc", "no positive labels"),
    ("all_zero", "click", "calibration", "mean label is 0"),
    ("no_order", "pay", "auc_cond", "no rows with order = 1"),
])
def test_train_and_evaluate_report_undefined_metrics(tmp_path: Path, funnel_dir: Path,
                                                     files: dict[str, Path], name: str,
                                                     task: str, metric: str,
                                                     reason: str) -> None:
    """Trained, evaluated and written on the degenerate file alone (train = valid = test)."""
    config = _config(tmp_path, funnel_dir, files[name])
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, ["train", "-c", str(config), "-o", str(out), "--quiet",
                                      "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "undefined (-):" in result.output and reason in result.output
    assert f"artifact: {out}" in result.output
    stored = json.loads((out / "metrics.json").read_text())["metrics"]["test"][task]
    assert stored[metric] is None  # null in JSON, never NaN or inf
    assert stored["undefined"][metric] == reason
    evaluated = CliRunner().invoke(cli, ["evaluate", str(out), "--data", str(files[name]),
                                         "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.output)
    assert metrics[task][metric] is None and metrics[task]["undefined"][metric] == reason
    table = CliRunner().invoke(cli, ["evaluate", str(out), "--data", str(files[name])])
    assert table.exit_code == 0 and f"{task}: " in table.output and reason in table.output


def test_evaluate_and_predict_on_a_file_without_rows(tmp_path: Path, funnel_dir: Path,
                                                     files: dict[str, Path]) -> None:
    config = _config(tmp_path, funnel_dir, files["no_order"])
    out = tmp_path / "model"
    assert CliRunner().invoke(cli, ["train", "-c", str(config), "-o", str(out), "--quiet",
                                    "--epochs", "1"]).exit_code == 0
    result = CliRunner().invoke(cli, ["evaluate", str(out), "--data", str(files["no_rows"]),
                                      "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["click"]["auc"] is None and metrics["click"]["undefined"]["auc"] == "no rows"
    assert metrics["dwell"]["undefined"]["rmse"] == "no rows with click = 1"
    scores = tmp_path / "scores.parquet"
    result = CliRunner().invoke(cli, ["predict", str(out), "--data", str(files["no_rows"]),
                                      "-o", str(scores)])
    assert result.exit_code == 0, result.output
    written = pq.read_table(scores)
    assert written.num_rows == 0
    assert {"p_click", "pc_order", "p_dwell", "score"} <= set(written.column_names)
    ranked = CliRunner().invoke(cli, ["rank", str(out), "--data", str(files["no_rows"])])
    assert ranked.exit_code == 1
    assert ranked.stderr.strip() == f"Error: {files['no_rows']}: no rows to rank"


def test_gate_on_an_undefined_metric_fails_in_one_line(tmp_path: Path, funnel_dir: Path,
                                                       files: dict[str, Path]) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    extra = f'[registry]\nurl = "{url}"\nartifacts = "{tmp_path / "artifacts"}"\nmodel = "m"\n'
    config = _config(tmp_path, funnel_dir, files["all_zero"], extra=extra)
    result = CliRunner().invoke(cli, ["train", "-c", str(config), "--quiet", "--epochs", "1",
                                      "--promote", "champion", "--if", "order.auc >= 0.5"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert ("m@champion not moved: gate order.auc >= 0.5: m/1 order.auc is undefined on the "
            "test split (no positive labels): failed") in result.output


def test_node_metrics_never_call_a_metric_on_no_rows_and_survive_a_failing_one(
        engine: Engine) -> None:
    from rankengine.components import Component
    from rankengine.config import TaskSpec
    from rankengine.evaluate import undefined_reason
    from rankengine.interfaces import Metric

    graph = TaskGraph({"click": TaskSpec(label="click"),
                       "order": TaskSpec(label="order", after="click")})
    labels = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.float32)
    data = EncodedData(np.zeros((3, 0), np.int64), np.zeros((3, 0), np.float32), [], labels)
    calls = []

    def broken(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None) -> float:
        calls.append(len(y))
        raise ZeroDivisionError("boom")

    metrics = [*select_metrics(engine.components.metrics, ["auc", "logloss"]),
               Component("metrics", "broken", Metric(broken), Metric, "test")]
    p = np.full((3, 2), 0.3)
    out = node_metrics(graph, data, p, p, metrics)
    assert out["click"]["auc"] == pytest.approx(0.5)
    assert np.isnan(out["order"]["auc_cond"])
    assert out["order"]["undefined"]["auc_cond"] == "no positive labels"
    assert out["order"]["undefined"]["broken"] == \
        "the metric failed: ZeroDivisionError: boom"
    assert undefined_reason(out, "order", "auc") == "no positive labels"
    assert undefined_reason(out, "click", "auc") is None
    empty = EncodedData(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), [],
                        np.zeros((0, 2), np.float32))
    calls.clear()
    out = node_metrics(graph, empty, np.zeros((0, 2)), np.zeros((0, 2)), metrics)
    assert calls == []  # nothing is computed on no rows
    assert out["order"]["undefined"] == {"auc": "no rows", "logloss": "no rows",
                                         "broken": "no rows", "auc_cond": "no rows with "
                                         "click = 1", "logloss_cond": "no rows with click = 1",
                                         "broken_cond": "no rows with click = 1"}


def test_a_prediction_that_is_not_finite_is_an_error_naming_the_row(
        tmp_path: Path, funnel_dir: Path) -> None:
    """A finite but extreme feature value makes the model's output NaN or inf: evaluate and
    predict name the row instead of reporting NaN metrics or writing missing scores."""
    text = tiny_config_text(funnel_dir).replace('transform = "log1p_standardize"',
                                                'transform = "standardize"')
    (tmp_path / "engine.toml").write_text(text)
    out = tmp_path / "model"
    trained = CliRunner().invoke(cli, ["train", "-c", str(tmp_path / "engine.toml"), "-o",
                                       str(out), "--quiet", "--epochs", "1"])
    assert trained.exit_code == 0, trained.output
    table = pq.read_table(funnel_dir / "test.parquet").slice(0, 50)
    price = table.column("item_price").to_numpy().copy()
    price[7] = 1e30
    extreme = tmp_path / "extreme.parquet"
    pq.write_table(table.set_column(table.column_names.index("item_price"), "item_price",
                                    pa.array(price)), extreme)
    for args in (["evaluate", str(out), "--data", str(extreme)],
                 ["predict", str(out), "--data", str(extreme), "-o", str(tmp_path / "s.csv")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {extreme}: row 7"), lines
        assert "not a finite number" in lines[0]
    assert not (tmp_path / "s.csv").exists()
