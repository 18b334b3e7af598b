"""The weight search space and the search methods of ``rankengine tune-fusion``.

Methods (``--trials`` weight vectors in all, anchors included):

- anchors, always evaluated first: the version's current weights, equal weights and each
  searched task alone;
- ``grid``: every combination of log-spaced levels over [M/100, M] per task (M: the largest
  current weight), with as many levels as ``--trials`` allows;
- ``random``: log-uniform samples over the same range;
- ``bayes``: Optuna, seeded: with one searched task its tree-structured Parzen estimator (TPE)
  on that task's NDCG; with several, NSGA-II on the per-task NDCGs, whose populations evolve
  toward the Pareto front. The anchors inside the search range seed the study.

When every task with a non-zero weight is searched, each candidate is rescaled so its largest
weight is M: weighted sums and products rank identically under a common rescaling.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]

METHODS = ("grid", "random", "bayes")
LOG_SPAN = 2.0  # searched weights range over [M · 10^-2, M]
MAX_TRIALS = 20_000


@dataclass
class SearchSpace:
    """Which weights vary: ``tasks`` are searched, ``fixed`` keep their current weight."""

    names: list[str]  # every task in graph order
    tasks: list[str]
    fixed: dict[str, float]
    scale: float

    @property
    def normalise(self) -> bool:
        return not self.fixed

    def weights(self, raw: Floats) -> dict[str, float]:
        """Searched weights (in units of ``scale``) → the full weight dict, rounded."""
        raw = np.clip(np.asarray(raw, dtype=np.float64), 0.0, None)
        if self.normalise and raw.max() > 0:
            raw = raw / raw.max()
        searched = {t: float(f"{w * self.scale:.4g}") for t, w in zip(self.tasks, raw,
                                                                        strict=True)}
        merged = {**self.fixed, **searched}
        return {t: merged[t] for t in self.names if t in merged}


def _levels(tasks: int, budget: int) -> int:
    level = 2
    while (level + 1) ** tasks - level ** tasks <= budget and level < 50:
        level += 1
    return level


class Search:
    """Evaluates weight dicts (cached) and runs one of the methods within a trial budget."""

    def __init__(self, space: SearchSpace, evaluate: Callable[[dict[str, float]], Floats],
                 trials: int, seed: int) -> None:
        self.space, self.evaluate, self.trials = space, evaluate, trials
        self.rng = np.random.default_rng(seed)
        self.points: list[dict[str, float]] = []
        self.raw: list[Floats] = []
        self.values: list[Floats] = []
        self.front: list[int] = []  # kept up to date as points are added
        self._seen: dict[tuple[float, ...], int] = {}

    @property
    def full(self) -> bool:
        return len(self.points) >= self.trials

    def add(self, raw: Floats) -> Floats | None:
        """Evaluate ``raw`` (searched weights in units of the scale) unless the budget is
        spent; its values (a repeated point's, from the cache), None if it has no weight."""
        weights = self.space.weights(raw)
        key = tuple(weights.values())
        if key in self._seen:
            return self.values[self._seen[key]]
        if self.full or not any(weights.values()):
            return None
        self._seen[key] = len(self.points)
        self.points.append(weights)
        self.raw.append(np.array([weights[t] / self.space.scale for t in self.space.tasks]))
        value = self.evaluate(weights)
        self.values.append(value)
        if self.front:
            others = np.array([self.values[i] for i in self.front])
            if ((others >= value).all(axis=1) & (others > value).any(axis=1)).any():
                return value
            beaten = np.asarray((value >= others).all(axis=1) & (value > others).any(axis=1))
            self.front = [i for i, b in zip(self.front, beaten.tolist(), strict=True) if not b]
        self.front.append(len(self.values) - 1)
        return value

    def run(self, method: str, current: Floats) -> None:
        t = len(self.space.tasks)
        self.add(current)
        self.add(np.ones(t))
        for i in range(t):
            self.add(np.eye(t)[i])
        if method == "grid":
            self._grid()
        elif method == "random":
            self._random(self.trials)
        else:
            self._bayes()

    def _log_uniform(self) -> Floats:
        return np.asarray(10.0 ** self.rng.uniform(-LOG_SPAN, 0.0, len(self.space.tasks)))

    def _random(self, until: int) -> None:
        for _ in range(20 * self.trials):
            if len(self.points) >= until:
                return
            self.add(self._log_uniform())

    def _grid(self) -> None:
        t = len(self.space.tasks)
        budget = self.trials - len(self.points)
        levels = np.logspace(-LOG_SPAN, 0.0, _levels(t, budget))
        combos = [c for c in itertools.product(range(len(levels)), repeat=t)
                  if not self.space.normalise or max(c) == len(levels) - 1]
        if len(combos) > budget:  # only at 2 levels with many tasks: a seeded subset
            picked = self.rng.choice(len(combos), size=max(budget, 0), replace=False)
            combos = [combos[i] for i in sorted(picked)]
        for combo in combos:
            self.add(levels[list(combo)])

    def _bayes(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        t = len(self.space.tasks)
        seed = int(self.rng.integers(2**31))
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(seed=seed) \
            if t == 1 else optuna.samplers.NSGAIISampler(
                seed=seed, population_size=max(8, min(50, self.trials // 4)))
        study = optuna.create_study(directions=["maximize"] * t, sampler=sampler)
        low = 10.0 ** -LOG_SPAN
        names = [f"w{i}" for i in range(t)]
        distributions: dict[str, optuna.distributions.BaseDistribution] = {
            n: optuna.distributions.FloatDistribution(low, 1.0, log=True) for n in names}
        for raw, known in zip(self.raw, self.values, strict=True):  # the anchors in range
            if (raw >= low).all() and (raw <= 1.0).all():
                study.add_trial(optuna.trial.create_trial(
                    params=dict(zip(names, raw.tolist(), strict=True)),
                    distributions=distributions, values=known.tolist()))
        for _ in range(20 * self.trials):
            if self.full:
                return
            trial = study.ask(distributions)
            value = self.add(np.array([trial.params[n] for n in names]))
            if value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, value.tolist())
