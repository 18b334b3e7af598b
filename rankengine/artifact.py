"""Self-contained model artifacts: weights (safetensors), fitted features, config, metrics.

A directory is written next to its destination under a temporary name, every file fsynced,
then renamed into place, so a crash never leaves a half-written artifact where a complete one
is expected. Loading verifies every file's sha256 against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rankengine.bundle import ModelBundle
from rankengine.config import TaskSpec, parse_config
from rankengine.errors import ArtifactError, PluginError, RankEngineError, one_line
from rankengine.files import fsync_directory
from rankengine.graph import TaskGraph
from rankengine.plan import make_plan
from rankengine.pluginmanager import Engine, check_model_plugins, load_engine

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def to_json(data: Any) -> str:
    """JSON with NaN / inf written as null (strict JSON has no NaN)."""
    return json.dumps(json_safe(data), indent=2, sort_keys=False, default=_json_default) + "\n"


def json_safe(data: Any) -> Any:
    """NaN and infinity become None, recursively (strict JSON has no NaN)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def save_artifact(trained: ModelBundle, destination: str | Path, *,
                  overwrite: bool = False) -> Path:
    """Write the trained model to ``destination`` atomically; returns the directory."""
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise ArtifactError(f"{destination} already exists; pass --overwrite to replace it")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        state = {k: v.detach().contiguous().clone() for k, v in trained.model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        with (tmp / WEIGHTS).open("rb") as fh:
            os.fsync(fh.fileno())
        result = trained.training
        files = {
            "config.json": trained.config.resolved_dict(),
            "tasks.json": {n.name: n.spec.model_dump(mode="json") for n in trained.graph.nodes},
            "pipeline.json": trained.pipeline.state(),
            "metrics.json": {
                "metrics": result.metrics, "history": result.history,
                "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                "train_seconds": result.train_seconds,
                "samples_per_second": result.samples_per_second,
                "label_reports": result.label_reports, "loss_weights": result.loss_weights,
                "gate_stats": result.gate_stats,
                "uncalibrated_metrics": result.uncalibrated_metrics,
                "calibrator": result.calibration,
                "odds_correction": result.odds_correction,
            },
        }
        for name, payload in files.items():
            _write(tmp / name, to_json(payload))
        from rankengine.version import __version__

        manifest = {
            "format_version": FORMAT_VERSION,
            "rankengine_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "plugins": trained.engine.plugin_versions(),
            "plugin_distributions": trained.engine.plugin_distributions(),
            "task_graph": trained.graph.to_dict(),
            "data": result.data_sources,
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())},
        }
        _write(tmp / MANIFEST, to_json(manifest))
        fsync_directory(tmp)
        if destination.exists():
            old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            destination.rename(old)
            tmp.rename(destination)
            shutil.rmtree(old)
        else:
            tmp.rename(destination)
        fsync_directory(destination.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return destination


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if manifest_path.is_symlink():
        raise ArtifactError(f"{manifest_path}: is a symbolic link; an artifact holds its files "
                            f"itself")
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: not a rankengine artifact (no {MANIFEST})")
    manifest = read_json(manifest_path)
    if not isinstance(manifest.get("files"), dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in manifest["files"].items()):
        raise ArtifactError(f"{manifest_path}: 'files' must map file names to sha256 digests")
    plugins, distributions = manifest.get("plugins"), manifest.get("plugin_distributions")
    if not isinstance(plugins, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in plugins.items()):
        raise ArtifactError(f"{manifest_path}: 'plugins' must map plugin names to versions, "
                            f"found {one_line(repr(plugins))[:80]}")
    if distributions is not None and not isinstance(distributions, dict):
        raise ArtifactError(f"{manifest_path}: 'plugin_distributions' must be an object, found "
                            f"{type(distributions).__name__}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format {manifest.get('format_version')} is not supported by "
            f"this rankengine (format {FORMAT_VERSION})"
        )
    return manifest


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from an artifact file; anything else is an ArtifactError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing; the artifact is incomplete") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable JSON file ({exc}); the artifact is "
                            f"corrupted") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object, found {type(data).__name__}; the "
                            f"artifact is corrupted")
    return data


#: files every artifact lists in its manifest (so every file loading reads is checked)
REQUIRED_FILES = (WEIGHTS, "config.json", "tasks.json", "pipeline.json", "metrics.json")


