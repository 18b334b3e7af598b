"""Builds a :class:`RankingModel` from the config, the task graph and the fitted features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from rankengine.data.batching import ModelInput
from rankengine.data.pipeline import FeatureLayout
from rankengine.errors import ConfigError
from rankengine.interfaces import Backbone, Cascade, CascadeOutput, SharedParameters
from rankengine.layers import mlp
from rankengine.model.calibration import Calibration

if TYPE_CHECKING:
    from rankengine.plan import Plan


class FeatureEmbedder(nn.Module):
    """Encoded columns → one float vector per row.

    Categorical features that share an embedding dim share one table (ids offset per feature),
    so all of them cost one lookup per dim instead of one per feature.
    """

    def __init__(self, layout: Sequence[FeatureLayout]) -> None:
        super().__init__()
        self.tables = nn.ModuleList()
        self.table_columns: list[torch.Tensor] = []
        spans: dict[str, tuple[int, int]] = {}
        width = 0
        by_dim: dict[int, list[FeatureLayout]] = {}
        for f in layout:
            if f.output == "ids":
                by_dim.setdefault(f.dim, []).append(f)
        for t, (dim, feats) in enumerate(sorted(by_dim.items())):
            cards = [f.cardinality for f in feats]
            offsets = torch.tensor([0, *cards[:-1]]).cumsum(0)
            self.register_buffer(f"offsets_{t}", offsets, persistent=False)
            self.register_buffer(
                f"columns_{t}", torch.tensor([f.column for f in feats]), persistent=False
            )
            self.tables.append(_embedding(sum(cards), dim))
            for f in feats:
                spans[f.name] = (width, width + dim)
                width += dim
        self.sequence_tables = nn.ModuleList()
        self.sequence_pooling: list[str] = []
        for f in sorted((f for f in layout if f.output == "id_list"), key=lambda f: f.column):
            self.sequence_tables.append(_embedding(f.cardinality, f.dim, padding_idx=0))
            self.sequence_pooling.append(f.pooling)
            spans[f.name] = (width, width + f.dim)
            width += f.dim
        dense = sorted((f for f in layout if f.output == "dense"), key=lambda f: f.column)
        for f in dense:
            spans[f.name] = (width, width + f.dim)
            width += f.dim
        self.has_dense = bool(dense)
        self.spans = spans
        self.output_dim = width

    def forward(self, inputs: ModelInput) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for t, table in enumerate(self.tables):
            ids = inputs.ids.index_select(1, getattr(self, f"columns_{t}"))
            emb = table(ids + getattr(self, f"offsets_{t}"))  # [B, F, dim]
            parts.append(emb.flatten(1))
        for table, pooling, ids in zip(
            self.sequence_tables, self.sequence_pooling, inputs.id_lists, strict=True
        ):
            parts.append(_pool(table(ids), ids != 0, pooling))
        if self.has_dense:
            parts.append(inputs.dense)
        return torch.cat(parts, dim=1)

    def columns_of(self, names: Sequence[str]) -> list[int]:
        cols: list[int] = []
        for name in names:
            lo, hi = self.spans[name]
            cols.extend(range(lo, hi))
        return cols


def _embedding(num: int, dim: int, padding_idx: int | None = None) -> nn.Embedding:
    table = nn.Embedding(max(num, 1), dim, padding_idx=padding_idx)
    nn.init.normal_(table.weight, std=0.05)
    if padding_idx is not None:
        with torch.no_grad():
            table.weight[padding_idx].zero_()
    return table


def _pool(emb: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(emb.dtype)
    if pooling == "max":
        return (emb + (m - 1.0) * 1e9).amax(dim=1) * mask.any(dim=1, keepdim=True)
    summed = (emb * m).sum(dim=1)
    if pooling == "sum":
        return summed
    return summed / m.sum(dim=1).clamp(min=1.0)


class BiasTower(nn.Module):
    """A shallow tower on bias features whose logit joins chosen heads while training.

    Scoring does not know the bias features (where the item will be shown is what ranking
    decides), so each of its heads gets a constant ``reference[k]`` instead: the logit that
    keeps the head's mean prediction over the validation rows what it is with each row's own
    bias logit (``mean sigmoid(z + reference) = mean sigmoid(z + bias)``), i.e. the average
    position effect of the logged traffic. Their mean logit would not do: the sigmoid is not
    linear, and a spread of position effects averages to more clicks than the average effect
    gives. Without a reference p(click) would be the probability at whatever position the
    tower's zero stands for.
    """

    reference: torch.Tensor

    def __init__(self, columns: list[int], hidden: Sequence[int], heads: list[int]) -> None:
        super().__init__()
        self.columns: torch.Tensor
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long),
                             persistent=False)
        self.register_buffer("reference", torch.zeros(len(heads)))
        self.net = mlp(len(columns), hidden, output_dim=1)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.index_select(1, self.columns)).squeeze(-1)
        return out


class _PlusLogit(nn.Module):
    """A tower whose logit gets the bias tower's logit added (training only)."""

    def __init__(self, tower: nn.Module, logit: torch.Tensor) -> None:
        super().__init__()
        self.tower = tower
        self.logit = logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tower(x) + self.logit
        return out


