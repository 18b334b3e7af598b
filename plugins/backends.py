"""Serving back ends: the torch model itself, or the model exported to ONNX and run by ONNX
Runtime (a 1.2 to 2 times faster forward on CPU)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankengine import RankEngineError, Register, ServingBackend, device_of, hookimpl


@hookimpl
def rankengine_register_backends(register: Register[type[ServingBackend]]) -> None:
    register("torch", TorchBackend, default=True,
             help="the torch model, one forward pass per request")
    register("onnxruntime", OnnxRuntimeBackend,
             help="the model exported to ONNX at load time and run by ONNX Runtime "
                  "(needs rankengine[export])")


class TorchBackend(ServingBackend):
    """One forward pass of the torch model per request; the process's torch thread budget
    applies (the server sets it)."""

    def predict(self, ids: np.ndarray, dense: np.ndarray,
                id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.run_torch(ids, dense, id_lists)


class OnnxRuntimeBackend(ServingBackend):
    """The model exported to ONNX once at load time, run by ONNX Runtime on the CPU with the
    thread budget as its intra-op threads. Also checks ``rankengine export --format onnx``."""

    reads = "onnx"

    @classmethod
    def check_available(cls) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RankEngineError("the onnxruntime serving back end needs onnxruntime: "
                                  "pip install 'rankengine[export]'") from None

    def setup(self) -> None:
        self.check_available()
        with tempfile.TemporaryDirectory(prefix="rankengine-onnx-") as workdir:
            path = self.export_predictions(Path(workdir) / "model.onnx", "onnx")
            # reads the weights: the folder can go; on CUDA when the model was loaded there
            self.session = _session(path, self.threads,
                                    cuda=device_of(self.loaded.model).type == "cuda")
        self.names = self.input_names()

    def predict(self, ids: np.ndarray, dense: np.ndarray,
                id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feeds = dict(zip(self.names, [ids, dense, *id_lists], strict=True))
        entire, conditional = self.session.run(None, feeds)
        return entire.astype(np.float64), conditional.astype(np.float64)

    @classmethod
    def run_exported(cls, path: Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        cls.check_available()
        return list(_session(path, 1).run(None, dict(inputs)))


def _session(path: Path, threads: int, *, cuda: bool = False) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=session_providers(
        cuda, onnxruntime.get_available_providers()))


def session_providers(cuda: bool, available: Sequence[str]) -> list[str]:
    """ONNX Runtime's CUDA execution provider first when the model is served on a GPU and
    this onnxruntime has it (the ``onnxruntime-gpu`` build); the CPU provider always."""
    if cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
