"""The command line, run through click's CliRunner on real files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from rankengine.cli import cli

from ..conftest import tiny_config_text


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "engine.toml").write_text(tiny_config_text(funnel_dir))
    out = root / "model"
    result = CliRunner().invoke(cli, ["train", "-c", str(root / "engine.toml"), "-o", str(out),
                                      "--quiet", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "test metrics" in result.output and "oracle" in result.output
    assert f"artifact: {out}" in result.output
    return out


def test_train_refuses_to_overwrite(artifact: Path) -> None:
    cfg = artifact.parent / "engine.toml"
    result = CliRunner().invoke(cli, ["train", "-c", str(cfg), "-o", str(artifact), "--quiet"])
    assert result.exit_code != 0 and "already exists" in result.output


def test_evaluate_json_matches_training_metrics(artifact: Path, funnel_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["evaluate", str(artifact), "--data",
                                      str(funnel_dir / "test.parquet"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    stored = json.loads((artifact / "metrics.json").read_text())["metrics"]["test"]
    assert metrics["click"]["auc"] == pytest.approx(stored["click"]["auc"], abs=1e-12)
    assert metrics["order"]["auc_cond"] == pytest.approx(stored["order"]["auc_cond"], abs=1e-12)


def test_predict_writes_scores_with_kept_columns(artifact: Path, funnel_dir: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    result = CliRunner().invoke(cli, ["predict", str(artifact), "--data",
                                      str(funnel_dir / "test.parquet"), "-o", str(out),
                                      "--keep", "request_id,item_id"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names[:2] == ["request_id", "item_id"]
    assert {"p_click", "p_order", "pc_order", "score"} <= set(table.column_names)
    assert table.num_rows == pq.read_metadata(funnel_dir / "test.parquet").num_rows
    csv_out = tmp_path / "scores.csv"
    assert CliRunner().invoke(cli, ["predict", str(artifact), "--data",
                                    str(funnel_dir / "test.parquet"), "-o",
                                    str(csv_out)]).exit_code == 0
    assert csv_out.read_text().startswith('"p_click"')


def test_rank_prints_an_ordered_request(artifact: Path, funnel_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["rank", str(artifact), "--data",
                                      str(funnel_dir / "test.parquet"), "--top-k", "5"])
    assert result.exit_code == 0, result.output
    assert "ranked by weighted_product" in result.output
    scores = [float(line.split("│")[4]) for line in result.output.splitlines()
              if line.startswith("│") and line.split("│")[1].strip().isdigit()]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "engine.toml").write_text("[data]\ntrain = 'x.csv'\n[[features]]\nname='a'\n"
                                          "kind='categorical'\n[tasks]\nclick={label='c'}\n"
                                          "[model]\nbackbone='mmeo'\n")
    result = CliRunner().invoke(cli, ["train", "-c", str(tmp_path / "engine.toml"),
                                      "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "unknown backbone 'mmeo'" in result.output and "did you mean 'mmoe'" in result.output
    assert not (tmp_path / "o").exists()


def test_plugins_command_lists_builtins(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["plugins", "--all"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("cascades", "backbones", "encoders", "built-in"):
        assert name in result.output


def test_simulate_writes_splits(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["simulate", "-o", str(tmp_path / "f"), "--requests", "200"])
    assert result.exit_code == 0, result.output
    assert pq.read_metadata(tmp_path / "f" / "train.parquet").num_rows > 0
    bad = CliRunner().invoke(cli, ["simulate", "-o", str(tmp_path / "g"), "--correlation", "2"])
    assert bad.exit_code != 0 and "conversion_correlation" in bad.output


@pytest.mark.parametrize("fmt,suffix", [("torchscript", "pt"), ("onnx", "onnx")])
def test_export_matches_rankengine(artifact: Path, tmp_path: Path, fmt: str, suffix: str) -> None:
    out = tmp_path / f"model.{suffix}"
    result = CliRunner().invoke(cli, ["export", str(artifact), "--format", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "max |diff|" in result.output
    assert "inputs: ids, dense, user_hist_categories" in result.output


def test_a_bad_engine_toml_in_the_working_directory_breaks_only_the_commands_that_read_it(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "engine.toml").write_bytes(b'[engine]\nseed = "\xff\xfe"\n')
    exe = Path(sys.executable).with_name("rankengine")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)

    version = run("--version")
    assert version.returncode == 0 and "rankengine" in version.stdout, version.stderr
    assert run("simulate", "--requests", "20", "-o", "sim").returncode == 0
    listed = run("--help")
    assert listed.returncode == 0 and "train" in listed.stdout
    trained = run("train", "--quiet")
    assert trained.returncode == 1 and "Traceback" not in trained.stderr
    assert trained.stderr.strip() == ("Error: engine.toml: not UTF-8 text (byte b'\\xff' at "
                                      "offset 17); TOML files are UTF-8")
    unknown = run("hello")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "no such command 'hello'" in unknown.stderr and "engine.toml" in unknown.stderr


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["simulate", "--seed", "-1", "-o", str(tmp_path / "s")],
                                prog_name="rankengine")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295. "
        "(see 'rankengine simulate --help')"]


def test_rank_names_a_request_id_of_the_wrong_type(artifact: Path, funnel_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["rank", str(artifact), "--data",
                                      str(funnel_dir / "test.parquet"), "--request", "abc"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "'abc' is not a value of" in result.stderr and "request_id" in result.stderr


def test_a_bug_is_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    import rankengine.simulate

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(rankengine.simulate, "write_funnel", broken)
    args = ["simulate", "--requests", "5", "-o", str(tmp_path / "s")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: internal error: ZeroDivisionError: boom (a bug in rankengine or a plugin; set "
        "RANKENGINE_DEBUG=1 for the traceback)"]
    monkeypatch.setenv("RANKENGINE_DEBUG", "1")
    assert isinstance(CliRunner().invoke(cli, args).exception, ZeroDivisionError)


def test_gate_fails_in_one_line_when_a_metric_is_undefined() -> None:
    from types import SimpleNamespace

    from rankengine.cli.train import _gate
    from rankengine.pluginmanager import load_engine

    def version(ref: str, auc: float | None, why: str | None = None) -> SimpleNamespace:
        values: dict = {"auc": auc}
        if why:
            values["undefined"] = {"auc": why}
        return SimpleNamespace(ref=ref, model="m", metrics={"splits": {"test": {"order": values}}})

    champion = version("m/1", None, "no positive labels")
    store = SimpleNamespace(resolve=lambda ref: champion)
    engine = load_engine()
    passed, why = _gate(store, version("m/2", 0.7), "champion", "order.auc >= champion", "test",
                        engine)
    assert not passed
    assert why == ("gate order.auc >= champion: m/1 order.auc is undefined on the test split "
                   "(no positive labels): failed")
    passed, why = _gate(store, version("m/2", None), "champion", "order.auc >= 0.5", "test",
                        engine)
    assert not passed and "m/2 order.auc is undefined on the test split (not a number)" in why
    champion = version("m/1", 0.6)
    assert _gate(store, version("m/2", 0.7), "champion", "order.auc >= champion", "test",
                 engine)[0]


def one_error(result: Any) -> str:
    """The failure is one line on stderr, ``Error: ...``, and no bug report."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "internal error" not in lines[0], lines
    return lines[0]


