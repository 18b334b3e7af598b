"""The served model: loaded off the event loop, swapped atomically, reloaded on alias moves."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from rankengine.artifact import LoadedModel
from rankengine.registry.artifacts import load_version
from rankengine.registry.store import RegistryStore

log = logging.getLogger("rankengine.serve")


@dataclass(frozen=True)
class Served:
    """One loaded version; replaced as a whole, never mutated."""

    name: str
    version: int
    loaded: LoadedModel


class ModelHolder:
    """Holds the current :class:`Served`; ``ref`` is ``NAME``, ``NAME@ALIAS`` or ``NAME/N``."""

    def __init__(self, store: RegistryStore, ref: str) -> None:
        self.store = store
        self.ref = ref
        self.name = ref.split("@")[0].split("/")[0]
        self.current: Served | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one load at a time; readers never wait
        self._stop = threading.Event()

    def load(self) -> Served:
        """Resolve the reference and load it unless it is already served."""
        with self._lock:
            current = self.current
            try:
                target = self.store.resolve(self.ref)
                if current is not None and current.version == target.version:
                    return current
                version, loaded = load_version(self.store, f"{target.model}/{target.version}")
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("loading %s failed, keeping %s: %s", self.ref,
                          current.version if current else "nothing", exc)
                raise
            served = Served(version.model, version.version, loaded)
            self.current = served  # one reference assignment: an atomic swap
            self.last_error = None
            log.info("serving %s/%s", served.name, served.version)
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
