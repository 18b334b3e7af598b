"""Builds a :class:`RankingModel` from the config, the task graph and the fitted features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from rankengine.config import InteractionSpec
from rankengine.data.batching import ModelInput
from rankengine.data.pipeline import FeatureLayout
from rankengine.errors import ConfigError
from rankengine.interfaces import (
    Backbone,
    Cascade,
    CascadeOutput,
    Interaction,
    SharedParameters,
)
from rankengine.layers import mlp
from rankengine.model.calibration import Calibration

if TYPE_CHECKING:
    from rankengine.plan import Plan


class FeatureEmbedder(nn.Module):
    """Encoded columns → one float vector per row.

    Categorical features that share an embedding dim share one table (ids offset per feature),
    so all of them cost one lookup per dim instead of one per feature. A sequence that
    ``shares`` an ids feature's table looks its elements up there.

    Sequences may come with fewer rows than the batch: one row per *context* (a served
    request sends its user's sequence once), row ``b`` reading context row
    ``inputs.context_rows[b]`` (default ``b mod R``: R = 1 broadcasts, R = B is row by row).
    Their pooling and each interaction's :meth:`~rankengine.Interaction.encode` run on the
    context rows; only the results are gathered per row.
    """

    def __init__(self, layout: Sequence[FeatureLayout],
                 interactions: Sequence[tuple[InteractionSpec, Interaction]] = ()) -> None:
        super().__init__()
        self.tables = nn.ModuleList()
        self.table_columns: list[torch.Tensor] = []
        spans: dict[str, tuple[int, int]] = {}
        width = 0
        by_dim: dict[int, list[FeatureLayout]] = {}
        for f in layout:
            if f.output == "ids":
                by_dim.setdefault(f.dim, []).append(f)
        #: ids feature → (its table, the offset of its ids in that table)
        table_of: dict[str, tuple[int, int]] = {}
        for t, (dim, feats) in enumerate(sorted(by_dim.items())):
            cards = [f.cardinality for f in feats]
            offsets = torch.tensor([0, *cards[:-1]]).cumsum(0)
            self.register_buffer(f"offsets_{t}", offsets, persistent=False)
            self.register_buffer(
                f"columns_{t}", torch.tensor([f.column for f in feats]), persistent=False
            )
            self.tables.append(_embedding(sum(cards), dim))
            for f, offset in zip(feats, offsets.tolist(), strict=True):
                table_of[f.name] = (t, int(offset))
                spans[f.name] = (width, width + dim)
                width += dim
        read = {name for spec, _ in interactions for name in spec.sequence}
        self.sequence_tables = nn.ModuleList()
        #: per id_list input (layout order): (own table index or -1, shared table, offset)
        self.sequence_lookup: list[tuple[int, int, int]] = []
        self.sequence_pooling: list[str] = []
        self.pooled: list[bool] = []
        #: per id_list input: a context-side sequence (one row per context is enough)
        self.context_side: list[bool] = []
        sequences = sorted((f for f in layout if f.output == "id_list"), key=lambda f: f.column)
        index_of = {f.name: k for k, f in enumerate(sequences)}
        for f in sequences:
            if f.shares is not None:
                self.sequence_lookup.append((-1, *table_of[f.shares]))
            else:
                self.sequence_lookup.append((len(self.sequence_tables), -1, 0))
                self.sequence_tables.append(_embedding(f.cardinality, f.dim, padding_idx=0))
            self.sequence_pooling.append(f.pooling)
            self.pooled.append(f.name not in read)
            self.context_side.append(f.side == "context")
            if f.name not in read:
                spans[f.name] = (width, width + f.dim)
                width += f.dim
        dense = sorted((f for f in layout if f.output == "dense"), key=lambda f: f.column)
        for f in dense:
            spans[f.name] = (width, width + f.dim)
            width += f.dim
        self.has_dense = bool(dense)
        self.interactions = nn.ModuleList(module for _, module in interactions)
        #: per interaction: its sequence inputs (layout order indices)
        self.interaction_sequences = [[index_of[n] for n in spec.sequence]
                                      for spec, _ in interactions]
        for i, (spec, module) in enumerate(interactions):
            target = [c for name in spec.target for c in range(*spans[name])]
            self.register_buffer(f"target_columns_{i}", torch.tensor(target, dtype=torch.long),
                                 persistent=False)
            spans[spec.name] = (width, width + module.output_dim)
            width += module.output_dim
        self.spans = spans
        self.output_dim = width

    def embed_sequence(self, k: int, ids: torch.Tensor) -> torch.Tensor:
        """The embeddings ``[R, L, dim]`` of id_list input ``k`` (padding rows are whatever
        its table holds there: pooling and interactions mask them)."""
        own, shared, offset = self.sequence_lookup[k]
        if own >= 0:
            out: torch.Tensor = self.sequence_tables[own](ids)
            return out
        # the shared feature's id is the element id - 1; padding (0) reads id 0 and is masked
        shared_out: torch.Tensor = self.tables[shared]((ids - 1).clamp(min=0) + offset)
        return shared_out

    def forward(self, inputs: ModelInput) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for t, table in enumerate(self.tables):
            ids = inputs.ids.index_select(1, getattr(self, f"columns_{t}"))
            emb = table(ids + getattr(self, f"offsets_{t}"))  # [B, F, dim]
            parts.append(emb.flatten(1))
        rows = inputs.ids.shape[0]
        for k, ids in enumerate(inputs.id_lists):
            if self.pooled[k]:
                pooled = _pool(self.embed_sequence(k, ids), ids != 0, self.sequence_pooling[k])
                parts.extend(per_row(inputs, (pooled,), rows, self.context_side[k]))
        if self.has_dense:
            parts.append(inputs.dense)
        if len(self.interactions):
            categorical = torch.cat(parts[:len(self.tables)], dim=1) if len(self.tables) \
                else inputs.dense[:, :0]
            for i, module in enumerate(self.interactions):
                interaction = cast(Interaction, module)
                members = self.interaction_sequences[i]
                first = inputs.id_lists[members[0]]
                sequence = torch.cat([self.embed_sequence(k, inputs.id_lists[k])
                                      for k in members], dim=-1)  # [R, L, Ds]
                encoded = interaction.encode(sequence, first != 0)
                target = categorical.index_select(1, getattr(self, f"target_columns_{i}"))
                gathered = per_row(inputs, encoded, rows, self.context_side[members[0]])
                parts.append(interaction(gathered, target))
        return torch.cat(parts, dim=1)

    def columns_of(self, names: Sequence[str]) -> list[int]:
        cols: list[int] = []
        for name in names:
            lo, hi = self.spans[name]
            cols.extend(range(lo, hi))
        return cols


def _tracing() -> bool:
    """Tracing or exporting: the graph must take any number of contexts, so no shortcut may
    depend on this call's shapes."""
    return bool(torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
                or torch.compiler.is_compiling() or torch.compiler.is_exporting())


def per_row(inputs: ModelInput, tensors: Sequence[torch.Tensor], rows: int,
            context_side: bool) -> tuple[torch.Tensor, ...]:
    """``tensors`` (leading dim R, one per context) as one entry per row of the batch. Eagerly,
    without copies where the rows line up already (R = rows: training) or all read one context
    (R = 1: a served request, a broadcast view); traced or exported, always the gather of
    :func:`context_index`, so the graph takes any number of contexts."""
    contexts = tensors[0].shape[0]
    if (inputs.context_rows is None or not context_side) and not _tracing():
        if contexts == rows:
            return tuple(tensors)
        if contexts == 1:
            return tuple(t.expand(rows, *t.shape[1:]) for t in tensors)
    index = context_index(inputs, tensors[0], rows, context_side)
    return tuple(t.index_select(0, index) for t in tensors)


def context_index(inputs: ModelInput, sequence: torch.Tensor, rows: int,
                  context_side: bool) -> torch.Tensor:
    """Which row of ``sequence`` (``[R, ...]``, one per context) each of the ``rows`` rows
    reads: ``inputs.context_rows`` for a context-side sequence when given, else row
    ``b mod R`` (R = 1: every row reads the one context; R = rows: row by row). Computed
    without a branch on the shapes, so an exported graph takes either."""
    if inputs.context_rows is not None and context_side:
        return inputs.context_rows
    # R as a tensor, not a shape: ONNX has no remainder by a symbolic int
    contexts = torch.ones_like(sequence.flatten(1)[:, 0], dtype=torch.long).sum()  # R
    return torch.arange(rows, device=sequence.device) % contexts


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
    interactions = build_interactions(plan, layout)
    embedder = FeatureEmbedder(layout, interactions)
    read = {name for spec, _ in interactions for name in spec.sequence}
    members: list[tuple[str, Sequence[str]]] = [
        (f.name, f.groups) for f in layout if f.name not in read]
    members += [(spec.name, spec.groups) for spec, _ in interactions]
    known_groups = {g for _, groups in members for g in groups}

    def features_in(groups: Sequence[str], key: str) -> list[str]:
        for g in groups:
            if g not in known_groups:
                raise ConfigError(
                    f"feature group '{g}' has no features; groups: "
                    f"{', '.join(sorted(known_groups))}",
                    source=src, key=key,
                )
        return [name for name, own in members if set(own) & set(groups)]

    backbone_columns = None
    bias_only = config.model.bias_only_features(config.features)
    if config.model.backbone_groups is not None:
        backbone_columns = embedder.columns_of(
            features_in(config.model.backbone_groups, "model.backbone_groups")
        )
    elif bias_only:
        backbone_columns = embedder.columns_of([name for name, _ in members
                                                if name not in bias_only])
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



def build_interactions(plan: Plan, layout: Sequence[FeatureLayout]
                       ) -> list[tuple[InteractionSpec, Interaction]]:
    """Each ``[[model.interactions]]`` entry built on the widths of its sequence and target."""
    dims = {f.name: f.dim for f in layout}
    lengths = {f.name: f.length for f in layout}
    out: list[tuple[InteractionSpec, Interaction]] = []
    for spec, resolved in plan.interactions:
        module = resolved.build(plan.config, resolved.params,
                                sequence_dim=sum(dims[n] for n in spec.sequence),
                                target_dim=sum(dims[n] for n in spec.target),
                                max_len=lengths[spec.sequence[0]])
        if not isinstance(module, Interaction):
            raise ConfigError(f"interaction '{resolved.name}' built {type(module).__name__}; "
                              f"expected a rankengine.Interaction", source=plan.config.source,
                              key=resolved.key)
        out.append((spec, module))
    return out