def test_train_options_are_checked_before_training(tmp_path: Path, funnel_dir: Path) -> None:
    cfg = tmp_path / "engine.toml"
    cfg.write_text(tiny_config_text(funnel_dir))
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    base = ["train", "-c", str(cfg), "--registry", url, "--quiet", "--epochs", "1"]
    for args, message in (
        (["--tag", "=x"], "--tag '=x': expected KEY=VALUE with a non-empty KEY"),
        (["--tag", "a=1", "--tag", "a=2"], "KEY 'a' is given twice"),
        (["--model", ""], "--model: empty"),  # not the config's model, silently
        (["--promote", ""], "--promote: empty"),  # not "no promotion", silently
        (["--parent", "0"], "0 is not in the range x>=1"),
        (["--parent", "7"], "--parent: no model named"),  # not after training
    ):
        line = one_error(CliRunner().invoke(cli, [*base, *args]))
        assert message in line, line
    result = CliRunner().invoke(cli, [*base[:3], "--registry", "", "--quiet"])
    assert "--registry: empty" in one_error(result)
    assert not (tmp_path / "artifacts").exists()  # nothing trained or registered


def test_predict_output_problems_are_one_line_and_leave_nothing(
        artifact: Path, funnel_dir: Path, tmp_path: Path) -> None:
    data = str(funnel_dir / "test.parquet")
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, keep, message in (
        (blocker / "scores.csv", "", "a part of the path is a file, not a folder"),
        (tmp_path / "s.csv", "user_hist_categories", "CSV cannot hold column "
                                                     "'user_hist_categories' (list<"),
        (tmp_path / "s.parquet", "item_id,score", "--keep: 'score' is also an output column"),
    ):
        result = CliRunner().invoke(cli, ["predict", str(artifact), "--data", data, "-o",
                                          str(out), "--keep", keep])
        assert message in one_error(result)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no partial or temporary file


