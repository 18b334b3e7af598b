"""Calibration: the built-in calibrators fit what they should, calibrating the conditionals keeps
p(child) <= p(parent), and the fitted calibration is saved and applied alike by every path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rankengine import Calibrator, Register, hookimpl
from rankengine.artifact import load_artifact, save_artifact
from rankengine.backend import backend_class
from rankengine.config import load_config
from rankengine.data.batching import ModelInput
from rankengine.export import example_inputs
from rankengine.interfaces import CascadeOutput
from rankengine.model.calibration import Calibration
from rankengine.plan import build_graph
from rankengine.pluginmanager import Engine
from rankengine.scoring import PredictionModule
from rankengine.testing import make_engine
from rankengine.train import train

from .conftest import tiny_config_text


def calibrator(engine: Engine, name: str, **params: object) -> torch.nn.Module:
    component = engine.components.calibrators.get(name)
    built: torch.nn.Module = component.factory(component.parse_params(params))
    return built


def draws(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(len(truth)) < truth).astype(np.float64)


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(1 / (1 + np.exp(-logits)), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def test_parametric_calibrators_recover_the_distortion(engine: Engine) -> None:
    z = np.random.default_rng(1).normal(-2.0, 1.5, 100_000)
    shifted = draws(1 / (1 + np.exp(-(z - 0.4))))  # the model over-predicts by 0.4 logits
    bias = calibrator(engine, "bias")
    bias.fit(z, shifted)
    assert float(bias.bias) == pytest.approx(-0.4, abs=0.03)
    steep = draws(1 / (1 + np.exp(-(2.0 * z + 1.0))))
    platt = calibrator(engine, "platt")
    platt.fit(z, steep)
    assert float(platt.slope) == pytest.approx(2.0, abs=0.06)
    assert float(platt.bias) == pytest.approx(1.0, abs=0.1)
    flat = draws(1 / (1 + np.exp(-(0.5 * z))))
    temperature = calibrator(engine, "temperature")
    temperature.fit(z, flat)
    assert float(torch.exp(temperature.log_temperature)) == pytest.approx(2.0, rel=0.05)


def test_isotonic_is_monotone_and_fixes_a_non_linear_distortion(engine: Engine) -> None:
    z = np.random.default_rng(2).normal(-2.0, 1.5, 100_000)
    labels = draws(1 / (1 + np.exp(-(z ** 3) / 8)))  # no linear map of z calibrates this
    isotonic = calibrator(engine, "isotonic", min_bucket=500, knots=64)
    grid = torch.linspace(-8, 4, 500)
    with torch.no_grad():
        assert torch.equal(isotonic(grid), grid)  # unfitted: the identity
    isotonic.fit(z, labels)
    with torch.no_grad():
        mapped = isotonic(grid)
        assert bool((mapped[1:] >= mapped[:-1] - 1e-6).all())  # monotone
        after = isotonic(torch.from_numpy(z).float()).double().numpy()
    assert logloss(after, labels) < logloss(z, labels) - 0.01


def test_scale_matches_the_mean_of_a_regression_node(engine: Engine) -> None:
    scale = calibrator(engine, "scale")
    scale.fit(np.array([1.0, 2.0, 3.0]), np.array([3.0, 3.0, 6.0]))
    assert float(scale.scale) == pytest.approx(2.0)


def test_one_class_leaves_a_calibrator_the_identity(engine: Engine) -> None:
    for name in ("bias", "platt", "temperature", "isotonic"):
        fitted = calibrator(engine, name)
        fitted.fit(np.array([0.1, -0.3]), np.zeros(2))
        with torch.no_grad():
            x = torch.tensor([-1.0, 0.5])
            assert torch.allclose(fitted(x), x), name


def test_calibrated_children_never_exceed_their_parents(tiny_config: Path,
                                                        engine: Engine) -> None:
    """Any calibration of the conditionals of an ESM² chain keeps p(child) <= p(parent)."""
    config = load_config(tiny_config)
    graph = build_graph(config, engine)
    generator = torch.Generator().manual_seed(3)
    platt = [calibrator(engine, "platt") if n.type == "binary" else None for n in graph.nodes]
    calibration = Calibration(graph, platt)
    with torch.no_grad():
        for c in platt:
            if c is not None:  # steep, shifted maps: the calibrated conditionals move a lot
                c.slope.fill_(float(torch.rand((), generator=generator)) * 3 + 0.2)
                c.bias.fill_(float(torch.randn((), generator=generator)) * 3)
        conditional = torch.randn(4096, len(graph), generator=generator) * 4
        cond_p, cond_q = torch.nn.functional.logsigmoid(conditional), \
            torch.nn.functional.logsigmoid(-conditional)
        values = torch.rand(4096, len(graph))
        out = CascadeOutput.chained(graph, list(cond_p.unbind(1)), list(cond_q.unbind(1)),
                                    list(values.unbind(1)))
        calibrated = calibration(out)
        entire = calibrated.entire(graph)
    for i, node in enumerate(graph.nodes):
        parent = graph.parent_index[i]
        if node.type == "binary" and parent >= 0:
            assert bool((entire[:, i] <= entire[:, parent] + 1e-6).all()), node.name
    # the product of the calibrated conditionals, exactly
    again = CascadeOutput.chained(graph, list(calibrated.cond_log_p.unbind(1)),
                                  list(calibrated.cond_log_q.unbind(1)),
                                  list(calibrated.value.unbind(1)))
    torch.testing.assert_close(calibrated.log_p, again.log_p, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("calibrated")
    text = tiny_config_text(funnel_dir, extra='[calibration]\nkind = "platt"\n'
                                              'regression = "scale"\n')
    (root / "engine.toml").write_text(text)
    trained = train(load_config(root / "engine.toml"), progress=False)
    return save_artifact(trained, root / "artifact")


def test_the_fitted_calibration_is_saved_and_every_path_applies_it(calibrated_model: Path
                                                                   ) -> None:
    loaded = load_artifact(calibrated_model)
    saved = json.loads((calibrated_model / "metrics.json").read_text())
    assert saved["calibrator"]["kind"] == "platt"
    assert saved["calibrator"]["fitted_on"].endswith("valid.parquet")
    assert saved["calibrator"]["rows"]["order"] > 0  # fitted on the click-positive rows
    # Platt's log-loss fit has an offset, so on the rows it was fitted on the mean prediction
    # equals the mean label: the root's calibration on the validation split is 1.
    before = saved["uncalibrated_metrics"]["valid"]["click"]["calibration"]
    assert saved["metrics"]["valid"]["click"]["calibration"] == pytest.approx(1.0, abs=2e-3)
    assert before != pytest.approx(1.0, abs=2e-3)
    slopes = {k: v for k, v in loaded.model.state_dict().items() if k.startswith("calibration.")}
    assert slopes and any(float(v) != 1.0 for k, v in slopes.items() if k.endswith("slope"))

    inputs = list(example_inputs(loaded, 16))
    with torch.no_grad():
        raw = loaded.model(ModelInput(inputs[0], inputs[1], inputs[2:])).entire(loaded.graph)
        scored, _ = PredictionModule(loaded.model)(*inputs)
    assert not np.allclose(raw.double().numpy(), scored.double().numpy(), atol=1e-4)  # applied
    arrays = [t.numpy() for t in inputs]
    engine = loaded.engine
    for name in ("torch", "onnxruntime"):
        backend = backend_class(engine, name)(loaded)
        entire, _ = backend(arrays[0], arrays[1], arrays[2:])
        np.testing.assert_allclose(entire, scored.double().numpy(), atol=1e-5, err_msg=name)
        backend.close()


class Shift(Calibrator):
    """A third-party calibrator: the median logit moved to the base rate."""

    shift: torch.Tensor

    def __init__(self, params: object) -> None:
        super().__init__(params)
        self.register_buffer("shift", torch.zeros(()))

    def fit(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        rate = float(np.clip(targets.mean(), 1e-6, 1 - 1e-6))
        self.shift.fill_(float(np.log(rate / (1 - rate)) - np.median(predictions)))

    def forward(self, predictions: torch.Tensor) -> torch.Tensor:
        return predictions + self.shift


class ShiftPlugin:
    @hookimpl
    def rankengine_register_calibrators(self, register: Register) -> None:
        register("shift", Shift, help="median logit moved to the base rate")


def test_the_registry_keeps_both_the_calibrated_and_the_model_s_own_metrics(
        tmp_path: Path, funnel_dir: Path) -> None:
    from rankengine.registry import RegistryStore
    from rankengine.registry.artifacts import register

    (tmp_path / "engine.toml").write_text(tiny_config_text(
        funnel_dir, extra='[calibration]\nkind = "bias"\n').replace("epochs = 2", "epochs = 1"))
    trained = train(load_config(tmp_path / "engine.toml"), progress=False)
    store = RegistryStore(f"sqlite:///{tmp_path / 'reg.db'}")
    try:
        version = register(store, tmp_path / "artifacts", trained, "demo")
        stored = store.resolve(version.ref).metrics
    finally:
        store.close()
    assert stored["calibrator"]["kind"] == "bias"
    assert stored["splits"]["valid"]["click"]["calibration"] == pytest.approx(1.0, abs=2e-3)
    assert stored["uncalibrated_splits"]["valid"]["click"]["calibration"] == pytest.approx(
        trained.training.uncalibrated_metrics["valid"]["click"]["calibration"])


def test_a_plugin_calibrator_is_fitted_saved_and_applied(tmp_path: Path,
                                                         funnel_dir: Path) -> None:
    engine = make_engine(("shifting", ShiftPlugin()))
    (tmp_path / "engine.toml").write_text(tiny_config_text(
        funnel_dir, extra='[calibration]\nkind = "shift"\n'))
    trained = train(load_config(tmp_path / "engine.toml"), engine=engine, progress=False)
    loaded = load_artifact(save_artifact(trained, tmp_path / "artifact"), engine=engine)
    shifts = {k: float(v) for k, v in loaded.model.state_dict().items()
              if k.startswith("calibration.") and k.endswith("shift")}
    binary = [n for n in loaded.graph.nodes if n.type == "binary"]
    assert len(shifts) == len(binary) and all(s != 0.0 for s in shifts.values())
    inputs = list(example_inputs(loaded, 8))
    with torch.no_grad():
        entire, _ = PredictionModule(loaded.model)(*inputs)
        raw = loaded.model(ModelInput(inputs[0], inputs[1], inputs[2:])).entire(loaded.graph)
    click = loaded.graph.index("click")
    shift = shifts[f"calibration.calibrators.{click}.shift"]
    torch.testing.assert_close(torch.logit(entire[:, click].double()),
                               torch.logit(raw[:, click].double()) + shift, atol=1e-4,
                               rtol=1e-4)


def test_evaluate_shows_the_calibrated_metrics_and_the_model_s_own(
        calibrated_model: Path, funnel_dir: Path) -> None:
    from click.testing import CliRunner

    from rankengine.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", str(calibrated_model), "--data",
                                      str(funnel_dir / "valid.parquet")])
    assert result.exit_code == 0, result.output
    shift = next(line for line in result.output.splitlines() if "before → after" in line)
    # on the split it was fitted on, Platt brings the root's mean prediction to its mean label
    assert shift.startswith("calib before → after calibration (the model's calibrator): click")
    assert " → 1.00" in shift.split(",")[0] or " → 0.99" in shift.split(",")[0], shift


def test_the_report_draws_the_reliability_before_and_after_calibration(
        calibrated_model: Path) -> None:
    from rankengine.report.build import score_curves
    from rankengine.report.plots import curves_figure

    loaded = load_artifact(calibrated_model)
    saved = json.loads((calibrated_model / "metrics.json").read_text())
    curves = score_curves(loaded, "valid").tasks["click"]
    assert curves.reliability is not None and curves.reliability_uncalibrated is not None
    # the same ratios the trainer measured on the whole split, model's own and calibrated
    assert curves.reliability_uncalibrated.calibration == pytest.approx(
        saved["uncalibrated_metrics"]["valid"]["click"]["calibration"], rel=1e-4)
    assert curves.reliability.calibration == pytest.approx(
        saved["metrics"]["valid"]["click"]["calibration"], rel=1e-4)
    svg = curves_figure("click", curves.roc, None, curves.reliability, None, None,
                        curves.reliability_uncalibrated)
    assert "before calibration" in svg


def test_an_isotonic_calibrated_model_exports_and_serves_alike(tmp_path: Path,
                                                               funnel_dir: Path) -> None:
    """The piecewise-linear map (comparisons, gathers, logit) runs the same in ONNX Runtime."""
    (tmp_path / "engine.toml").write_text(tiny_config_text(
        funnel_dir, extra='[calibration]\nkind = "isotonic"\nmin_bucket = 50\n'))
    trained = train(load_config(tmp_path / "engine.toml"), progress=False)
    loaded = load_artifact(save_artifact(trained, tmp_path / "artifact"))
    knots = {k: v for k, v in loaded.model.state_dict().items() if k.endswith("knot_logits")}
    assert knots and all(bool(v.any()) for v in knots.values())  # fitted, saved, loaded
    generator = torch.Generator().manual_seed(0)
    arrays = [(torch.randint(0, 3, t.shape, generator=generator) if t.dtype == torch.long
               else torch.randn(t.shape, generator=generator)).numpy()
              for t in example_inputs(loaded, 64)]
    answers = {}
    for name in ("torch", "onnxruntime"):
        backend = backend_class(loaded.engine, name)(loaded)
        answers[name] = backend(arrays[0], arrays[1], arrays[2:])
        backend.close()
    for got, want in zip(answers["onnxruntime"], answers["torch"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # values relatively
