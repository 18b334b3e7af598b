"""Artifact storage for registered versions, and the train → register → load round trip.

An artifact is the directory :func:`rankengine.artifact.save_artifact` writes. Its digest is the
sha256 of its manifest, which lists the sha256 of every file, so one recorded hash pins every
byte. URIs are ``file://`` today; the scheme leaves room for object stores.

Version N of model M lives in ``<root>/M/N``. Model names are checked by
:func:`rankengine.registry.store.check_model_name`, so M is always one safe path component,
and every path written or removed here is checked to lie inside the resolved artifact root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from rankengine.artifact import MANIFEST, json_safe, load_artifact, save_artifact
from rankengine.bundle import ModelBundle
from rankengine.config import EngineConfig
from rankengine.data.source import SourceTable, open_source
from rankengine.errors import ArtifactError, RankEngineError, one_line
from rankengine.fusion import FUSION_WEIGHTS_TAG as FUSION_WEIGHTS_TAG  # named here too
from rankengine.fusion import apply_fusion_weights
from rankengine.pluginmanager import IN_PROCESS
from rankengine.registry.errors import RegistryError
from rankengine.registry.store import ModelVersion, RegistryStore, check_model_name

if TYPE_CHECKING:
    import torch


def inside(root: Path, path: Path, *, what: str = "artifact path") -> Path:
    """``path`` resolved, or an :class:`ArtifactError` unless it lies strictly inside ``root``.

    Symbolic links are followed on both sides, so a link that leads out of the root is caught.
    """
    real_root, real = Path(root).resolve(), Path(path).resolve()
    if real == real_root or not real.is_relative_to(real_root):
        raise ArtifactError(f"{what} {path} is not inside the artifact root {real_root}; "
                            f"refusing to touch it")
    return real


def artifact_dir(root: Path, model: str, version: int) -> Path:
    """``<root>/<model>/<version>`` for a valid model name, checked to be inside ``root``."""
    model = check_model_name(model)
    return inside(root, Path(root) / model / str(int(version)))


def remove_tree(path: Path, root: Path) -> bool:
    """Remove a directory (or file) that lies inside ``root``; never follows a link out."""
    if not path.exists() and not path.is_symlink():
        return False
    if path.is_symlink():  # the link itself, never what it points at
        inside(root, path.parent, what="artifact folder")
        path.unlink()
        return True
    inside(root, path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return True


def stored_artifact(version: ModelVersion) -> Path | None:
    """The existing artifact folder of a version, checked to be ``<root>/<model>/<version>``.

    None when the version has no artifact or its folder is gone. A URI whose folder is not
    named for this model and version (a registry row edited by hand, or written by a
    rankengine that accepted names such as ``..``) is refused, so deleting one version can
    never remove another model's files.
    """
    if not version.artifact_uri:
        return None
    path = path_of(version.artifact_uri)
    if not path.exists() and not path.is_symlink():
        return None
    if path.name != str(version.version) or \
            unicodedata.normalize("NFC", path.parent.name) != version.model:
        raise ArtifactError(f"{version.ref}: its artifact {path} is not <root>/{version.model}/"
                            f"{version.version}; refusing to delete it")
    inside(path.parent.parent, path)
    return path


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


def data_fingerprint(config: EngineConfig, rows: dict[str, int],
                     sources_table: SourceTable) -> dict[str, Any]:
    """Paths, sizes, row counts and a hash of the schema of every data source."""
    sources: dict[str, Any] = {}
    for split in ("train", "valid", "test"):
        raw = getattr(config.data, split)
        if not raw:
            continue
        path = config.resolve_path(raw)
        source = open_source(path, sources_table, format=config.data.format, csv=config.data.csv)
        files, schema = source.files(), source.schema()
        sources[split] = {
            "path": str(path.resolve()), "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
            "schema_sha256": hashlib.sha256(schema.to_string().encode()).hexdigest(),
        }
    return {"sources": sources, "rows": rows}


def register(store: RegistryStore, root: Path, trained: ModelBundle, model: str, *,
             tags: dict[str, Any] | None = None,
             parent_version: int | None = None) -> ModelVersion:
    """Record a pending version, write its artifact atomically, load it back, mark it ready.

    A version is ready only once its saved artifact has loaded back (checksums verified,
    every plugin rebuilt, a ``fusion_weights`` tag applied). On any failure the version is
    marked failed, an artifact this call wrote is removed, and the error is raised as one
    line. A registration killed outright leaves a pending version and a hidden temporary
    folder; ``rankengine models gc`` marks the first failed and removes the second.
    """
    model = check_model_name(model)
    root = Path(root)
    artifact_dir(root, model, 1)  # an unusable root fails before a version is recorded
    result = trained.training
    version = store.create_version(
        model, config=trained.config.resolved_dict(), task_graph=trained.graph.to_dict(),
        plugins=trained.engine.plugin_versions(),
        data_fingerprint=data_fingerprint(trained.config, result.rows,
                                          trained.engine.components.sources),
        parent_version=parent_version, tags=tags,
    )
    written: Path | None = None
    try:
        target = artifact_dir(root, model, version.version)
        save_artifact(trained, target)  # refuses a folder that exists: never another's files
        written = target
        sha, size = digest(target)
        # Load back as a fresh process would (plugins found again by name), unless a plugin
        # lives only in this process (tests, notebooks): then with the engine that trained.
        in_process = IN_PROCESS in trained.engine.plugin_distributions().values()
        loaded = load_artifact(target, engine=trained.engine if in_process else None)
        if tags and tags.get(FUSION_WEIGHTS_TAG):
            apply_fusion_weights(loaded, tags[FUSION_WEIGHTS_TAG],
                                 where=f"{version.ref} tag {FUSION_WEIGHTS_TAG}")
        metrics = {"splits": result.metrics, "best_epoch": result.best_epoch,
                   "loss_weights": result.loss_weights, "gate_stats": result.gate_stats,
                   "loss_weight_history": [h["loss_weights"] for h in result.history],
                   "samples_per_second": result.samples_per_second}
        if result.calibration:  # the model's own metrics next to the calibrated ones
            metrics["uncalibrated_splits"] = result.uncalibrated_metrics
            metrics["calibrator"] = result.calibration
        if result.odds_correction:
            metrics["odds_correction"] = result.odds_correction
        return store.mark_ready(model, version.version, artifact_uri=target.as_uri(),
                                artifact_sha256=sha, artifact_size=size,
                                metrics=json_safe(metrics))
    except BaseException as exc:
        notes = _abandon(store, root, version, written)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: as they are
            raise
        text = one_line(str(exc)) or type(exc).__name__
        raise RegistryError(f"registering {version.ref} failed: {text}; {notes}") from exc


def _abandon(store: RegistryStore, root: Path, version: ModelVersion,
             written: Path | None) -> str:
    """Mark a registration failed and remove what it wrote; says what happened."""
    notes = []
    try:
        store.set_status(version.model, version.version, "failed")
        notes.append("the version is marked failed")
    except RankEngineError as exc:
        notes.append(f"marking it failed did not work either ({exc}); "
                     f"`rankengine models gc` will")
    if written is not None:
        try:
            remove_tree(written, root)
            notes.append("its artifact was removed")
        except (OSError, RankEngineError) as exc:
            notes.append(f"its artifact {written} could not be removed ({exc})")
    return ", ".join(notes)


@dataclass
class Collected:
    """What :func:`collect_garbage` did."""

    failed: list[str] = field(default_factory=list)  # NAME/VERSION marked failed
    removed: list[Path] = field(default_factory=list)  # leftover folders removed


def collect_garbage(store: RegistryStore, root: Path, *, older_than: float) -> Collected:
    """Fail versions pending for ``older_than`` seconds and remove failed versions' leftovers.

    Leftovers of a failed version N of model M are the temporary folders ``<root>/M/.N.*``
    that an interrupted save leaves (removed once they are ``older_than`` seconds old), and
    ``<root>/M/N`` itself when the version never became ready (no registry row claims it).
    Nothing outside the resolved artifact root is touched, links are removed, not followed,
    and a folder that is some other version's recorded artifact (two names that differ only
    in case, on a case-insensitive file system) is kept.
    """
    root = Path(root)
    done = Collected(failed=[v.ref for v in store.fail_stale_pending(older_than)])
    if not root.is_dir():
        return done
    versions = store.list_all_versions()
    claimed = [p for v in versions if v.status != "failed"
               for p in [_claimed_path(v)] if p is not None]
    cutoff = time.time() - older_than
    for v in (v for v in versions if v.status == "failed"):
        folder = Path(root) / v.model
        if not folder.is_dir() or folder.is_symlink():
            continue
        candidates = [p for p in folder.iterdir() if p.name.startswith(f".{v.version}.")
                      and p.lstat().st_mtime <= cutoff]
        if not v.artifact_uri:
            candidates.append(folder / str(v.version))
        for path in candidates:
            if any(_same(path, other) for other in claimed):
                continue
            if remove_tree(path, root):
                done.removed.append(path)
    return done


def _claimed_path(version: ModelVersion) -> Path | None:
    try:
        return path_of(version.artifact_uri) if version.artifact_uri else None
    except ArtifactError:
        return None


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def load_version(store: RegistryStore, ref: str, *, apply_tags: bool = True,
                 device: torch.device | None = None) -> tuple[ModelVersion, ModelBundle]:
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
    loaded = load_artifact(path, device=device)
    if apply_tags and version.tags.get(FUSION_WEIGHTS_TAG):  # by `tune-fusion --write`
        loaded = apply_fusion_weights(loaded, version.tags[FUSION_WEIGHTS_TAG],
                                      where=f"{version.ref} tag {FUSION_WEIGHTS_TAG}")
    return version, loaded
