"""Training: read and encode the data, build the model from the graph, optimise, evaluate.

The hot loop is tensor code only: batches are gathered column-wise, every task's loss is
computed from the cascade's log-space outputs and combined by the loss-weighting plugin.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from rankengine.checkpoint import (
    CheckpointError,
    Position,
    check_generator_state,
    check_rng_state,
    load_latest,
    load_module_state,
    load_optimizer_state,
    load_state_dict_checked,
    module_state,
    rng_state,
    set_rng_state,
)
from rankengine.checkpoint import save as save_checkpoint
from rankengine.components import Component
from rankengine.config import (
    EngineConfig,
    TaskSpec,
    flat_keys,
    resolve_component,
    validate_components,
)
from rankengine.data import cache as data_cache
from rankengine.data.batching import Batch, TensorData, iterate_batches
from rankengine.data.dataset import (
    EncodedData,
    encode_table,
    group_ids,
    label_columns,
    oracle_columns,
)
from rankengine.data.io import read_table
from rankengine.data.pipeline import FeaturePipeline, feature_layout
from rankengine.data.stream import (
    EncodeChunk,
    StreamingData,
    list_fragments,
    read_fragments,
    sample_fragments,
)
from rankengine.distributed import DistContext, context_from_env
from rankengine.errors import (
    ConfigError,
    DataError,
    GraphError,
    PluginError,
    TrainingError,
    one_line,
)
from rankengine.evaluate import Metrics, node_metrics, select_metrics, undefined_reason
from rankengine.graph import TaskGraph
from rankengine.interfaces import (
    LossWeighting,
    Metric,
    NodePrediction,
    PointwiseLoss,
    SampleWeighting,
)
from rankengine.model.assembly import RankingModel, build_model
from rankengine.plan import build_fusion, build_losses, construct
from rankengine.pluginmanager import Engine, load_engine
from rankengine.ranking import RankingObjective


def engine_for(config: EngineConfig) -> Engine:
    """Load the plugins the config enables and check its component names and parameters."""
    try:
        engine = load_engine(config.engine.plugins, config.engine.disable)
    except PluginError as exc:
        raise ConfigError(str(exc), source=config.source, key="engine.plugins") from exc
    validate_components(config, engine)
    return engine


def build_graph(config: EngineConfig, engine: Engine) -> TaskGraph:
    """Template (if any) + ``[tasks]``, edited by ``rankengine_modify_task_graph``, validated."""
    specs: dict[str, TaskSpec] = {}
    if config.task_graph.template is not None:
        template = engine.components.task_graphs.get(
            config.task_graph.template, key="task_graph.template", source=config.source
        ).factory
        for name, table in template.items():
            merged = {**table, **config.tasks[name].model_dump(exclude_unset=True)} \
                if name in config.tasks else dict(table)
            specs[name] = TaskSpec.model_validate(merged)
    for name, spec in config.tasks.items():
        specs.setdefault(name, spec)
    engine.hooks.modify_task_graph(specs, config)
    for name, spec in specs.items():  # a hook's model_copy(update=...) skips validation
        try:
            specs[name] = TaskSpec.model_validate(dict(spec))
        except ValidationError as exc:
            raise ConfigError(f"after rankengine_modify_task_graph: {one_line(str(exc))}",
                              source=config.source, key=f"tasks.{name}") from None
    try:
        return TaskGraph(specs)
    except GraphError as exc:
        raise GraphError(f"{config.source}: [tasks] {exc}") from None


@dataclass
class Splits:
    train: pa.Table
    valid: pa.Table
    test: pa.Table | None
    sources: dict[str, str]


def needed_columns(config: EngineConfig, graph: TaskGraph, pipeline: FeaturePipeline,
                   extras: list[str]) -> list[str]:
    cols = [*pipeline.source_columns, *label_columns(graph), *extras]
    if config.data.group:
        cols.append(config.data.group)
    return list(dict.fromkeys(cols))


def read_splits(config: EngineConfig, columns: list[str], seed: int, engine: Engine) -> Splits:
    """Read train / valid / test; a missing valid (or test) split is carved out of train."""
    data = config.data

    def read(path: str) -> pa.Table:
        resolved = config.resolve_path(path)
        if not resolved.exists():
            key = next(k for k in ("train", "valid", "test") if getattr(data, k) == path)
            raise ConfigError(f"data file or directory not found: {resolved}",
                              source=config.source, key=f"data.{key}")
        return read_table(resolved, columns, sources=engine.components.sources,
                          format=data.format, csv=data.csv)

    train = read(data.train)
    sources = {"train": str(config.resolve_path(data.train))}
    test = read(data.test) if data.test else None
    if data.test:
        sources["test"] = str(config.resolve_path(data.test))
    if data.valid:
        valid = read(data.valid)
        sources["valid"] = str(config.resolve_path(data.valid))
    elif data.valid_from == "test":
        if test is None:
            raise ConfigError("valid_from = \"test\" needs [data] test", source=config.source,
                              key="data.valid_from")
        parts = split_table(test, {"valid": data.valid_fraction}, data.group, seed,
                            sources["test"])
        _check_carved(parts, {"valid": ("valid", "valid_fraction"),
                              "train": ("test", "valid_fraction")},
                      sources["test"], data.group, config.source)
        valid, test = parts["valid"], parts["train"]
        sources["valid"] = f"{sources['test']} ({data.valid_fraction:.0%} of it)"
        sources["test"] += f" (the other {1 - data.valid_fraction:.0%})"
    else:
        fractions = {"valid": data.valid_fraction}
        if test is None and data.test_fraction > 0:
            fractions["test"] = data.test_fraction
        parts = split_table(train, fractions, data.group, seed, sources["train"])
        _check_carved(parts, {"valid": ("valid", "valid_fraction"),
                              "test": ("test", "test_fraction"),
                              "train": ("training", "valid_fraction")},
                      sources["train"], data.group, config.source)
        train, valid = parts["train"], parts["valid"]
        test = parts.get("test", test)
        sources["valid"] = f"{sources['train']} ({data.valid_fraction:.0%} held out)"
        if "test" in fractions:
            sources["test"] = f"{sources['train']} ({data.test_fraction:.0%} held out)"
    if train.num_rows == 0:
        raise DataError(f"{sources['train']}: the training split is empty")
    return Splits(train, valid, test, sources)


def _check_carved(parts: Mapping[str, pa.Table], keys: Mapping[str, tuple[str, str]],
                  source: str, group: str | None, config_source: str) -> None:
    """A split carved out of a file by a fraction must get rows: an empty validation split
    leaves early stopping and every metric undefined, an empty training split trains nothing.
    ``keys``: part → (the split's name, the [data] key that sized it)."""
    rows = sum(part.num_rows for part in parts.values())
    if rows == 0:
        raise DataError(f"{source}: the file has no data rows")
    for part, table in parts.items():
        if table.num_rows:
            continue
        split, key = keys[part]
        unit = f"{rows} rows"
        if group:
            ids = set().union(*(pc.unique(t.column(group)).to_pylist() for t in parts.values()))
            unit += f" in {len(ids)} groups of [data] group '{group}'"
        raise ConfigError(
            f"the {split} split carved out of {source} ({unit}) is empty; change [data] {key} "
            f"or give the split its own file", source=config_source, key=f"data.{key}")


def absolute_data_paths(config: EngineConfig) -> EngineConfig:
    """A copy of ``config`` whose ``[data]`` train / valid / test paths are absolute (resolved
    against the config file's directory, as training read them)."""
    from os.path import abspath  # normalises ".." without resolving symlinks

    data = config.data
    paths = {split: abspath(config.resolve_path(path))
             for split in ("train", "valid", "test") if (path := getattr(data, split))}
    return config.model_copy(update={"data": data.model_copy(update=paths)})


def split_table(table: pa.Table, fractions: Mapping[str, float], group: str | None,
                seed: int, where: str = "data") -> dict[str, pa.Table]:
    """Seeded random split; rows of one group (request) always land in the same split."""
    rng = np.random.default_rng(seed)
    if group:
        ids = group_ids(table, group, where)
        draw = rng.random(int(ids.max()) + 1 if len(ids) else 0)[ids]
    else:
        draw = rng.random(table.num_rows)
    out: dict[str, pa.Table] = {}
    lo = 0.0
    assigned = np.zeros(table.num_rows, dtype=bool)
    for name, fraction in fractions.items():
        mask = (draw >= lo) & (draw < lo + fraction)
        out[name] = table.filter(pa.array(mask))
        assigned |= mask
        lo += fraction
    out["train"] = table.filter(pa.array(~assigned))
    return out


@dataclass
class TrainContext:
    """What lifecycle hooks see."""

    config: EngineConfig
    engine: Engine
    graph: TaskGraph
    pipeline: FeaturePipeline
    model: RankingModel
    rows: dict[str, int]
    #: under torchrun: this process's rank and the number of ranks (observers that print or
    #: write usually do so on rank 0 only)
    rank: int = 0
    world_size: int = 1
    #: where observers write progress lines: stderr, or nowhere under ``train --quiet``
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr))


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    metrics: dict[str, Metrics]
    train_seconds: float
    samples_per_second: float
    label_reports: dict[str, dict[str, Any]]
    data_sources: dict[str, str]
    loss_weights: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    #: task → {"experts": names, "weights": mean gate weight per expert} (gated backbones)
    gate_stats: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


