"""``rankengine export``: a model as ONNX or TorchScript, checked against rankengine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rankengine.cli.common import load_model
from rankengine.errors import RankEngineError


@click.command()
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--registry", default=None, help="registry URL for NAME@ALIAS references")
def export(model: str, fmt: str, output: Path, registry: str | None) -> None:
    """Export MODEL to ONNX or TorchScript (encoded inputs in, predictions + score out)."""
    from rankengine.export import export as run_export
    from rankengine.export import external_data, input_names

    suffixes = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts", ".torchscript")}
    other = next(f for f in suffixes if f != fmt)
    if output.suffix.lower() in suffixes[other]:  # a runtime would try to load the wrong kind
        raise click.BadParameter(f"{output} names a {other} file but --format is {fmt}",
                                 param_hint="-o")
    if fmt == "onnx":  # needed to check the file: fail before writing it
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise RankEngineError("--format onnx needs onnx and onnxruntime: pip install "
                                  "'rankengine[export]'") from None
    loaded = load_model(model, registry)
    path = run_export(loaded, output, fmt)
    try:
        diff = _check_export(loaded, path, fmt)
    except BaseException:  # an unchecked file is not left behind as if it were good
        path.unlink(missing_ok=True)
        external_data(path).unlink(missing_ok=True)
        raise
    weights = external_data(path)
    beside = f"; keep {weights.name} beside it: the weights" if weights.exists() else ""
    click.echo(f"wrote {path} (inputs: {', '.join(input_names(loaded))}; outputs: "
               f"{', '.join(loaded.graph.names)}, score; max |diff| {diff:.1e}{beside})")


def _check_export(loaded: Any, path: Path, fmt: str) -> float:
    """The largest difference between the exported model's outputs and rankengine's."""
    import numpy as np
    import torch

    from rankengine.export import example_inputs, input_names, reference_outputs

    inputs = example_inputs(loaded, 16)
    generator = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randint(0, 2, t.shape, generator=generator) if t.dtype == torch.long
                   else torch.randn(t.shape, generator=generator) for t in inputs)
    want = reference_outputs(loaded, inputs)
    if fmt == "torchscript":
        import warnings

        with warnings.catch_warnings():  # torch.jit.load's deprecation notice; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            got = torch.jit.load(str(path))(*inputs).detach().numpy()  # type: ignore[no-untyped-call]
    else:  # run by the serving back end that reads such files
        from rankengine.backend import reader_of

        reader = reader_of(loaded.engine, fmt)
        if reader is None:
            raise click.ClickException(f"cannot check the {fmt} export: no serving back end of "
                                       f"the model's plugins reads {fmt} files")
        got = reader.run_exported(path, {n: t.numpy() for n, t in zip(
            input_names(loaded), inputs, strict=True)})[0]
    diff = float(np.abs(got - want).max())
    if not diff <= 1e-5:  # NaN fails too
        raise click.ClickException(f"exported {fmt} differs from rankengine by {diff:.2e}")
    return diff