def test_predict_output_is_readable_like_any_new_file(artifact: Path, funnel_dir: Path,
                                                      tmp_path: Path) -> None:
    import os
    import stat

    out = tmp_path / "scores.csv"
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["predict", str(artifact), "--data",
                                          str(funnel_dir / "test.parquet"), "-o", str(out)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_rank_names_the_file_when_no_row_matches(artifact: Path, funnel_dir: Path,
                                                 tmp_path: Path) -> None:
    import pyarrow as pa

    data = funnel_dir / "test.parquet"
    result = CliRunner().invoke(cli, ["rank", str(artifact), "--data", str(data),
                                      "--request", "987654"])
    assert one_error(result) == f"Error: {data}: no rows with request_id = 987654"
    table = pq.read_table(data)
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(table.set_column(0, "request_id", pa.nulls(table.num_rows, pa.int64())),
                   nulls)
    result = CliRunner().invoke(cli, ["rank", str(artifact), "--data", str(nulls)])
    assert "the request_id picked to rank is empty (null); pass --request ID" in \
        one_error(result)


def test_export_output_problems_are_one_line(artifact: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for fmt, out, message in (
        ("torchscript", str(tmp_path / "m.onnx"), "m.onnx names a onnx file but --format is "
                                                  "torchscript"),
        ("onnx", str(tmp_path / "m.pt"), "names a torchscript file but --format is onnx"),
        ("torchscript", str(blocker / "m.pt"), "a part of the path is a file, not a folder"),
        ("torchscript", "", "expected a file name to export to"),
    ):
        result = CliRunner().invoke(cli, ["export", str(artifact), "--format", fmt, "-o", out])
        assert message in one_error(result)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_onnx_weights_are_kept_under_the_exported_name(artifact: Path, tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["export", str(artifact), "--format", "onnx", "-o",
                                      str(out)])
    assert result.exit_code == 0, result.output
    # before: the weights sat in a hidden '.m.onnx.tmp.data' the model pointed at
    assert sorted(p.name for p in tmp_path.iterdir()) in (["m.onnx"], ["m.onnx", "m.onnx.data"])
    model = onnx.load(str(out), load_external_data=False)
    places = {e.value for t in model.graph.initializer for e in t.external_data
              if e.key == "location"}
    assert places <= {"m.onnx.data"}
    if places:
        assert "keep m.onnx.data beside it" in result.output


def test_plugins_with_a_missing_config_named_on_purpose(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(cli, ["plugins", "-c", str(missing)])
    assert "configuration file not found" in one_error(result)  # not every installed plugin


def test_quiet_training_writes_nothing_to_stderr(tmp_path: Path, funnel_dir: Path) -> None:
    (tmp_path / "engine.toml").write_text(tiny_config_text(funnel_dir))
    args = ["train", "-c", str(tmp_path / "engine.toml"), "--epochs", "1"]
    quiet = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "q"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    loud = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "l")])
    assert "model: mmoe + esm2" in loud.stderr and "epoch 1:" in loud.stderr


def test_scoring_commands_take_a_device_checked_against_the_machine(
        artifact: Path, funnel_dir: Path) -> None:
    data = str(funnel_dir / "valid.parquet")
    on_cpu = CliRunner().invoke(cli, ["evaluate", str(artifact), "--data", data, "--json",
                                      "--device", "cpu"])
    assert on_cpu.exit_code == 0, on_cpu.output
    assert json.loads(on_cpu.output) == json.loads(CliRunner().invoke(
        cli, ["evaluate", str(artifact), "--data", data, "--json"]).output)
    for command in (["evaluate", str(artifact), "--data", data],
                    ["predict", str(artifact), "--data", data, "-o", "x.parquet"],
                    ["rank", str(artifact), "--data", data],
                    ["tune-fusion", str(artifact), "--data", data],
                    ["report", "m@champion"], ["serve", "m@champion"]):
        for device in ("gpu", *([] if torch.cuda.is_available() else ["cuda:0"])):
            result = CliRunner().invoke(cli, [*command, "--device", device])
            assert result.exit_code == 2, (command, result.output)
            lines = [line for line in result.output.splitlines() if "--device" in line]
            assert lines and ("no CUDA device" in lines[-1] or "expected auto" in lines[-1])