@dataclass
class Trained:
    config: EngineConfig
    engine: Engine
    graph: TaskGraph
    pipeline: FeaturePipeline
    model: RankingModel
    result: TrainResult


class Objective:
    """Per-task pointwise losses → masked, sample-weighted means ``[T]``.

    ``loss_k = Σ_i w_ik · m_ik · loss_ik / Σ_i w_ik · m_ik`` where ``m`` is 1 on the rows the
    task is trained on (all rows, or the parent-positive rows for conditional spaces and
    regression tasks) and ``w`` comes from the sample-weighting plugin: a row of weight 2 counts
    exactly like the row twice, a row of weight 0 exactly like no row at all.
    """

    def __init__(self, graph: TaskGraph, model: RankingModel, losses: list[PointwiseLoss],
                 sample_weighting: SampleWeighting) -> None:
        self.graph = graph
        self.losses = losses
        self.sample_weighting = sample_weighting
        conditional = [
            node.type == "regression" or model.cascade.loss_space(node.name) == "conditional"
            for node in graph.nodes
        ]
        self.parent = torch.tensor([max(p, 0) for p in graph.parent_index])
        self.has_parent = torch.tensor([p >= 0 for p in graph.parent_index])
        self.conditional = torch.tensor(conditional) & self.has_parent
        aux = [model.cascade.conditional_loss_weight(n.name) if n.type == "binary" else 0.0
               for n in graph.nodes]
        self.aux_weight = torch.tensor(aux) * self.has_parent * ~self.conditional
        self.aux = bool(self.aux_weight.any())
        self.needs_mask = bool(self.conditional.any()) or self.aux

    def __call__(self, out: Any, batch: Batch) -> torch.Tensor:
        labels = batch.labels
        log_p = torch.where(self.conditional, out.cond_log_p, out.log_p)
        log_q = torch.where(self.conditional, out.cond_log_q, out.log_q)
        per_sample = torch.stack([
            loss(NodePrediction(log_p[:, i], log_q[:, i], out.value[:, i]), labels[:, i])
            for i, loss in enumerate(self.losses)
        ], dim=1)
        weights = self.sample_weighting.weights(labels, batch.extras)
        if not self.needs_mask:
            return _weighted_mean(per_sample, weights)
        parent_positive = labels.index_select(1, self.parent) == 1
        mask = torch.where(self.conditional, parent_positive, True).to(per_sample.dtype)
        losses = _weighted_mean(per_sample, weights * mask)
        if self.aux:
            cond = torch.stack([
                loss(NodePrediction(out.cond_log_p[:, i], out.cond_log_q[:, i],
                                    out.value[:, i]), labels[:, i])
                for i, loss in enumerate(self.losses)
            ], dim=1)
            sub = (parent_positive & self.has_parent).to(cond.dtype)
            losses = losses + self.aux_weight * _weighted_mean(cond, weights * sub)
        return losses


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Column-wise ``Σ w·v / Σ w`` (0 where a column has no weight at all)."""
    total = weights.sum(0)
    return (values * weights).sum(0) / torch.where(total > 0, total, 1.0)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train(config: EngineConfig, *, engine: Engine | None = None, progress: bool | None = None,
          log: Callable[[str], None] | None = None, resume: bool = False) -> Trained:
    """Run a full training job as configured; returns the trained model and its metrics.

    Under ``torchrun`` every rank calls this: each trains on its share of the data and the
    gradients are averaged after every step (see :mod:`rankengine.distributed`). With
    ``resume``, training continues from the newest intact checkpoint in
    ``[train] checkpoint_dir``.
    """
    if engine is None:
        engine = engine_for(config)
    else:
        validate_components(config, engine)
    dist = context_from_env()
    say = (log or (lambda _msg: None)) if dist.is_main else (lambda _msg: None)
    if config.engine.threads:
        torch.set_num_threads(config.engine.threads)
    generator = seed_everything(config.engine.seed)
    graph = build_graph(config, engine)
    pipeline = FeaturePipeline(config.features, engine.components.encoders, source=config.source)
    check_buildable(config, engine, graph, pipeline)  # in seconds, before any data is read
    if resume and not config.train.checkpoint_dir:
        raise ConfigError("--resume needs [train] checkpoint_dir", source=config.source,
                          key="train.checkpoint_dir")
    # Folders this run writes into must fail now, not after the data is read or an epoch ran.
    for key, folder in (("train.checkpoint_dir", config.train.checkpoint_dir),
                        ("data.cache_dir", config.data.cache_dir)):
        if folder:
            _check_directory(config.resolve_path(folder), config, key)

    sw_factory, sw_params = resolve_component(
        engine.components.sample_weightings, config.loss.sample_weighting.kind,
        config.loss.sample_weighting.params, key="loss.sample_weighting", source=config.source)
    sample_weighting: SampleWeighting = construct(sw_factory, "loss.sample_weighting", config,
                                                    graph, sw_params)
    extras = [*oracle_columns(graph), *sample_weighting.columns()]
    splits = _prepare_data(config, engine, graph, pipeline, extras, sample_weighting, dist, say)
    encoded, sources = splits.encoded, splits.sources
    tensors = {name: TensorData(data) for name, data in encoded.items()}

    losses = build_losses(config, engine, graph)
    model = build_model(config, engine, graph, pipeline.layout(),
                        links=[loss.to_value for loss in losses])
    lw_factory, lw_params = resolve_component(
        engine.components.loss_weightings, config.loss.weighting.kind,
        config.loss.weighting.params, key="loss.weighting", source=config.source)
    weighting: LossWeighting = construct(lw_factory, "loss.weighting", config, graph, lw_params)
    ranking = RankingObjective(config, engine, graph) if config.loss.ranking else None
    metric_components = select_metrics(engine.components.metrics, config.evaluate.metrics)
    stopper = EarlyStopper(config, graph, metric_components)

    checkpoints = Checkpoints(config, dist) if config.train.checkpoint_dir else None
    if resume and checkpoints is None:
        raise ConfigError("--resume needs [train] checkpoint_dir", source=config.source,
                          key="train.checkpoint_dir")
    restored = checkpoints.latest(say) if checkpoints is not None and resume else None
    history: list[dict[str, Any]] = []
    best_epoch, seen, elapsed_before = 0, 0, 0.0
    position = Position(1, 0)
    if restored is not None:
        assert checkpoints is not None
        position, state = restored
        checkpoints.restore(state, model, weighting, stopper, tasks=len(graph),
                            ranking_generator=ranking.generator if ranking else None)
        history = state["history"]
        best_epoch, seen, elapsed_before = state["best_epoch"], state["seen"], state["elapsed"]
        if state.get("stopped"):  # early stopping had ended the run: nothing left to train
            position = Position(config.train.epochs + 1, 0)
    objective = Objective(graph, model, losses, sample_weighting)
    params = list(model.parameters()) + list(weighting.parameters())
    dist.broadcast_parameters(params)  # identical replicas whatever each rank's init did
    shared = model.shared_parameters()
    optimizer = _optimizer(config, params)
    best_state = copy.deepcopy(model.state_dict())
    if restored is not None:
        assert checkpoints is not None
        checkpoints.restore_optimizer(state, optimizer)
        best_state = state["best_state"]
    context = TrainContext(config, engine, graph, pipeline, model,
                           {"train": len(splits.train), **{k: len(v) for k, v in encoded.items()
                                                          if k != "train"}},
                           rank=dist.rank, world_size=dist.world_size)
    if log is not None:
        context.log = log
    engine.hooks.before_train(context)

    show = (config.train.progress if progress is None else progress) and dist.is_main
    started = time.perf_counter()

    def snapshot(epoch_generator: torch.Tensor, epoch_sums: torch.Tensor, epoch_rank_sum: float,
                 stopped: bool = False) -> dict[str, Any]:
        """Everything a resumed run needs; the epoch_* entries say where in the epoch it is."""
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "weighting": module_state(weighting),
            "stopper": {"best": stopper.best, "bad_epochs": stopper.bad_epochs},
            "history": history,
            "best_epoch": best_epoch, "best_state": best_state, "seen": seen,
            "elapsed": elapsed_before + time.perf_counter() - started,
            "epoch_generator": epoch_generator, "epoch_sums": epoch_sums,
            "epoch_rank_sum": epoch_rank_sum, "rng": rng_state(),
            "ranking_generator": ranking.generator.get_state() if ranking else None,
            "stopped": stopped,
        }

    keep_groups = ranking is not None
    for epoch in range(position.epoch, config.train.epochs + 1):
        resuming = restored is not None and epoch == position.epoch
        if resuming:
            generator.set_state(state["epoch_generator"])
        epoch_generator = generator.get_state()
        model.train()
        sums = torch.zeros(len(graph))
        rank_sum = 0.0
        steps = 0  # this rank's batches
        global_steps = 0  # steps every rank took together
        bar = tqdm(total=len(splits.train), unit="rows", unit_scale=True, disable=not show,
                   desc=f"epoch {epoch}/{config.train.epochs}", leave=False)
        batches = splits.train.batches(config.train.batch_size, generator, keep_groups)
        if resuming:
            for _ in range(position.batches):  # replay the data order up to the checkpoint
                if next(batches, None) is not None:
                    steps += 1
            global_steps = position.batches
            sums, rank_sum = state["epoch_sums"], state["epoch_rank_sum"]
            set_rng_state(state["rng"])
        while True:
            batch = next(batches, None)
            if batch is None and not dist.active:
                break
            optimizer.zero_grad(set_to_none=True)
            total = torch.zeros(())
            if batch is not None:
                out = model(batch.inputs)
                task_losses = objective(out, batch)
                if ranking is not None:  # its gradient first; the weighting's backward adds
                    rank_loss = ranking(out, batch)
                    if torch.isfinite(rank_loss):
                        rank_loss.backward(retain_graph=True)  # type: ignore[no-untyped-call]
                    rank_sum += float(rank_loss.detach())
                # a learnable cascade's own loss (a calibrator penalty, a regulariser)
                auxiliary = model.cascade.auxiliary_loss()
                if auxiliary is not None and torch.isfinite(auxiliary):
                    auxiliary.backward(retain_graph=True)  # type: ignore[no-untyped-call]
                total = weighting.backward(task_losses, shared) \
                    if torch.isfinite(task_losses).all() else task_losses.sum()
                if ranking is not None:
                    total = total.detach() + rank_loss.detach()
                if auxiliary is not None:
                    total = total.detach() + auxiliary.detach()
                if not torch.isfinite(total):
                    raise TrainingError(
                        f"epoch {epoch}, step {steps + 1}: loss became {total.item()} (per task: "
                        f"{dict(zip(graph.names, task_losses.tolist(), strict=True))}); "
                        f"lower [train] lr or check the inputs"
                    )
            if not dist.average_gradients(params, batch is not None):
                break  # every rank has run out of data
            optimizer.step()
            global_steps += 1
            if batch is not None:
                sums += task_losses.detach()
                steps += 1
                seen += len(batch)
                if show:
                    bar.update(len(batch))
                    if steps % 20 == 0:
                        bar.set_postfix(loss=f"{total.item():.4f}")
            if checkpoints is not None and checkpoints.due(global_steps):
                checkpoints.save(Position(epoch, global_steps),
                                 snapshot(epoch_generator, sums.clone(), rank_sum))
        bar.close()
        totals = dist.sum(torch.cat([sums, torch.tensor([float(steps), rank_sum])]))
        mean_losses = totals[:len(graph)] / max(float(totals[-2]), 1.0)
        train_loss = dict(zip(graph.names, mean_losses.tolist(), strict=True))
        weighting.after_epoch(epoch, train_loss)
        valid_loss, valid_metrics = _evaluate_split(
            model, objective, weighting, tensors["valid"], encoded["valid"], config,
            metric_components)
        record = {
            "epoch": epoch, "train_loss": train_loss,
            "train_loss_total": float(weighting.combine(mean_losses).detach()),
            "valid_loss": valid_loss,
            "valid": valid_metrics, "loss_weights": weighting.current_weights(),
        }
        if ranking is not None:
            record["train_ranking_loss"] = float(totals[-1]) / max(float(totals[-2]), 1.0)
        history.append(record)
        engine.hooks.after_epoch(context, epoch, record)
        improved, stop = stopper.update(epoch, valid_loss, valid_metrics)
        if config.train.early_stopping is not None:
            why = stopper.undefined(valid_loss, valid_metrics)
            if why:
                say(f"early stopping: {config.train.early_stopping.metric} is undefined at "
                    f"epoch {epoch} ({why}); the epoch is not judged")
        if improved:
            best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
        if checkpoints is not None:
            checkpoints.save(Position(epoch + 1, 0),
                             snapshot(generator.get_state(), torch.zeros(len(graph)), 0.0,
                                      stopped=stop))
        if stop:
            say(f"early stopping after epoch {epoch}: no improvement of "
                f"{config.train.early_stopping.metric if config.train.early_stopping else ''} "
                f"since epoch {best_epoch}")
            break
    elapsed = elapsed_before + time.perf_counter() - started
    seen = int(dist.sum(torch.tensor([float(seen)])).item())
    model.load_state_dict(best_state)

    metrics: dict[str, Metrics] = {}
    for split in ("valid", "test"):
        if split in encoded:
            metrics[split] = _evaluate_split(model, objective, weighting, tensors[split],
                                             encoded[split], config, metric_components)[1]
    result = TrainResult(
        best_epoch=best_epoch, epochs_run=len(history), history=history, metrics=metrics,
        train_seconds=elapsed, samples_per_second=seen / elapsed if elapsed else 0.0,
        label_reports={k: v.report.as_dict() for k, v in encoded.items() if v.report},
        data_sources=sources, loss_weights=weighting.current_weights(),
        rows={"train": len(splits.train), **{k: len(v) for k, v in encoded.items()}},
        gate_stats=gate_statistics(model, tensors["valid"], config.train.eval_batch_size),
    )
    engine.hooks.after_train(context, result)
    # The saved config names its data by absolute paths: an artifact does not live where
    # engine.toml does, and the report reads the evaluation split back from them.
    return Trained(absolute_data_paths(config), engine, graph, pipeline, model, result)


class InMemoryData:
    """The encoded training split held in memory."""

    def __init__(self, data: EncodedData) -> None:
        self.tensors = TensorData(data)

    def __len__(self) -> int:
        return len(self.tensors)

    def batches(self, batch_size: int, generator: torch.Generator,
                keep_groups: bool) -> Iterator[Batch]:
        return iterate_batches(self.tensors, batch_size, shuffle=True, generator=generator,
                               keep_groups=keep_groups)


@dataclass
class PreparedData:
    train: InMemoryData | StreamingData
    encoded: dict[str, EncodedData]  # valid, test, and train when it is in memory
    sources: dict[str, str]


def _prepare_data(config: EngineConfig, engine: Engine, graph: TaskGraph,
                  pipeline: FeaturePipeline, extras: list[str], sample_weighting: SampleWeighting,
                  dist: DistContext, say: Callable[[str], None]) -> PreparedData:
    """Fit the pipeline and encode the splits: all in memory for a plain run; with streaming
    or several ranks, each rank's share of the training row groups, fitted once on rank 0."""
    if not config.data.streaming and not dist.active:
        encoded, sources = _encoded_splits(config, engine, graph, pipeline, extras, say)
        for split, split_data in encoded.items():
            sample_weighting.check(split_data.extras, where=sources.get(split, split))
        return PreparedData(InMemoryData(encoded["train"]), encoded, sources)
    data = config.data
    why = "streaming" if data.streaming else "distributed training"
    if not data.valid:
        raise ConfigError(f"{why} needs a separate [data] valid file (the training split is "
                          f"never read whole, so nothing can be held out of it)",
                          source=config.source, key="data.valid")
    train_path = config.resolve_path(data.train)
    if not train_path.exists():
        raise ConfigError(f"data file or directory not found: {train_path}",
                          source=config.source, key="data.train")
    every_fragment = list_fragments(train_path, engine.components.sources, format=data.format,
                                    csv=data.csv)
    if not any(fragment.rows for fragment in every_fragment):
        raise DataError(f"{train_path}: no rows to train on")
    fragments = every_fragment[dist.rank::dist.world_size]
    columns = needed_columns(config, graph, pipeline, extras)
    where = f"{train_path} (rank {dist.rank} of {dist.world_size})" if dist.active \
        else str(train_path)
    state = None
    if dist.is_main:
        # Spread over every rank's row groups, bounded by fit_rows.
        sample = read_fragments(sample_fragments(every_fragment, data.fit_rows), columns)
        pipeline.fit(sample, where=where)
        say(f"fitted the features on {sample.num_rows:,} rows of {train_path}")
        state = pipeline.state()
    pipeline.load_state(dist.broadcast_object(state))
    encode = EncodeChunk(pipeline, graph, policy=data.inconsistent, group=data.group,
                         extras=extras)

    def checked(table: pa.Table, *, where: str) -> EncodedData:
        chunk = encode(table, where=where)
        sample_weighting.check(chunk.extras, where=where)
        return chunk

    train_data: InMemoryData | StreamingData
    if data.streaming:
        train_data = StreamingData(fragments, columns, checked, data.buffer_rows)
    else:
        train_data = InMemoryData(checked(read_fragments(fragments, columns), where=where))
    sources = {"train": where}
    encoded = {}
    for split in ("valid", "test"):
        path = getattr(data, split)
        if path:
            resolved = config.resolve_path(path)
            if not resolved.exists():
                raise ConfigError(f"data file or directory not found: {resolved}",
                                  source=config.source, key=f"data.{split}")
            table = read_table(resolved, columns, sources=engine.components.sources,
                               format=data.format, csv=data.csv)
            encoded[split] = encode(table, where=str(resolved))
            sample_weighting.check(encoded[split].extras, where=str(resolved))
            sources[split] = str(resolved)
    say(f"training on {len(train_data):,} rows" + (" (streamed)" if data.streaming else "")
        + f"; valid {len(encoded['valid']):,}"
        + (f", test {len(encoded['test']):,}" if "test" in encoded else "") + " rows")
    return PreparedData(train_data, encoded, sources)


