"""The training loop: plan, prepare the data, then epochs of steps, evaluation and checkpoints.

The hot loop is tensor code only: batches are gathered column-wise, every task's loss is
computed from the cascade's log-space outputs and combined by the loss-weighting plugin.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from rankengine.bundle import ModelBundle, TrainContext, TrainResult
from rankengine.checkpoint import Position, module_state, rng_state, set_rng_state
from rankengine.config import EngineConfig
from rankengine.data.batching import Batch, TensorData, iterate_batches
from rankengine.device import DeviceError, fits_on, resolve_device
from rankengine.distributed import DistContext, context_from_env
from rankengine.errors import ConfigError, TrainingError, one_line
from rankengine.evaluate import Metrics
from rankengine.interfaces import CascadeOutput
from rankengine.model.assembly import RankingModel
from rankengine.model.calibration import mean_preserving_offsets
from rankengine.plan import Plan, make_plan
from rankengine.pluginmanager import Engine
from rankengine.train.checkpoints import Checkpoints
from rankengine.train.checks import check_buildable, check_directory
from rankengine.train.data import PreparedData, prepare_data
from rankengine.train.evaluation import evaluate_split, gate_statistics
from rankengine.train.objective import Objective
from rankengine.train.splits import absolute_data_paths
from rankengine.train.stopping import EarlyStopper


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train(config: EngineConfig, *, engine: Engine | None = None, progress: bool | None = None,
          log: Callable[[str], None] | None = None, resume: bool = False) -> ModelBundle:
    """Run a full training job as configured; returns the trained bundle (its ``result``
    holds the metrics).

    Under ``torchrun`` every rank calls this: each trains on its share of the data and the
    gradients are averaged after every step (see :mod:`rankengine.distributed`). With
    ``resume``, training continues from the newest intact checkpoint in
    ``[train] checkpoint_dir``.
    """
    if config.engine.threads:
        torch.set_num_threads(config.engine.threads)
    generator = seed_everything(config.engine.seed)
    with torch.random.fork_rng(devices=[]):  # planning draws nothing the model's init sees
        plan = make_plan(config, engine)
        check_buildable(plan)  # in seconds, before any data is read
    return Trainer(plan, generator, progress=progress, log=log, resume=resume).run()


def train_device(config: EngineConfig) -> torch.device:
    """``[train] device`` on this machine (a one-line config error when it is not there)."""
    try:
        return resolve_device(config.train.device)
    except DeviceError as exc:
        raise ConfigError(str(exc), source=config.source, key="train.device") from None


def lr_factor(config: EngineConfig, step: int, total_steps: int) -> float | None:
    """lr multiplier of step ``step`` of ``total_steps``; None: the constant schedule without
    warm-up (the optimiser's lr is left exactly as it is)."""
    t = config.train
    if t.lr_schedule == "constant" and not t.warmup_steps:
        return None
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps))
    if t.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def optimizer_for(config: EngineConfig,
                  params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    t = config.train
    # fused: one kernel for every parameter's update (the step's Adam cost drops ~5x on CPU)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=0.9)


class Trainer:
    """One training run of a plan: its data, model, optimiser, stopper and checkpoints."""

    def __init__(self, plan: Plan, generator: torch.Generator, *, progress: bool | None,
                 log: Callable[[str], None] | None, resume: bool) -> None:
        config = plan.config
        self.plan, self.config, self.graph = plan, config, plan.graph
        self.generator = generator
        self.dist: DistContext = context_from_env(train_device(config))
        self.device = self.dist.device
        self.say: Callable[[str], None] = (log or (lambda _msg: None)) if self.dist.is_main \
            else (lambda _msg: None)
        if resume and not config.train.checkpoint_dir:
            raise ConfigError("--resume needs [train] checkpoint_dir", source=config.source,
                              key="train.checkpoint_dir")
        # Folders this run writes into must fail now, not after the data is read or an epoch ran.
        for key, folder in (("train.checkpoint_dir", config.train.checkpoint_dir),
                            ("data.cache_dir", config.data.cache_dir)):
            if folder:
                check_directory(config.resolve_path(folder), config, key)
        self.stopper = EarlyStopper(config, plan.graph, plan.metrics)

        self.data: PreparedData = prepare_data(plan, self.dist, self.say)
        self.data.train.place(self.device, self.say)
        self.tensors = {name: TensorData(data) for name, data in self.data.encoded.items()}
        for name, tensors in self.tensors.items():  # the evaluation splits too, when they fit
            if name != "train" and fits_on(self.device, tensors.nbytes, share=0.1):
                self.tensors[name] = tensors.to(self.device)
        self.model = plan.build_model(plan.pipeline.layout()).to(self.device)
        self.bundle = ModelBundle(plan, self.model)
        #: the weights' moving average (``[train] ema_decay``): what is validated and kept
        self.ema: AveragedModel | None = None
        if config.train.ema_decay is not None:
            average = get_ema_multi_avg_fn(config.train.ema_decay)  # type: ignore[no-untyped-call]
            self.ema = AveragedModel(self.model, device=self.device, multi_avg_fn=average)
        self.weighting, self.ranking = plan.loss_weighting, plan.ranking
        self.checkpoints = Checkpoints(config, self.dist) if config.train.checkpoint_dir \
            else None
        self.history: list[dict[str, Any]] = []
        self.best_epoch, self.seen, self.elapsed_before = 0, 0, 0.0
        self.position = Position(1, 0)
        self.restored: dict[str, Any] | None = None
        if self.checkpoints is not None and resume:
            found = self.checkpoints.latest(self.say)
            if found is not None:
                self.position, self.restored = found
                self._restore_training_state(self.restored)
        self.weighting.to(self.device)
        self.objective = Objective(plan.graph, self.model, plan.losses,
                                   plan.sample_weighting).to(self.device)
        self.odds_correction = self.correct_odds() if config.calibration.odds_correction \
            else {}
        self.params = self.model.training_parameters() + list(self.weighting.parameters())
        self.dist.broadcast_parameters(self.params)  # identical replicas whatever the init
        self.shared = self.model.shared_parameters()
        self.optimizer = optimizer_for(config, self.params)
        precision = config.train.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        #: fp16 gradients underflow without loss scaling; a no-op for fp32 and bf16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.forward: Callable[[Any], Any] = self.model
        if config.train.compile:
            self.forward = torch.compile(self.model)
        self.best_state = copy.deepcopy(self.model.state_dict())
        if self.restored is not None:
            assert self.checkpoints is not None
            self.checkpoints.restore_optimizer(self.restored, self.optimizer)
            if isinstance(self.restored.get("scaler"), dict) and self.scaler.is_enabled():
                self.scaler.load_state_dict(self.restored["scaler"])
            self.best_state = self.restored["best_state"]
        encoded = self.data.encoded
        self.context = TrainContext(
            self.bundle, {"train": len(self.data.train),
                          **{k: len(v) for k, v in encoded.items() if k != "train"}},
            rank=self.dist.rank, world_size=self.dist.world_size)
        if log is not None:
            self.context.log = log
        self.show = (config.train.progress if progress is None else progress) \
            and self.dist.is_main
        self.started = 0.0
        # Every rank steps together, so every rank takes rank 0's count (its share may differ).
        rows = len(self.data.train)
        self.steps_per_epoch = int(self.dist.broadcast_object(
            -(-rows // config.train.batch_size)))

    def _restore_training_state(self, state: dict[str, Any]) -> None:
        assert self.checkpoints is not None
        self.checkpoints.restore(state, self.model, self.weighting, self.stopper,
                                 tasks=len(self.graph),
                                 ranking_generator=self.ranking.generator if self.ranking
                                 else None, ema=self.ema)
        self.history = state["history"]
        self.best_epoch, self.seen = state["best_epoch"], state["seen"]
        self.elapsed_before = state["elapsed"]
        if state.get("stopped"):  # early stopping had ended the run: nothing left to train
            self.position = Position(self.config.train.epochs + 1, 0)

    def snapshot(self, epoch_generator: torch.Tensor, epoch_sums: torch.Tensor,
                 epoch_rank_sum: float, stopped: bool = False) -> dict[str, Any]:
        """Everything a resumed run needs; the epoch_* entries say where in the epoch it is."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "weighting": module_state(self.weighting),
            "stopper": {"best": self.stopper.best, "bad_epochs": self.stopper.bad_epochs},
            "history": self.history,
            "best_epoch": self.best_epoch, "best_state": self.best_state, "seen": self.seen,
            "elapsed": self.elapsed_before + time.perf_counter() - self.started,
            "epoch_generator": epoch_generator, "epoch_sums": epoch_sums,
            "epoch_rank_sum": epoch_rank_sum, "rng": rng_state(),
            "ranking_generator": self.ranking.generator.get_state() if self.ranking else None,
            "stopped": stopped,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            **({"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}),
        }

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> ModelBundle:
        engine, config = self.plan.engine, self.config
        engine.hooks.before_train(self.context)
        self.started = time.perf_counter()
        for epoch in range(self.position.epoch, config.train.epochs + 1):
            stop = self.run_epoch(epoch)
            if stop:
                break
        elapsed = self.elapsed_before + time.perf_counter() - self.started
        seen = int(self.dist.sum(torch.tensor([float(self.seen)], device="cpu")).item())
        self.model.load_state_dict(self.best_state)
        self.set_bias_reference()

        splits = [split for split in ("valid", "test") if split in self.data.encoded]
        metrics: dict[str, Metrics] = {split: self.evaluate(split)[1] for split in splits}
        uncalibrated: dict[str, Metrics] = {}
        calibration: dict[str, Any] = {}
        if self.model.calibration.active:
            calibration = self.fit_calibration()
            uncalibrated = metrics
            metrics = {split: self.evaluate(split, calibrated=True)[1] for split in splits}
        encoded = self.data.encoded
        result = TrainResult(
            best_epoch=self.best_epoch, epochs_run=len(self.history), history=self.history,
            metrics=metrics, train_seconds=elapsed,
            samples_per_second=seen / elapsed if elapsed else 0.0,
            label_reports={k: v.report.as_dict() for k, v in encoded.items() if v.report},
            data_sources=self.data.sources, loss_weights=self.weighting.current_weights(),
            rows={"train": len(self.data.train), **{k: len(v) for k, v in encoded.items()}},
            gate_stats=gate_statistics(self.model, self.tensors["valid"],
                                       config.train.eval_batch_size),
            uncalibrated_metrics=uncalibrated, calibration=calibration,
            odds_correction=self.odds_correction,
        )
        engine.hooks.after_train(self.context, result)
        # The saved config names its data by absolute paths: an artifact does not live where
        # engine.toml does, and the report reads the evaluation split back from them.
        self.plan.config = absolute_data_paths(config)
        self.bundle.result = result
        return self.bundle

    @property
    def kept_model(self) -> RankingModel:
        """The weights an epoch is judged on and kept with: the moving average, if any."""
        if self.ema is None:
            return self.model
        module = self.ema.module
        assert isinstance(module, RankingModel)
        return module

    def evaluate(self, split: str, *, calibrated: bool = False,
                 model: RankingModel | None = None) -> tuple[dict[str, float], Metrics]:
        return evaluate_split(model or self.model, self.objective, self.weighting,
                              self.tensors[split], self.data.encoded[split], self.config,
                              self.plan.metrics, calibrated=calibrated)

    def model_forward(self, inputs: Any) -> Any:
        """The training forward: under autocast with ``[train] precision``, compiled with
        ``compile`` (eager, once it said why, where the platform cannot compile)."""
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            if self.forward is self.model:
                return self.model(inputs)
            try:
                return self.forward(inputs)
            except Exception as exc:  # torch raises many types while compiling
                self.say(f"[train] compile: torch.compile cannot compile this model here "
                         f"({type(exc).__name__}: {one_line(str(exc))[:200]}); training "
                         f"uncompiled")
                self.forward = self.model
                return self.model(inputs)

    def set_bias_reference(self) -> None:
        """The bias tower's stand-in at scoring (see :class:`BiasTower`), solved per head on
        the validation rows."""
        model = self.model
        if model.bias is None:
            return
        model.eval()
        bias, heads = [], []
        with torch.inference_mode():
            for batch in iterate_batches(self.tensors["valid"],
                                         self.config.train.eval_batch_size, shuffle=False):
                b, z = model.bias_logits(batch.inputs.to(self.device))
                bias.append(b.double().cpu().numpy())
                heads.append(z.double().cpu().numpy())
        reference = mean_preserving_offsets(np.concatenate(heads), np.concatenate(bias))
        model.bias.reference.copy_(torch.from_numpy(reference))
        names = [self.model.cascade.heads()[h].node for h in model.bias.heads]
        self.say("bias tower at scoring: " + ", ".join(
            f"{name} head {r:+.4f}" for name, r in zip(names, reference, strict=True))
            + f" (keeps the mean prediction over the {sum(map(len, bias)):,} validation rows)")

    def correct_odds(self) -> dict[str, float]:
        """Measure the sample weighting's odds factor per binary task on the validation split
        (held whole by every rank, whatever the training mode) and undo it in the loss."""
        valid = self.data.encoded["valid"]
        main, aux = self.objective.odds_factors(valid.labels, valid.extras)
        self.objective.correct_odds(main, aux)
        factors = {name: float(f) for name, f in zip(self.graph.names, main, strict=True)
                   if not np.isclose(f, 1.0)}
        if factors:
            self.say("odds correction for the sample weighting: " + ", ".join(
                f"{name} x{f:.3g}" for name, f in factors.items()))
        return factors

    def fit_calibration(self) -> dict[str, Any]:
        """Fit the calibrators on the validation split (every rank alike: each holds all of
        it), on the model's own predictions of the best epoch."""
        model, data = self.model, self.tensors["valid"]
        model.eval()
        outs = []
        with torch.inference_mode():
            for batch in iterate_batches(data, self.config.train.eval_batch_size,
                                         shuffle=False):
                outs.append(model(batch.inputs.to(self.device)))
        joined = CascadeOutput(*(torch.cat([getattr(o, f.name) for o in outs])
                                 for f in dataclasses.fields(CascadeOutput)))
        rows = model.calibration.fit(joined, self.data.encoded["valid"].labels)
        section = self.config.calibration
        return {"kind": section.kind,
                "regression": section.regression.kind if section.regression else None,
                "fitted_on": self.data.sources.get("valid", "valid"), "rows": rows}

    def run_epoch(self, epoch: int) -> bool:
        """One epoch of steps, then validation, early stopping and the epoch's checkpoint;
        returns whether to stop."""
        config, graph, dist = self.config, self.graph, self.dist
        resuming = self.restored is not None and epoch == self.position.epoch
        state = self.restored
        if resuming:
            assert state is not None
            self.generator.set_state(state["epoch_generator"])
        epoch_generator = self.generator.get_state()
        self.model.train()
        sums = torch.zeros(len(graph), device=self.device)
        rank_sum = 0.0
        steps = 0  # this rank's batches
        global_steps = 0  # steps every rank took together
        bar = tqdm(total=len(self.data.train), unit="rows", unit_scale=True,
                   disable=not self.show, desc=f"epoch {epoch}/{config.train.epochs}",
                   leave=False)
        batches: Iterator[Batch] = self.data.train.batches(
            config.train.batch_size, self.generator, self.ranking is not None)
        if resuming:
            assert state is not None
            for _ in range(self.position.batches):  # replay the data order to the checkpoint
                if next(batches, None) is not None:
                    steps += 1
            global_steps = self.position.batches
            sums, rank_sum = state["epoch_sums"].to(self.device), state["epoch_rank_sum"]
            set_rng_state(state["rng"])
        while True:
            batch = next(batches, None)
            if batch is None and not dist.active:
                break
            task_losses, rank_loss, total = self.step(batch, epoch, steps)
            if not dist.average_gradients(self.params, batch is not None):
                break  # every rank has run out of data
            self.schedule_lr((epoch - 1) * self.steps_per_epoch + global_steps)
            self.scaler.step(self.optimizer)  # optimizer.step(), unscaled first under fp16
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            global_steps += 1
            if batch is not None:
                sums += task_losses.detach()
                rank_sum += rank_loss
                steps += 1
                self.seen += len(batch)
                if self.show:
                    bar.update(len(batch))
                    if steps % 20 == 0:
                        bar.set_postfix(loss=f"{total.item():.4f}")
            if self.checkpoints is not None and self.checkpoints.due(global_steps):
                self.checkpoints.save(Position(epoch, global_steps),
                                      self.snapshot(epoch_generator, sums.clone(), rank_sum))
        bar.close()
        return self.end_epoch(epoch, sums, steps, rank_sum)

    def schedule_lr(self, step: int) -> None:
        """Set the learning rate of optimiser step ``step`` (0-based, over the whole run) from
        ``[train] lr_schedule`` and ``warmup_steps``: a function of the step alone, so a
        resumed run continues the same curve."""
        factor = lr_factor(self.config, step, self.config.train.epochs * self.steps_per_epoch)
        if factor is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.train.lr * factor

    def step(self, batch: Batch | None, epoch: int, steps: int,
             ) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Forward and backward of one batch (None: this rank has no batch left but others
        do; it still joins the gradient averaging). Returns the per-task losses, the ranking
        loss and the step's total loss (a tensor: read only when a progress bar shows it)."""
        self.optimizer.zero_grad(set_to_none=True)
        if batch is None:
            return (torch.zeros(len(self.graph), device=self.device), 0.0,
                    torch.zeros((), device=self.device))
        batch = batch.to(self.device, non_blocking=True)
        out = self.model_forward(batch.inputs)
        task_losses = self.objective(out, batch)
        scale = self.scaler.scale  # fp16: every loss scaled before its backward; else identity
        rank_value = 0.0
        rank_loss = None
        if self.ranking is not None:  # its gradient first; the weighting's backward adds
            rank_loss = self.ranking(out, batch)
            if torch.isfinite(rank_loss):
                scale(rank_loss).backward(retain_graph=True)  # type: ignore[no-untyped-call]
            rank_value = float(rank_loss.detach())
        # a learnable cascade's or the backbone's own loss (a calibrator penalty, a
        # regulariser, a load-balancing loss)
        extras = [loss for loss in (self.model.cascade.auxiliary_loss(),
                                    self.model.backbone.auxiliary_loss()) if loss is not None]
        auxiliary = torch.stack(extras).sum() if extras else None
        if auxiliary is not None and torch.isfinite(auxiliary):
            scale(auxiliary).backward(retain_graph=True)  # type: ignore[no-untyped-call]
        # fp16: the weighting is invariant to a common scale of the losses (it says so), so
        # the scaled losses go through it and the scaler divides the scale out of the grads
        if torch.isfinite(task_losses).all():
            total = self.weighting.backward(scale(task_losses), self.shared)
            if self.scaler.is_enabled():
                total = total.detach() / self.scaler.get_scale()
        else:
            total = task_losses.sum()
        if rank_loss is not None:
            total = total.detach() + rank_loss.detach()
        if auxiliary is not None:
            total = total.detach() + auxiliary.detach()
        if not torch.isfinite(total):
            raise TrainingError(
                f"epoch {epoch}, step {steps + 1}: loss became {total.item()} (per task: "
                f"{dict(zip(self.graph.names, task_losses.tolist(), strict=True))}); "
                f"lower [train] lr or check the inputs"
            )
        return task_losses, rank_value, total.detach()

    def end_epoch(self, epoch: int, sums: torch.Tensor, steps: int, rank_sum: float) -> bool:
        """Average the epoch's losses over ranks, validate, judge, checkpoint; True: stop."""
        config, graph = self.config, self.graph
        totals = self.dist.sum(torch.cat([sums.float(), torch.tensor(
            [float(steps), rank_sum], device=sums.device)])).cpu()
        mean_losses = totals[:len(graph)] / max(float(totals[-2]), 1.0)
        train_loss = dict(zip(graph.names, mean_losses.tolist(), strict=True))
        mean_losses = mean_losses.to(self.device)
        self.weighting.after_epoch(epoch, train_loss)
        valid_loss, valid_metrics = self.evaluate("valid", model=self.kept_model)
        record = {
            "epoch": epoch, "train_loss": train_loss,
            "train_loss_total": float(self.weighting.combine(mean_losses).detach()),
            "valid_loss": valid_loss,
            "valid": valid_metrics, "loss_weights": self.weighting.current_weights(),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        if self.ranking is not None:
            record["train_ranking_loss"] = float(totals[-1]) / max(float(totals[-2]), 1.0)
        self.history.append(record)
        self.plan.engine.hooks.after_epoch(self.context, epoch, record)
        improved, stop = self.stopper.update(epoch, valid_loss, valid_metrics)
        if config.train.early_stopping is not None:
            why = self.stopper.undefined(valid_loss, valid_metrics)
            if why:
                self.say(f"early stopping: {config.train.early_stopping.metric} is undefined "
                         f"at epoch {epoch} ({why}); the epoch is not judged")
        if improved:
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(self.kept_model.state_dict())
        if self.checkpoints is not None:
            self.checkpoints.save(Position(epoch + 1, 0),
                                  self.snapshot(self.generator.get_state(),
                                                torch.zeros(len(graph)), 0.0, stopped=stop))
        if stop:
            metric = config.train.early_stopping.metric if config.train.early_stopping else ""
            self.say(f"early stopping after epoch {epoch}: no improvement of {metric} since "
                     f"epoch {self.best_epoch}")
        return stop
