"""``[loss.ranking]``: a learning-to-rank loss within request groups, next to the pointwise ones.

The ranking score is a task's logit or the log of the configured fusion's score; a row's graded
relevance is the highest grade among its positive tasks (pay > order > favorite > click >
impression by default). The batcher keeps each request's rows together.
"""

from __future__ import annotations

import torch

from rankengine.config import EngineConfig
from rankengine.data.batching import Batch
from rankengine.errors import ConfigError
from rankengine.graph import TaskGraph
from rankengine.interfaces import CascadeOutput, Fusion, RankingLoss

FUSED = "fused"


class RankingObjective:
    """``weight · loss(scores, relevance, groups)`` for one batch."""

    def __init__(self, config: EngineConfig, graph: TaskGraph, loss: RankingLoss,
                 fusion: Fusion) -> None:
        """``loss`` is the built ``[loss.ranking]`` loss; ``fusion`` the plan's, scored when the
        target is ``"fused"``. Checks the rest of ``[loss.ranking]`` against the graph."""
        spec = config.loss.ranking
        assert spec is not None
        src = config.source
        self.loss = loss
        self.weight = spec.weight
        self.max_pairs = spec.max_pairs_per_group
        self.generator = torch.Generator().manual_seed(config.engine.seed)
        binary = [n.name for n in graph.nodes if n.type == "binary"]
        self.fusion: Fusion | None = None
        self.task = -1
        if spec.target == FUSED:
            self.fusion = fusion
        elif spec.target in binary:
            self.task = graph.index(spec.target)
        else:
            raise ConfigError(f"expected '{FUSED}' or a binary task ({', '.join(binary)}); "
                              f"found {spec.target!r}", source=src, key="loss.ranking.target")
        for task, grade in spec.relevance.items():
            if task not in binary:
                raise ConfigError(f"relevance is graded on binary tasks ({', '.join(binary)}); "
                                  f"found {task!r}", source=src, key="loss.ranking.relevance")
            if grade < 0:
                raise ConfigError(f"relevance of '{task}' must be >= 0, found {grade}",
                                  source=src, key="loss.ranking.relevance")
        default = {name: float(i + 1) for i, name in enumerate(binary)}
        grades = spec.relevance or default
        self.grades = torch.tensor([grades.get(n.name, 0.0) if n.type == "binary" else 0.0
                                    for n in graph.nodes])
        self.graph = graph

    def relevance(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B]``: the highest grade among each row's positive tasks (0: impression only)."""
        return (labels.clamp(0.0, 1.0) * self.grades.to(labels.device)).amax(dim=1)

    def scores(self, out: CascadeOutput) -> torch.Tensor:
        if self.fusion is not None:
            return torch.log(self.fusion(out.entire(self.graph)).clamp(min=1e-12))
        return out.log_p[:, self.task] - out.log_q[:, self.task]

    def __call__(self, out: CascadeOutput, batch: Batch) -> torch.Tensor:
        if batch.groups is None:
            raise ValueError("ranking losses need batches with group ids")
        return self.weight * self.loss(self.scores(out), self.relevance(batch.labels),
                                       batch.groups, max_pairs_per_group=self.max_pairs,
                                       generator=self.generator)