def _check_directory(directory: Path, config: EngineConfig, key: str) -> None:
    """A folder rankengine writes into (``[data] cache_dir``, ``[train] checkpoint_dir``) must
    be one, or be creatable: its nearest existing ancestor is a writable directory."""
    for parent in (directory, *directory.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{parent} is a file, not a directory", source=config.source,
                                  key=key)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{parent} is not writable", source=config.source, key=key)
            return


class Checkpoints:
    """Where and when this run checkpoints; only rank 0 writes."""

    def __init__(self, config: EngineConfig, dist: DistContext) -> None:
        assert config.train.checkpoint_dir is not None
        self.directory = config.resolve_path(config.train.checkpoint_dir)
        self.every = config.train.checkpoint_every
        self.keep = config.train.keep_checkpoints
        self.dist = dist
        self.fingerprint = _config_fingerprint(config)
        self.source = config.source
        self.path: Path | None = None  # the checkpoint latest() returned

    def due(self, global_steps: int) -> bool:
        return bool(self.every) and global_steps % self.every == 0

    def save(self, position: Position, state: dict[str, Any]) -> None:
        if self.dist.is_main:
            save_checkpoint(self.directory, position,
                            {**state, "fingerprint": self.fingerprint}, keep=self.keep)
        self.dist.barrier()

    def latest(self, say: Callable[[str], None]) -> tuple[Position, dict[str, Any]] | None:
        found = load_latest(self.directory)
        if found is None:
            say(f"no checkpoint in {self.directory}; starting from scratch")
            return None
        position, state, path = found
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{path} was written by a run with another configuration (only [train] "
                f"epochs, progress and the checkpoint keys may change between runs); move "
                f"it away or use another checkpoint_dir")
        for key, kind in _CHECKPOINT_TYPES.items():
            if not isinstance(state.get(key), kind):
                raise CheckpointError(
                    f"{path}: '{key}': expected {' or '.join(k.__name__ for k in kind)}, "
                    f"found {type(state.get(key)).__name__}")
        # Unusable states fail here, on throwaway generators, not after a replayed epoch.
        check_rng_state(state["rng"], f"{path}: 'rng'")
        check_generator_state(state["epoch_generator"], f"{path}: 'epoch_generator'")
        if state["ranking_generator"] is not None:
            check_generator_state(state["ranking_generator"], f"{path}: 'ranking_generator'")
        self.path = path
        say(f"resuming from {path} (epoch {position.epoch}, after {position.batches} steps)")
        return position, state

    def restore(self, state: dict[str, Any], model: torch.nn.Module, weighting: LossWeighting,
                stopper: EarlyStopper, tasks: int,
                ranking_generator: torch.Generator | None) -> None:
        """Load what :meth:`latest` returned into this run's objects; every mismatch is a
        one-line :class:`CheckpointError` naming the file."""
        where = str(self.path)
        load_state_dict_checked(model, state["model"], f"{where}: 'model'")
        reference = model.state_dict()
        best = state["best_state"]
        if best.keys() != reference.keys() or any(
                not isinstance(best[k], torch.Tensor) or best[k].shape != v.shape
                for k, v in reference.items()):
            raise CheckpointError(f"{where}: 'best_state': expected the model's tensors "
                                  f"({len(reference)} with its shapes)")
        load_module_state(weighting, state["weighting"], f"{where}: 'weighting'")
        if not all(isinstance(record, dict) for record in state["history"]):
            raise CheckpointError(f"{where}: 'history': expected a list of per-epoch records")
        saved = state["stopper"]
        if not isinstance(saved.get("best"), float | int) \
                or not isinstance(saved.get("bad_epochs"), int):
            raise CheckpointError(f"{where}: 'stopper': expected best (a number) and "
                                  f"bad_epochs (an integer), found {sorted(saved)}")
        stopper.best, stopper.bad_epochs = float(saved["best"]), saved["bad_epochs"]
        if state["epoch_sums"].shape != (tasks,):
            raise CheckpointError(f"{where}: 'epoch_sums': expected shape ({tasks},), found "
                                  f"{tuple(state['epoch_sums'].shape)}")
        if ranking_generator is not None:
            if state["ranking_generator"] is None:
                raise CheckpointError(f"{where}: 'ranking_generator': expected a generator "
                                      f"state, found none")
            ranking_generator.set_state(state["ranking_generator"])

    def restore_optimizer(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        load_optimizer_state(optimizer, state["optimizer"], f"{self.path}: 'optimizer'")


# What a checkpoint's state must hold (train's snapshot writes it), checked before any use.
_CHECKPOINT_TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "weighting": (dict,), "stopper": (dict,),
    "history": (list,), "best_epoch": (int,), "best_state": (dict,), "seen": (int,),
    "elapsed": (float, int), "epoch_generator": (torch.Tensor,), "epoch_sums": (torch.Tensor,),
    "epoch_rank_sum": (float, int), "rng": (dict,), "ranking_generator": (torch.Tensor, type(None)),
    "stopped": (bool,),
}


