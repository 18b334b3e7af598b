"""Export a trained model for serving elsewhere: TorchScript or ONNX.

The exported graph takes the *encoded* inputs (the artifact's ``pipeline.json`` holds the
vocabularies and normalisers) and returns ``[B, T + 1]``: the entire-space prediction of every
task in graph order, then the fused score (:class:`rankengine.scoring.ScoringModule`, the
scoring path every command runs). Outputs match rankengine's own within 1e-5.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rankengine.bundle import ModelBundle
from rankengine.device import device_of
from rankengine.errors import ArtifactError, RankEngineError
from rankengine.files import os_reason
from rankengine.scoring import PredictionModule, ScoringModule


def _id_list_features(loaded: ModelBundle) -> list[tuple[str, int]]:
    """Name and length (ids per row, asked of its encoder) of each ``id_list`` feature, in
    layout order."""
    pipeline = loaded.pipeline
    encoders = dict(zip((f.name for f in pipeline.features), pipeline.encoders, strict=True))
    return [(f.name, int(encoders[f.name].length))
            for f in sorted(pipeline.layout(), key=lambda f: f.column) if f.output == "id_list"]


def example_inputs(loaded: ModelBundle, rows: int = 4) -> tuple[torch.Tensor, ...]:
    """Zeros shaped like the model's input ``(ids, dense, *id_lists)`` with ``rows`` rows."""
    layout = loaded.pipeline.layout()
    n_ids = sum(1 for f in layout if f.output == "ids")
    n_dense = sum(f.dim for f in layout if f.output == "dense")
    # fewer sequence rows than rows (one per context, read by row b mod R), so the exported
    # graph keeps the two counts apart: a served request sends its context's sequences once
    id_lists = [torch.ones(max(rows // 2, 1), length, dtype=torch.long)
                for _, length in _id_list_features(loaded)]
    return (torch.zeros(rows, n_ids, dtype=torch.long), torch.zeros(rows, n_dense), *id_lists)


def input_names(loaded: ModelBundle) -> list[str]:
    """The exported graph's input names: ``ids``, ``dense``, then each ``id_list`` feature's
    name."""
    names = ["ids", "dense", *(name for name, _ in _id_list_features(loaded))]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ArtifactError(f"cannot export: id_list feature '{clash[0]}' has the name of "
                            f"another input of the exported graph ({', '.join(names)}); "
                            f"rename the feature")
    return names


def export(loaded: ModelBundle, output: Path, fmt: str, *,
           module: nn.Module | None = None, output_names: tuple[str, ...] = ("predictions",)
           ) -> Path:
    """Write ``module`` (default: :class:`ScoringModule`) to ``output``, atomically."""
    module = (module or ScoringModule(loaded.model, loaded.fusion)).eval()
    if device_of(module).type != "cpu":  # the graph is device-free: traced from a CPU copy
        module = copy.deepcopy(module).cpu()
    inputs = example_inputs(loaded)
    if not output.name or output.name in (".", ".."):
        raise ArtifactError(f"{str(output) or repr('')}: expected a file name to export to")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission
        raise ArtifactError(f"{output}: cannot create its folder: "
                            f"{os_reason(exc)}") from None
    # Written under the final name in a private folder beside it: ONNX keeps large weights in
    # a NAME.data file it references by name, so that name must be the final one too.
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as exc:
        raise ArtifactError(f"{output}: cannot write the export: {os_reason(exc)}") from None
    try:
        _write(module, inputs, loaded, staging / output.name, fmt, output_names)
        sidecar = staging / external_data(output).name
        if sidecar.exists():
            sidecar.replace(external_data(output))
        (staging / output.name).replace(output)
    except OSError as exc:
        raise ArtifactError(f"{output}: cannot write the export: {os_reason(exc)}") \
            from None
    finally:  # no temporary file left beside the output
        shutil.rmtree(staging, ignore_errors=True)
    return output


def external_data(output: Path) -> Path:
    """Where an ONNX export keeps the weights it does not embed."""
    return output.with_name(f"{output.name}.data")


def _write(module: nn.Module, inputs: tuple[torch.Tensor, ...], loaded: ModelBundle, tmp: Path,
           fmt: str, output_names: tuple[str, ...]) -> None:
    # torch warns that jit.trace is deprecated and that the fusion weights become constants;
    # both are expected here, and callers running with -W error must not fail on them.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]  # torch: unannotated
                module, inputs, check_trace=False)
            torch.jit.save(traced, str(tmp))
        elif fmt == "onnx":
            batch = torch.export.Dim("batch", min=1)
            contexts = torch.export.Dim("contexts", min=1)
            # forward(ids, dense, *id_lists): the varargs are one nested tuple.
            shapes: Any = ({0: batch}, {0: batch}, tuple({0: contexts} for _ in inputs[2:]))
            torch.onnx.export(module, inputs, str(tmp), dynamo=True, dynamic_shapes=shapes,
                              input_names=input_names(loaded), output_names=list(output_names),
                              verbose=False)
        else:
            raise RankEngineError(f"unknown export format '{fmt}'; expected onnx or torchscript")


def reference_outputs(loaded: ModelBundle, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    with torch.inference_mode():
        result: np.ndarray = ScoringModule(loaded.model, loaded.fusion)(*inputs).cpu().numpy()
    return result


__all__ = ["PredictionModule", "ScoringModule", "example_inputs", "export", "input_names",
           "reference_outputs"]