def verify_artifact(path: Path, manifest: dict[str, Any]) -> None:
    unlisted = [name for name in REQUIRED_FILES if name not in manifest["files"]]
    if unlisted:
        raise ArtifactError(f"{path / MANIFEST}: 'files' does not list {unlisted[0]}; the "
                            f"artifact is incomplete")
    for name, expected in manifest["files"].items():
        file = path / name
        if Path(name).name != name or name in (".", ".."):  # names only, never paths
            raise ArtifactError(f"{path / MANIFEST}: file entry {name!r} is not a plain file "
                                f"name")
        if file.is_symlink():  # never follow a link out of the artifact (/etc/passwd ...)
            raise ArtifactError(f"{file}: is a symbolic link; an artifact holds its files "
                                f"itself")
        if not file.is_file():
            raise ArtifactError(f"{path}: file {name} listed in the manifest is missing")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(
                f"{file}: sha256 mismatch (manifest {expected[:12]}…, file {actual[:12]}…); "
                f"the artifact is corrupted or was modified"
            )


def load_artifact(path: str | Path, *, engine: Engine | None = None,
                  device: torch.device | None = None) -> ModelBundle:
    """Read an artifact, verify its checksums and rebuild the model with the same plugins
    (its weights read on the CPU, whatever device wrote them; then moved to ``device``)."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_artifact(path, manifest)
    config = parse_config(read_json(path / "config.json"),
                          source=str(path / "config.json"), base_dir=path)
    if engine is None:
        try:
            check_model_plugins(manifest["plugins"], manifest.get("plugin_distributions"))
        except PluginError as exc:
            raise ArtifactError(f"{path}: {exc}") from exc
        try:
            engine = load_engine(list(manifest["plugins"]))
        except PluginError as exc:
            raise ArtifactError(
                f"{path}: the model was trained with plugins {manifest['plugins']}; {exc}"
            ) from exc
    try:
        tasks = {name: TaskSpec.model_validate(spec)
                 for name, spec in read_json(path / "tasks.json").items()}
    except ValidationError as exc:
        raise ArtifactError(f"{path / 'tasks.json'}: not a task graph ("
                            f"{exc.errors()[0]['msg']}); the artifact is corrupted") from None
    try:
        graph = TaskGraph(tasks)
    except RankEngineError as exc:
        raise ArtifactError(f"{path / 'tasks.json'}: {exc}") from None
    # A ConfigError naming config.json and the key (a fusion weight that names no task, from a
    # model trained before fusions were built ahead of training), never a raw ValueError.
    plan = make_plan(config, engine, graph=graph)
    pipeline = plan.pipeline
    pipeline_state = read_json(path / "pipeline.json")
    try:
        pipeline.load_state(pipeline_state)
    except RankEngineError as exc:
        raise ArtifactError(f"{path / 'pipeline.json'}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        # a plugin's load_state reading a damaged state: name the file, not the Python error
        raise ArtifactError(f"{path / 'pipeline.json'}: fitted feature state does not load "
                            f"({type(exc).__name__}: {exc}); the artifact is corrupted") from None
    model = plan.build_model(pipeline.layout())
    try:
        state = load_file(str(path / WEIGHTS))
        expected = model.state_dict()
        for key, tensor in state.items():
            # load_state_dict casts silently: int8 or bool weights would load truncated
            if key in expected and tensor.dtype != expected[key].dtype:
                raise ArtifactError(f"{path / WEIGHTS}: tensor '{key}' is {tensor.dtype}, the "
                                    f"model expects {expected[key].dtype}; the artifact is "
                                    f"corrupted")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ArtifactError(f"{path / WEIGHTS}: tensor '{key}' holds a value that is "
                                    f"not a finite number; the artifact is corrupted")
        missing, unexpected = model.load_state_dict(state, strict=False)
        # artifacts from before the bias tower's reference dropped its logit at scoring,
        # which is what the reference's initial 0 does
        missing = [key for key in missing if key != "bias.reference"]
    except (OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"{path / WEIGHTS}: weights do not load ({one_line(str(exc))}); "
                            f"the artifact is corrupted") from None
    if missing or unexpected:
        raise ArtifactError(
            f"{path}: weights do not match the model built from its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.eval()
    if device is not None:
        model.to(device)
    return ModelBundle(plan, model, path=path, manifest=manifest,
                       metrics=read_json(path / "metrics.json"))