def _config_fingerprint(config: EngineConfig) -> str:
    resolved = config.resolved_dict()
    train = dict(resolved.get("train", {}))
    for key in ("epochs", "progress", "checkpoint_dir", "checkpoint_every", "keep_checkpoints"):
        train.pop(key, None)
    resolved["train"] = train
    blob = json.dumps(resolved, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _encoded_splits(
    config: EngineConfig, engine: Engine, graph: TaskGraph, pipeline: FeaturePipeline,
    extras: list[str], say: Callable[[str], None],
) -> tuple[dict[str, EncodedData], dict[str, str]]:
    """Read, fit and encode the splits, or take them from ``[data] cache_dir``."""
    cache_root = config.resolve_path(config.data.cache_dir) if config.data.cache_dir else None
    key = ""
    if cache_root is not None:
        tasks = {n.name: n.spec.model_dump(mode="json") for n in graph.nodes}
        key = data_cache.cache_key(config, tasks, extras, engine.components.sources)
        hit = data_cache.load(cache_root, key)
        if hit is not None:
            state, encoded, sources = hit
            pipeline.load_state(state)
            say(f"encoded data from cache {cache_root / key}")
            return encoded, sources
    columns = needed_columns(config, graph, pipeline, extras)
    splits = read_splits(config, columns, config.engine.seed, engine)
    say(f"read {splits.train.num_rows:,} train / {splits.valid.num_rows:,} valid"
        + (f" / {splits.test.num_rows:,} test" if splits.test is not None else "") + " rows")
    pipeline.fit(splits.train, where=splits.sources["train"])
    encoded = {}
    for name, table in (("train", splits.train), ("valid", splits.valid), ("test", splits.test)):
        if table is not None:
            encoded[name] = encode_table(
                table, pipeline, graph, policy=config.data.inconsistent,
                group=config.data.group, extras=extras, where=splits.sources[name])
    if cache_root is not None:
        data_cache.store(cache_root, key, pipeline.state(), encoded, splits.sources)
    return encoded, splits.sources


def check_buildable(config: EngineConfig, engine: Engine, graph: TaskGraph,
                    pipeline: FeaturePipeline) -> None:
    """Build everything a saved model is rebuilt from, once, before any data is read: a config
    that would train for hours and then register a version that never loads (a fusion weight
    naming no task, a NaN saved as null) fails in seconds, naming the key.

    Checked: the config as it is saved with the model (JSON, read back and validated again),
    the fusion, every task's loss, the loss weighting, the ranking objective, early stopping,
    and the cascade, backbone and towers on a stand-in feature layout (the real one needs the
    fitted encoders; training builds the model again on it).
    """
    check_saved_config(config, engine)
    build_fusion(config, engine, graph)
    links = [loss.to_value for loss in build_losses(config, engine, graph)]
    with torch.random.fork_rng(devices=[]):  # the real model's initialisation is unchanged
        factory, params = resolve_component(
            engine.components.loss_weightings, config.loss.weighting.kind,
            config.loss.weighting.params, key="loss.weighting", source=config.source)
        construct(factory, "loss.weighting", config, graph, params)
        if config.loss.ranking:
            RankingObjective(config, engine, graph)
        EarlyStopper(config, graph, select_metrics(engine.components.metrics,
                                                   config.evaluate.metrics))
        try:
            build_model(config, engine, graph,
                        feature_layout(pipeline.features, pipeline.encoders, cardinality=2),
                        links=links)
        except (ValueError, GraphError) as exc:
            raise ConfigError(str(exc), source=config.source, key="model") from None


def check_saved_config(config: EngineConfig, engine: Engine) -> None:
    """The config must read back from the JSON saved with the model as the same config: no
    NaN or infinity (JSON writes them as null), nothing that validates differently. The
    config's defaults are filled first (as they are before the model saves it)."""
    from rankengine.config import parse_config

    validate_components(config, engine)
    raw = config.resolved_dict()
    leaves = flat_keys(raw, lists=True)
    for key, value in leaves.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"expected a finite number, found {value}", source=config.source,
                              key=key)
    again = parse_config(json.loads(json.dumps(raw)), source=config.source,
                         base_dir=config.base_dir)
    validate_components(again, engine)
    back = flat_keys(again.resolved_dict(), lists=True)
    for key in sorted(set(leaves) | set(back)):
        if leaves.get(key) != back.get(key):
            raise ConfigError(f"{leaves.get(key)!r} reads back as {back.get(key)!r} from the "
                              f"config saved with the model", source=config.source, key=key)


