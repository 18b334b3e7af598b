"""Online ranking: ``rankengine serve`` (FastAPI + uvicorn)."""

from __future__ import annotations

import json
import os

import torch
from fastapi import FastAPI

from rankengine.serve.app import ServeSettings, create_app
from rankengine.serve.holder import ModelHolder

ENV = "RANKENGINE_SERVE"


def app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker process builds its own app."""
    from rankengine.registry.store import RegistryStore
    from rankengine.serve.process import freeze_startup_objects, retain_freed_memory

    retain_freed_memory()  # this process only serves: keep activation memory between requests
    spec = json.loads(os.environ[ENV])
    # Worker processes (--workers N) start with torch's default of one thread per core each,
    # so N of them oversubscribed the cores: set the budget the CLI computed in every process.
    threads = spec.get("torch_threads", 1)
    torch.set_num_threads(threads)
    store = RegistryStore(spec["registry"], create_if_empty=False)
    holder = ModelHolder(store, spec["ref"], backend=spec.get("backend"),
                         threads=threads, device=torch.device(spec.get("device", "cpu")))
    app = create_app(holder, ServeSettings(**spec["settings"]))
    freeze_startup_objects()
    return app


__all__ = ["ModelHolder", "ServeSettings", "app_from_env", "create_app"]
