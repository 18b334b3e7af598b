"""Artifact storage for registered versions, and the train → register → load round trip.

An artifact is the directory :func:`rankengine.artifact.save_artifact` writes. Its digest is the
sha256 of its manifest, which lists the sha256 of every file, so one recorded hash pins every
byte. URIs are ``file://`` today; the scheme leaves room for object stores.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from rankengine.artifact import MANIFEST, LoadedModel, json_safe, load_artifact, save_artifact
from rankengine.config import EngineConfig
from rankengine.data.io import open_dataset, shard_files
from rankengine.errors import ArtifactError
from rankengine.registry.store import ModelVersion, RegistryError, RegistryStore
from rankengine.train import Trained

#: Version tag holding fusion weights that replace the config's at load time (``task=w,...``).
FUSION_WEIGHTS_TAG = "fusion_weights"


def uri_for(root: Path, model: str, version: int) -> str:
    return (root / model / str(version)).resolve().as_uri()


def path_of(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ArtifactError(f"artifact URI scheme '{parsed.scheme}' is not supported ({uri})")
    return Path(unquote(parsed.path))


def digest(path: Path) -> tuple[str, int]:
    """(sha256 of the manifest, total bytes of the artifact directory)."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST}; the artifact is incomplete")
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return hashlib.sha256(manifest.read_bytes()).hexdigest(), size


def data_fingerprint(config: EngineConfig, rows: dict[str, int]) -> dict[str, Any]:
    """Paths, sizes, row counts and a hash of the schema of every data source."""
    sources: dict[str, Any] = {}
    for split in ("train", "valid", "test"):
        raw = getattr(config.data, split)
        if not raw:
            continue
        path = config.resolve_path(raw)
        files = shard_files(path) if path.is_dir() else [path]
        schema = open_dataset(path, format=config.data.format, csv=config.data.csv).schema
        sources[split] = {
            "path": str(path.resolve()), "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "schema_sha256": hashlib.sha256(schema.to_string().encode()).hexdigest(),
        }
    return {"sources": sources, "rows": rows}


def register(store: RegistryStore, root: Path, trained: Trained, model: str, *,
             tags: dict[str, Any] | None = None,
             parent_version: int | None = None) -> ModelVersion:
    """Record a pending version, write its artifact atomically, then mark it ready."""
    result = trained.result
    version = store.create_version(
        model, config=trained.config.resolved_dict(), task_graph=trained.graph.to_dict(),
        plugins=trained.engine.plugin_versions(),
        data_fingerprint=data_fingerprint(trained.config, result.rows),
        parent_version=parent_version, tags=tags,
    )
    target = root / model / str(version.version)
    try:
        save_artifact(trained, target)
        sha, size = digest(target)
    except BaseException:
        store.set_status(model, version.version, "failed")
        raise
    metrics = {"splits": result.metrics, "best_epoch": result.best_epoch,
               "loss_weights": result.loss_weights, "gate_stats": result.gate_stats,
               "loss_weight_history": [h["loss_weights"] for h in result.history],
               "samples_per_second": result.samples_per_second}
    return store.mark_ready(model, version.version, artifact_uri=uri_for(root, model,
                                                                          version.version),
                            artifact_sha256=sha, artifact_size=size, metrics=json_safe(metrics))


def load_version(store: RegistryStore, ref: str, *,
                 apply_tags: bool = True) -> tuple[ModelVersion, LoadedModel]:
    """Resolve ``NAME@ALIAS`` / ``NAME/VERSION`` / ``NAME`` and load its verified artifact.

    With ``apply_tags`` a ``fusion_weights`` tag replaces the artifact's fusion weights.
    """
    version = store.resolve(ref)
    if version.status != "ready" or not version.artifact_uri:
        raise RegistryError(f"{version.ref} is {version.status}; only ready versions load")
    path = path_of(version.artifact_uri)
    sha, _ = digest(path)
    if sha != version.artifact_sha256:
        raise ArtifactError(
            f"{path / MANIFEST}: sha256 {sha[:12]}… does not match the registry's "
            f"{(version.artifact_sha256 or '')[:12]}… for {version.ref}; the artifact was "
            f"modified or replaced")
    loaded = load_artifact(path)
    if apply_tags and version.tags.get(FUSION_WEIGHTS_TAG):  # by `tune-fusion --write`
        from rankengine.tune import apply_fusion_weights

        loaded = apply_fusion_weights(loaded, version.tags[FUSION_WEIGHTS_TAG],
                                      where=f"{version.ref} tag {FUSION_WEIGHTS_TAG}")
    return version, loaded