def _optimizer(config: EngineConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    t = config.train
    # fused: one kernel for every parameter's update (the step's Adam cost drops ~5x on CPU)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=0.9)


@torch.inference_mode()
def gate_statistics(model: RankingModel, data: TensorData, batch_size: int,
                    max_rows: int = 200_000) -> dict[str, dict[str, list[Any]]]:
    """Mean gate weight per expert for each task's main head (the MMoE paper's analysis of
    which experts each task uses); empty for backbones without gates."""
    model.eval()
    names: list[str] = []
    sums: torch.Tensor | None = None
    rows = 0
    for batch in iterate_batches(data, batch_size, shuffle=False):
        if rows >= max_rows:
            break
        model(batch.inputs)
        gates = model.backbone.gate_weights()
        if gates is None:
            return {}
        names, weights = gates
        total = weights.double().sum(dim=0)  # [heads, E]
        sums = total if sums is None else sums + total
        rows += len(batch)
    if sums is None:
        return {}
    heads = model.cascade.heads()
    stats = {}
    for node in model.graph.nodes:
        index = next((i for i, h in enumerate(heads) if h.node == node.name and h.role == "main"),
                     next((i for i, h in enumerate(heads) if h.node == node.name), None))
        if index is not None:
            stats[node.name] = {"experts": names, "weights": (sums[index] / rows).tolist()}
    return stats


@torch.inference_mode()
def _evaluate_split(model: RankingModel, objective: Objective, weighting: LossWeighting,
                    tensors: TensorData, data: EncodedData, config: EngineConfig,
                    metrics: list[Component[Metric]]) -> tuple[dict[str, float], Metrics]:
    model.eval()
    graph = model.graph
    sums = torch.zeros(len(graph))
    rows = 0
    entire, conditional = [], []
    for batch in iterate_batches(tensors, config.train.eval_batch_size, shuffle=False):
        out = model(batch.inputs)  # one forward for the loss and the predictions
        sums += objective(out, batch) * len(batch)
        rows += len(batch)
        entire.append(out.entire(graph))
        conditional.append(out.conditional(graph))
    if rows == 0:  # no loss exists on no rows (and 0 would look like a perfect epoch)
        loss = dict.fromkeys([*graph.names, "total"], math.nan)
        empty = np.zeros((0, len(graph)))
        return loss, node_metrics(graph, data, empty, empty, metrics)
    loss = dict(zip(graph.names, (sums / rows).tolist(), strict=True))
    loss["total"] = float(weighting.combine(sums / rows))
    return loss, node_metrics(graph, data, torch.cat(entire).double().numpy(),
                              torch.cat(conditional).double().numpy(), metrics)


class EarlyStopper:
    """Tracks ``loss`` (total validation loss) or ``<metric>:<task>`` for early stopping."""

    def __init__(self, config: EngineConfig, graph: TaskGraph,
                 metrics: list[Component[Metric]]) -> None:
        self.spec = config.train.early_stopping
        self.best = math.inf
        self.bad_epochs = 0
        self.metric: str | None = None
        self.task: str | None = None
        self.judge: Metric | None = None
        if self.spec is None or self.spec.metric == "loss":
            return
        name, _, task = self.spec.metric.partition(":")
        base = name.removesuffix("_cond")
        known = {m.name: m for m in metrics}
        if base not in known or not task:
            raise ConfigError(
                f"expected 'loss' or '<metric>:<task>' (e.g. 'auc:{graph.names[-1]}') with a "
                f"metric among {', '.join(sorted(known))}; found {self.spec.metric!r}",
                source=config.source, key="train.early_stopping.metric")
        if task not in graph.names:
            raise ConfigError(f"task '{task}' is not in the graph ({', '.join(graph.names)})",
                              source=config.source, key="train.early_stopping.metric")
        node = graph.node(task)
        if known[base].factory.task_type != node.type:  # never computed: never judged
            fitting = sorted(m for m, c in known.items() if c.factory.task_type == node.type)
            raise ConfigError(f"metric '{base}' is computed for {known[base].factory.task_type} "
                              f"tasks, but '{task}' is a {node.type} task; its metrics: "
                              f"{', '.join(fitting) or '(none)'}", source=config.source,
                              key="train.early_stopping.metric")
        if known[base].factory.needs_group and not config.data.group:
            raise ConfigError(f"metric '{base}' is computed per request group; set [data] group",
                              source=config.source, key="train.early_stopping.metric")
        if name.endswith("_cond") and node.parent is None:
            raise ConfigError(f"'{name}' is measured on the parent-positive rows, but task "
                              f"'{task}' has no parent (after); use '{base}:{task}'",
                              source=config.source, key="train.early_stopping.metric")
        self.metric, self.task = name, task
        self.judge = known[base].factory  # its direction: higher, lower or closest to a target

    def value(self, loss: dict[str, float], metrics: Metrics) -> float:
        """The tracked quantity, lower is better; NaN where it is undefined this epoch."""
        if self.metric is None:
            return float(loss.get("total", math.nan))
        assert self.task is not None
        found = (metrics.get(self.task) or {}).get(self.metric)
        if not isinstance(found, int | float) or not math.isfinite(found):
            return math.nan
        assert self.judge is not None
        return self.judge.badness(float(found))

    def undefined(self, loss: dict[str, float], metrics: Metrics) -> str | None:
        """Why the tracked metric has no value this epoch (None when it has one)."""
        if math.isfinite(self.value(loss, metrics)):
            return None
        if self.metric is None:
            return "no validation rows"
        assert self.task is not None
        return undefined_reason(metrics, self.task, self.metric) or "not computed"

    def update(self, epoch: int, loss: dict[str, float], metrics: Metrics) -> tuple[bool, bool]:
        """Returns (improved, stop).

        An epoch whose tracked metric is undefined (e.g. AUC on a split without positives) is
        not judged: it neither improves nor counts towards the patience, except that until a
        defined value has been seen the latest epoch is kept, as without early stopping.
        """
        value = self.value(loss, metrics)
        if not math.isfinite(value):
            return self.best == math.inf, False
        min_delta = self.spec.min_delta if self.spec else 0.0
        if value < self.best - min_delta:
            self.best = value
            self.bad_epochs = 0
            return True, False
        self.bad_epochs += 1
        return False, self.spec is not None and self.bad_epochs >= self.spec.patience
