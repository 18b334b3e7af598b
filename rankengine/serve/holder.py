"""The served model: loaded off the event loop, swapped atomically, reloaded when the alias moves
or the version's fusion weights tag changes."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import torch

from rankengine.backend import Predictor, ServingBackend, backend_class
from rankengine.bundle import ModelBundle
from rankengine.errors import RankEngineError
from rankengine.pluginmanager import Engine, load_engine
from rankengine.registry.artifacts import FUSION_WEIGHTS_TAG, load_version
from rankengine.registry.store import ModelVersion, RegistryStore

log = logging.getLogger("rankengine.serve")


@dataclass(frozen=True)
class Served:
    """One loaded version; replaced as a whole, never mutated.

    ``loaded`` carries the fusion in effect: the artifact's own (``artifact``), or the weights
    of the version's ``fusion_weights`` tag (``fusion_tag``) when it has one.
    """

    name: str
    version: int
    loaded: ModelBundle
    predict: Predictor
    artifact: ModelBundle
    fusion_tag: Any = None  # the tag as stored: "task=w,..." or an object


def with_fusion_tag(artifact: ModelBundle, tag: Any, where: str) -> ModelBundle:
    if not tag:
        return artifact
    from rankengine.fusion import apply_fusion_weights

    return apply_fusion_weights(artifact, tag, where=f"{where} tag {FUSION_WEIGHTS_TAG}")


def engine_of(version: ModelVersion) -> Engine:
    """The plugins ``version`` was trained with (what its back ends are looked up in)."""
    return load_engine(list(version.plugins))


def serving_backend(engine: Engine, name: str | None, where: str) -> type[ServingBackend]:
    """Back end ``name`` (``None``: the default) of the engine of model ``where``; an unknown
    name is one line listing the registered back ends."""
    try:
        return backend_class(engine, name)
    except RankEngineError as exc:
        why = "" if engine.components.backends.names() else (
            f" (the model's plugins, {', '.join(engine.plugins)}, register none)"
            if engine.plugins else " (the model uses no plugin)")
        raise RankEngineError(f"{where}: {exc}{why}") from None


class ModelHolder:
    """Holds the current :class:`Served`; ``ref`` is ``NAME``, ``NAME@ALIAS`` or ``NAME/N``.

    ``backend`` names the serving back end that runs the forward pass, looked up in the
    plugins of each loaded version (``None``: their default back end); ``threads`` is the
    thread budget it gets.
    """

    def __init__(self, store: RegistryStore, ref: str, *, backend: str | None = None,
                 threads: int = 1, device: torch.device | None = None) -> None:
        self.backend, self.threads = backend, threads
        #: where each loaded version's model runs (the torch back end scores there; the
        #: ONNX Runtime back end takes its CUDA execution provider for a CUDA device)
        self.device = device
        self.store = store
        self.ref = ref
        self.name = ref.split("@")[0].split("/")[0]
        self.current: Served | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one load at a time; readers never wait
        self._stop = threading.Event()
        if backend is not None:
            self._check_backend(backend)

    def _check_backend(self, name: str) -> None:
        """Refuse an unknown back end now if the reference resolves (else :meth:`load` says
        what is wrong with it)."""
        try:
            target = self.store.resolve(self.ref)
        except Exception:
            return
        serving_backend(engine_of(target), name, target.ref)

    def load(self) -> Served:
        """Resolve the reference and load it unless it is already served; a version whose
        ``fusion_weights`` tag changed keeps its model and gets the new fusion."""
        with self._lock:
            current = self.current
            try:
                target = self.store.resolve(self.ref)
                tag = target.tags.get(FUSION_WEIGHTS_TAG) or None
                if current is not None and current.version == target.version:
                    if current.fusion_tag == tag:
                        return current
                    artifact, predict = current.artifact, current.predict
                else:
                    _, artifact = load_version(self.store, target.ref, apply_tags=False,
                                               device=self.device)
                    backend = serving_backend(artifact.engine, self.backend, target.ref)
                    predict = backend(artifact, threads=self.threads)
                loaded = with_fusion_tag(artifact, tag, target.ref)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("loading %s (%s back end) failed, keeping %s: %s", self.ref,
                          self.backend or "default", current.version if current else "nothing",
                          exc)
                raise
            served = Served(target.model, target.version, loaded, predict, artifact, tag)
            self.current = served  # one reference assignment: an atomic swap
            self.last_error = None
            if current is not None and current.predict is not predict:
                _close(current.predict)
            log.info("serving %s/%s%s", served.name, served.version,
                     f" with fusion weights {tag}" if tag else "")
            return served

    def poll(self, interval: float) -> None:
        """Reload whenever the reference resolves to another version (runs in a thread)."""
        while not self._stop.wait(interval):
            try:
                self.load()
            except Exception:
                continue

    def start_polling(self, interval: float) -> threading.Thread:
        thread = threading.Thread(target=self.poll, args=(interval,), daemon=True,
                                  name="rankengine-reload")
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        current = self.current
        if current is not None:
            _close(current.predict)


def _close(predict: Predictor) -> None:
    """Close a back end that is no longer served; its failure is logged, not raised (the new
    version is served already)."""
    close = getattr(predict, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception as exc:
        log.warning("closing the replaced serving back end failed: %s", exc)