class _Recorded(nn.Module):
    """A tower whose outputs are kept in ``seen[key]``."""

    def __init__(self, tower: nn.Module, seen: dict[int, torch.Tensor], key: int) -> None:
        super().__init__()
        self.tower, self.seen, self.key = tower, seen, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tower(x)
        self.seen[self.key] = out
        return out


class RankingModel(nn.Module):
    """Embedder → backbone (one representation per head) → towers → cascade."""

    backbone_columns: torch.Tensor

    def __init__(
        self,
        embedder: FeatureEmbedder,
        backbone: Backbone,
        towers: list[nn.Module],
        cascade: Cascade,
        backbone_columns: list[int] | None,
        tower_columns: list[list[int]],
        bias: BiasTower | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__()
        self.bias = bias
        #: fitted after training, applied by the scoring path (never inside forward: training
        #: and early stopping see the model's own predictions)
        self.calibration = calibration or Calibration(cascade.graph, [])
        self.embedder = embedder
        self.backbone = backbone
        self.towers = nn.ModuleList(towers)
        self.cascade = cascade
        self.graph = cascade.graph
        self.select_backbone = backbone_columns is not None
        self.register_buffer(
            "backbone_columns", torch.tensor(backbone_columns or [], dtype=torch.long),
            persistent=False,
        )
        for i, cols in enumerate(tower_columns):
            self.register_buffer(
                f"tower_columns_{i}", torch.tensor(cols, dtype=torch.long), persistent=False
            )
        self.tower_has_columns = [bool(cols) for cols in tower_columns]

    def training_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains: everything but the calibrators (fitted afterwards)."""
        calibration = {id(p) for p in self.calibration.parameters()}
        return [p for p in self.parameters() if id(p) not in calibration]

    def calibrated(self, inputs: ModelInput) -> CascadeOutput:
        """The forward pass with the fitted calibration applied (what every command scores)."""
        out: CascadeOutput = self.calibration(self(inputs))
        return out

    def bias_logits(self, inputs: ModelInput) -> tuple[torch.Tensor, torch.Tensor]:
        """The bias tower's logit per row ``[B]`` and the logits of the towers it joins,
        without it ``[B, K]``, as the cascade feeds them (a model with a bias tower only)."""
        assert self.bias is not None
        x = self.embedder(inputs)
        seen: dict[int, torch.Tensor] = {}
        towers: list[nn.Module] = list(self.towers)
        for k, head in enumerate(self.bias.heads):
            towers[head] = _Recorded(towers[head], seen, k)
        self.cascade(self._head_inputs(x), towers)
        return self.bias(x), torch.stack([seen[k] for k in range(len(seen))], dim=1)

    def shared_parameters(self) -> SharedParameters:
        """Parameters every task depends on (embeddings + backbone) and the last shared layer."""
        return SharedParameters(
            all=[p for p in [*self.embedder.parameters(), *self.backbone.parameters()]
                 if p.requires_grad],
            last=self.backbone.last_shared_parameters())

    def _head_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        shared = x.index_select(1, self.backbone_columns) if self.select_backbone else x
        reps = self.backbone(shared)
        head_inputs = []
        for i, rep in enumerate(reps):
            if self.tower_has_columns[i]:
                extra = x.index_select(1, getattr(self, f"tower_columns_{i}"))
                rep = torch.cat([rep, extra], dim=1)
            head_inputs.append(rep)
        return head_inputs

    def forward(self, inputs: ModelInput) -> CascadeOutput:
        x = self.embedder(inputs)
        head_inputs = self._head_inputs(x)
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # mixed precision where the compute is (embeddings, backbone); the towers and the
            # cascade's log-space algebra in fp32, so log p keeps its digits
            with torch.autocast(device, enabled=False):
                return self._heads(x.float(), [h.float() for h in head_inputs])
        return self._heads(x, head_inputs)

    def _heads(self, x: torch.Tensor, head_inputs: list[torch.Tensor]) -> CascadeOutput:
        towers: list[nn.Module] = list(self.towers)
        if self.bias is not None:  # its reference in place of the bias features at scoring
            logit = self.bias(x) if self.training else None
            for k, head in enumerate(self.bias.heads):
                towers[head] = _PlusLogit(
                    towers[head], self.bias.reference[k] if logit is None else logit)
        out: CascadeOutput = self.cascade(head_inputs, towers)
        return out


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def build_model(plan: Plan, layout: Sequence[FeatureLayout]) -> RankingModel:
    """The model of ``plan`` on ``layout``: the plan's cascade, backbone and towers; regression
    heads map their outputs to values through their tasks' loss links."""
    config, graph = plan.config, plan.graph
    src = config.source
    embedder = FeatureEmbedder(layout)
    known_groups = {g for f in layout for g in f.groups}

    def features_in(groups: Sequence[str], key: str) -> list[str]:
        for g in groups:
            if g not in known_groups:
                raise ConfigError(
                    f"feature group '{g}' has no features; groups: "
                    f"{', '.join(sorted(known_groups))}",
                    source=src, key=key,
                )
        return [f.name for f in layout if set(f.groups) & set(groups)]

    backbone_columns = None
    bias_only = config.model.bias_only_features(config.features)
    if config.model.backbone_groups is not None:
        backbone_columns = embedder.columns_of(
            features_in(config.model.backbone_groups, "model.backbone_groups")
        )
    elif bias_only:
        backbone_columns = embedder.columns_of([f.name for f in layout
                                                if f.name not in bias_only])
    input_dim = embedder.output_dim if backbone_columns is None else len(backbone_columns)
    cascade: Cascade = plan.cascade.build(config, graph, plan.cascade.params)
    heads = cascade.heads()
    index = {name: i for i, name in enumerate(graph.names)}
    cascade.links = [plan.losses[index[h.node]].to_value
                     if graph.node(h.node).type == "regression" else _identity for h in heads]
    backbone: Backbone = plan.backbone.build(config, plan.backbone.params, input_dim=input_dim,
                                             num_outputs=len(heads))
    tower_columns: list[list[int]] = []
    for head in heads:
        groups = graph.node(head.node).spec.tower_groups
        tower_columns.append(
            embedder.columns_of(features_in(groups, f"tasks.{head.node}.tower_groups")))
    dims = cascade.build([backbone.output_dim + len(cols) for cols in tower_columns])
    if len(dims) != len(heads):
        raise ConfigError(f"cascade '{config.model.cascade.kind}' returned {len(dims)} tower "
                          f"input widths from build(); expected one per head ({len(heads)})",
                          source=src, key="model.cascade")
    towers: list[nn.Module] = [plan.tower.build(config, plan.tower.params, input_dim=dim)
                               for dim in dims]
    bias = None
    spec = config.model.bias_tower
    if spec is not None:
        binary = [n.name for n in graph.nodes if n.type == "binary"]
        for task in spec.tasks:
            if task not in binary:
                raise ConfigError(f"expected binary tasks ({', '.join(binary)}); found "
                                  f"{task!r}", source=src, key="model.bias_tower.tasks")
        heads_of = [i for i, h in enumerate(heads) if h.node in spec.tasks and h.role == "main"]
        columns = embedder.columns_of(features_in(spec.groups, "model.bias_tower.groups"))
        bias = BiasTower(columns, spec.hidden, heads_of)
    return RankingModel(embedder, backbone, towers, cascade, backbone_columns, tower_columns,
                        bias, Calibration(graph, plan.build_calibrators()))

