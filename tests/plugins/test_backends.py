"""Serving back ends: the built-in torch and onnxruntime plugins, the table lookups the core
uses, and the export helpers they rest on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rankengine import PluginError, Register, ServingBackend, hookimpl
from rankengine.artifact import load_artifact, save_artifact
from rankengine.backend import backend_class, backend_component, reader_of
from rankengine.bundle import ModelBundle
from rankengine.config import load_config
from rankengine.errors import UnknownComponentError
from rankengine.export import example_inputs, export, input_names
from rankengine.pluginmanager import Engine, load_engine
from rankengine.scoring import ScoringModule
from rankengine.train import train

from ..conftest import tiny_config_text


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory, funnel_dir: Path) -> ModelBundle:
    root = tmp_path_factory.mktemp("backends")
    (root / "engine.toml").write_text(
        tiny_config_text(funnel_dir).replace("[train]\nepochs = 2", "[train]\nepochs = 1"))
    trained = train(load_config(root / "engine.toml"), progress=False)
    return load_artifact(save_artifact(trained, root / "artifact"))


def random_inputs(loaded: ModelBundle, rows: int = 32) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for t in example_inputs(loaded, rows):
        if t.dtype == torch.long:
            out.append(torch.randint(0, 3, t.shape, generator=generator).numpy())
        else:
            out.append(torch.randn(t.shape, generator=generator).numpy())
    return out


def test_the_builtin_back_ends_and_the_default(engine: Engine) -> None:
    table = engine.components.backends
    assert {"torch", "onnxruntime"} <= set(table.names())
    assert table.default().name == "torch"
    assert backend_class(engine) is table.get("torch").factory
    assert all(issubclass(c.factory, ServingBackend) for c in table)
    assert reader_of(engine, "onnx") is table.get("onnxruntime").factory
    assert reader_of(engine, "torchscript") is None


def test_an_unknown_back_end_lists_the_registered_ones(engine: Engine) -> None:
    with pytest.raises(UnknownComponentError, match=r"^unknown serving back end 'onnx'; "
                                                    r"available: onnxruntime, torch"):
        backend_component(engine, "onnx")


def test_a_back_end_that_is_not_a_serving_backend_class_is_refused() -> None:
    class Plugin:
        @hookimpl
        def rankengine_register_backends(self, register: Register) -> None:
            register("lambda", lambda loaded, threads=1: None)

    engine = load_engine(["backends"], extra=[("mine", Plugin())])
    with pytest.raises(PluginError, match=r"plugin 'mine' registered serving back end 'lambda' "
                                          r"as .*; expected a subclass of "
                                          r"rankengine.ServingBackend"):
        backend_component(engine, "lambda")


def test_exported_inputs_are_named_ids_dense_and_the_id_list_features(loaded: ModelBundle
                                                                     ) -> None:
    assert input_names(loaded) == ["ids", "dense", "user_hist_categories"]
    ids, dense, history = example_inputs(loaded, 6)
    sequence = next(e for f, e in zip(loaded.pipeline.features, loaded.pipeline.encoders,
                                      strict=True) if f.name == "user_hist_categories")
    # one sequence row per context (fewer than rows, so an export keeps the counts apart)
    assert history.shape == (3, sequence.length) == (3, 5)  # asked of the encoder
    layout = loaded.pipeline.layout()
    assert ids.shape == (6, sum(f.output == "ids" for f in layout))
    assert dense.shape == (6, sum(f.dim for f in layout if f.output == "dense"))


def test_the_torch_back_end_is_the_model(loaded: ModelBundle) -> None:
    backend = backend_class(loaded.engine)(loaded, threads=1)
    ids, dense, history = random_inputs(loaded)
    entire, conditional = backend(ids, dense, [history])
    assert entire.dtype == conditional.dtype == np.float64
    assert entire.shape == conditional.shape == (32, len(loaded.graph))
    with torch.inference_mode():
        scorer = ScoringModule(loaded.model, loaded.fusion)
        scored = scorer(*map(torch.from_numpy, (ids, dense, history))).numpy()
    np.testing.assert_allclose(entire, scored[:, :-1], atol=1e-6)
    backend.close()


def test_the_onnxruntime_back_end_matches_the_torch_one(loaded: ModelBundle) -> None:
    pytest.importorskip("onnxruntime")
    table = loaded.engine.components.backends
    by_torch = table.get("torch").factory(loaded, threads=1)
    by_onnx = table.get("onnxruntime").factory(loaded, threads=2)
    ids, dense, history = random_inputs(loaded)
    for want, got in zip(by_torch(ids, dense, [history]), by_onnx(ids, dense, [history]),
                         strict=True):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_onnx_reader_runs_an_exported_file(loaded: ModelBundle, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = export(loaded, tmp_path / "m.onnx", "onnx")
    reader = reader_of(loaded.engine, "onnx")
    assert reader is not None
    inputs = random_inputs(loaded, 8)
    got = reader.run_exported(path, dict(zip(input_names(loaded), inputs, strict=True)))[0]
    with torch.inference_mode():
        want = ScoringModule(loaded.model, loaded.fusion)(*map(torch.from_numpy, inputs)).numpy()
    assert got.shape == (8, len(loaded.graph) + 1)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_onnx_runtime_takes_its_cuda_provider_only_for_a_gpu_model_where_it_has_one() -> None:
    from rankengine_plugins.backends import session_providers

    cpu = ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_providers(True, both) == both
    assert session_providers(True, cpu) == cpu  # the CPU build of onnxruntime
    assert session_providers(False, both) == cpu
