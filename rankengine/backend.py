"""Serving back ends: what runs a loaded model's forward pass when it is served.

Back ends are plugins (``rankengine_register_backends``): ``rankengine serve --backend NAME``
and the serving :class:`rankengine.serve.ModelHolder` look them up in the table of the served
model's engine, and ``rankengine export`` checks an exported file with the back end that
:attr:`ServingBackend.reads` its format. The core names none of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from rankengine.errors import PluginError

if TYPE_CHECKING:
    from rankengine.bundle import ModelBundle
    from rankengine.components import Component
    from rankengine.data.batching import ModelInput
    from rankengine.pluginmanager import Engine

#: ``(ids, dense, id_lists) -> (entire-space [N, T], conditional [N, T])`` as float64.
Predictor = Callable[[np.ndarray, np.ndarray, Sequence[np.ndarray]],
                     tuple[np.ndarray, np.ndarray]]


class ServingBackend(ABC):
    """Turns a loaded model into a predictor, within a thread budget.

    The core constructs one per served model version as ``BackendClass(loaded, threads=N)``
    (``loaded`` is the :class:`rankengine.ModelBundle`; ``threads`` the intra-op
    threads one request may use), then calls it per request with the *encoded* model input:

    - ``ids``: int64 ``[N, C]``, one column per ``ids`` feature;
    - ``dense``: float32 ``[N, D]``, the columns of the ``dense`` features;
    - ``id_lists``: one int64 ``[N, L_i]`` array per ``id_list`` feature (layout order), or
      ``[1, L_i]`` for a sequence of the request's context, which every row reads (the model
      encodes it once; an exported graph takes either);

    and gets ``(entire, conditional)``: float64 ``[N, T]`` each, the tasks in graph order
    (fusion stays outside the back end, so per-request fusion weights work with every one).
    Calls may come from several threads at once.

    Implement :meth:`predict`; override :meth:`setup` to prepare once (export the model, open
    a session), :meth:`check_available` to refuse early when a dependency is missing, and
    :meth:`close` to release what the back end holds. A back end that runs files written by
    ``rankengine export --format F`` sets :attr:`reads` to ``F`` and implements
    :meth:`run_exported`: the export command checks its output with it.
    """

    #: The ``rankengine export`` format whose files :meth:`run_exported` runs, if any.
    reads: ClassVar[str | None] = None

    def __init__(self, loaded: ModelBundle, *, threads: int = 1) -> None:
        self.loaded = loaded
        self.threads = threads
        self.setup()

    # -- what a back end implements -----------------------------------------------------------

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`rankengine.RankEngineError` (saying what to install) when this back end
        cannot run here; called before a server starts. Default: always available."""
        return None

    def setup(self) -> None:
        """Prepare to predict, once, from ``self.loaded`` and ``self.threads`` (called by
        ``__init__``). Default: nothing."""
        return None

    @abstractmethod
    def predict(self, ids: np.ndarray, dense: np.ndarray,
                id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Encoded model input → ``(entire [N, T], conditional [N, T])`` as float64."""

    def close(self) -> None:
        """Release what the back end holds (sessions, files); called once it is no longer
        served: a newer version replaced it, or the server stops. A request that started
        before may still finish on it. Default: nothing."""
        return None

    @classmethod
    def run_exported(cls, path: Path, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the file ``path`` written by ``rankengine export --format`` :attr:`reads` on
        ``inputs`` (by input name, see :meth:`input_names`); return its outputs in order."""
        raise NotImplementedError(f"{cls.__qualname__} reads no exported file")

    # -- what the core calls ------------------------------------------------------------------

    def __call__(self, ids: np.ndarray, dense: np.ndarray,
                 id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return self.predict(ids, dense, id_lists)

    # -- helpers for implementations ----------------------------------------------------------

    def run_torch(self, ids: np.ndarray, dense: np.ndarray,
                  id_lists: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The torch model's ``(entire, conditional)`` on the encoded input, as float64: what
        the built-in torch back end answers, through the scoring path every command runs
        (:class:`rankengine.scoring.PredictionModule`). A back end wrapping the torch model
        calls it."""
        import torch

        from rankengine.scoring import PredictionModule

        module = getattr(self, "_torch_predictions", None)
        if module is None:  # built once; eval() walks every module (~0.2 ms per request)
            module = self._torch_predictions = PredictionModule(self.loaded.model)
        with torch.inference_mode():
            entire, conditional = module.predict(self.model_input(ids, dense, id_lists))
        return entire.double().cpu().numpy(), conditional.double().cpu().numpy()

    @staticmethod
    def model_input(ids: np.ndarray, dense: np.ndarray,
                    id_lists: Sequence[np.ndarray]) -> ModelInput:
        """The numpy arrays as the model's forward input (zero-copy tensors)."""
        from rankengine.data.batching import ModelInput

        return ModelInput.from_numpy(ids, dense, id_lists)

    def input_names(self) -> list[str]:
        """Names of the exported graph's inputs: ``ids``, ``dense``, then each ``id_list``
        feature's name."""
        from rankengine.export import input_names

        return input_names(self.loaded)

    def export_predictions(self, path: Path, fmt: str) -> Path:
        """Write the model to ``path`` in export format ``fmt`` as a graph
        ``(ids, dense, *id_lists) -> (entire, conditional)`` (outputs named so)."""
        from rankengine.export import export
        from rankengine.scoring import PredictionModule

        return export(self.loaded, path, fmt, module=PredictionModule(self.loaded.model),
                      output_names=("entire", "conditional"))


def backend_component(engine: Engine, name: str | None = None) -> Component[Any]:
    """The serving back end ``name`` of ``engine`` (``None``: its default); an unknown name is
    one error listing the registered back ends."""
    table = engine.components.backends
    component = table.default() if name is None else table.get(name)
    factory = component.factory
    if not (isinstance(factory, type) and issubclass(factory, ServingBackend)):
        raise PluginError(f"plugin '{component.plugin}' registered {table.singular} "
                          f"'{component.name}' as {factory!r}; expected a subclass of "
                          f"rankengine.ServingBackend")
    return component


def backend_class(engine: Engine, name: str | None = None) -> type[ServingBackend]:
    """The class of :func:`backend_component`."""
    factory: type[ServingBackend] = backend_component(engine, name).factory
    return factory


def reader_of(engine: Engine, fmt: str) -> type[ServingBackend] | None:
    """The back end of ``engine`` that runs files exported as ``fmt`` (the first by name)."""
    for component in engine.components.backends:
        factory = component.factory
        if isinstance(factory, type) and issubclass(factory, ServingBackend) and \
                factory.reads == fmt:
            return factory
    return None
