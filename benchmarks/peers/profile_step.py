"""Where rankengine's census MMoE training step spends its time, and what would make it faster.

    python benchmarks/peers/profile_step.py [--steps 60] [--threads 2] [--json out.json]

Builds the census MMoE exactly as `rankengine.train.train` does (same config as run.py: emb
16, 4 experts of 64, towers 32, batch 1024, Adam 1e-3) on the cached encoded data, then

1. times the phases of the real step (batch gather, forward, loss, backward, optimizer step)
   over ``--steps`` steps, with the forward split by module (forward hooks);
2. times each component's forward + backward alone on the real shapes (embedding lookup,
   expert GEMMs, gates + mixing, towers + cascade + loss), the optimizer step with the
   for-loop / foreach / fused Adam, and one per-epoch validation (loss pass + prediction pass);
3. runs torch.profiler over 20 steps for the top aten ops by self CPU time;
4. counts the step's GEMM FLOPs (FlopCounterMode) beside a float32 GEMM peak, same threads;
5. measures the candidate optimisations (fused Adam, expert weights stored pre-laid-out,
   one validation pass instead of two) against the current code, in this process.

Prints markdown. Needs `python benchmarks/peers/run.py` (or worker.py --prepare) to have
filled the data cache first; runs on any venv with rankengine installed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    common.prepare(args.seed)
    s = Setup(args.seed, args.threads)
    out: dict[str, Any] = {}
    lines: list[str] = []

    phases, forward_parts = s.phase_times(args.steps)
    step_ms = sum(phases.values())
    out["phases_ms"], out["forward_ms"], out["step_ms"] = phases, forward_parts, step_ms
    components = s.component_times(max(args.steps // 2, 10))
    out["components_ms"] = components
    validation = s.validation_times()
    out["validation_ms"] = validation
    top, op_total_ms = s.profiler_top(20)
    out["top_ops"], out["op_self_ms_per_step"] = top, op_total_ms
    flops = s.step_flops()
    peak = common.gemm_peak(args.threads)
    shape_peak = common.step_gemm_peak(args.threads, 1024, s.width, 256)
    out.update(step_gflop=flops / 1e9, gemm_peak_gflops=peak, shape_gemm_gflops=shape_peak)
    experiments = s.experiments(max(args.steps // 2, 10))
    out["experiments_ms"] = experiments

    rows = len(s.tensors["train"])
    epoch_steps = -(-rows // 1024)
    lines += [
        f"Step of 1024 rows, median of {args.steps} steps after a warm-up, {args.threads} torch "
        f"threads: **{step_ms:.2f} ms** ({1024 / step_ms * 1000:,.0f} samples/s for the steps "
        f"alone; one epoch = {epoch_steps} steps = {epoch_steps * step_ms / 1000:.2f} s, plus "
        f"{next(iter(validation.values())) / 1000:.2f} s of validation).",
        "",
        "| phase of the real step | ms | share |", "|---|---|---|",
    ]
    for name, ms in phases.items():
        lines.append(f"| {name} | {ms:.2f} | {ms / step_ms:.0%} |")
    lines += ["", "Forward by module (forward hooks, same steps):", "",
              "| forward part | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in forward_parts.items()]
    lines += ["", "Each component alone, forward + backward on the step's shapes:", "",
              "| component | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in components.items()]
    lines += ["", f"torch.profiler, 20 steps: aten ops' self CPU time {op_total_ms:.2f} ms per "
              f"step against {step_ms:.2f} ms wall (the rest is Python, autograd bookkeeping "
              f"and dispatch between ops). Top ops by self CPU time per step:", "",
              "| op | ms per step | calls per step |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.3f} | {calls:.0f} |" for name, ms, calls in top]
    achieved = flops / 1e9 / (step_ms / 1000)
    lines += ["", f"GEMM FLOPs per step (FlopCounterMode, forward + backward): "
              f"{flops / 1e9:.3f} GFLOP → {achieved:.1f} GFLOP/s over the whole step; float32 "
              f"GEMM peak (2048², same threads) {peak:.1f} GFLOP/s: the step runs at "
              f"{achieved / peak:.0%} of it; the step's largest GEMM shape alone "
              f"([1024, {s.width}] @ [{s.width}, 256]) reaches {shape_peak:.1f} GFLOP/s.",
              "", "Validation after each epoch (census valid split, 49,946 rows):", "",
              "| part | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in validation.items()]
    lines += ["", "Candidate optimisations, measured here against the current code:", "",
              "| experiment | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in experiments.items()]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


class Setup:
    """What `train()` builds for the census MMoE, step by step (same calls, same order)."""

    def __init__(self, seed: int, threads: int) -> None:
        from rankengine.data.batching import TensorData
        from rankengine.plan import make_plan
        from rankengine.train import Objective, seed_everything
        from rankengine.train.data import encoded_splits
        from rankengine.train.loop import optimizer_for

        config = common.rankengine_config("mmoe", seed=seed, epochs=3, threads=threads)
        self.config = config
        self.generator = seed_everything(seed)
        plan = make_plan(config)
        graph = plan.graph
        self.encoded, _ = encoded_splits(plan, lambda _m: None)
        self.tensors = {k: TensorData(v) for k, v in self.encoded.items()}
        self.model = plan.build_model(plan.pipeline.layout())
        self.weighting = plan.loss_weighting
        self.objective = Objective(graph, self.model, plan.losses, plan.sample_weighting)
        self.params = list(self.model.parameters()) + list(self.weighting.parameters())
        self.shared = self.model.shared_parameters()
        self.optimizer = optimizer_for(config, self.params)
        self.metrics = plan.metrics
        self.graph = graph
        self.width = self.model.embedder.output_dim
        self.model.train()

    def batches(self) -> Any:
        from rankengine.data.batching import iterate_batches

        while True:
            yield from iterate_batches(self.tensors["train"], 1024, shuffle=True,
                                       generator=self.generator)

    def step(self, batch: Any) -> None:
        """The body of train()'s inner loop (no ranking loss, no progress bar)."""
        out = self.model(batch.inputs)
        task_losses = self.objective(out, batch)
        self.optimizer.zero_grad(set_to_none=True)
        total = self.weighting.backward(task_losses, self.shared) \
            if torch.isfinite(task_losses).all() else task_losses.sum()
        if not torch.isfinite(total):
            raise RuntimeError("loss is not finite")
        self.optimizer.step()

    def phase_times(self, steps: int) -> tuple[dict[str, float], dict[str, float]]:
        model = self.model
        backbone = model.backbone
        watched = {"embedding lookup (FeatureEmbedder)": model.embedder,
                   "expert GEMMs (ExpertBank)": backbone.experts,
                   "gate logits (Linear)": backbone.gates,
                   **{f"tower {i}": t for i, t in enumerate(model.towers)}}
        spent: dict[str, list[float]] = defaultdict(list)
        starts: dict[str, float] = {}
        handles = []
        for name, module in [("backbone", backbone), ("model", model), *watched.items()]:
            def pre(_m: Any, _a: Any, name: str = name) -> None:
                starts[name] = time.perf_counter()

            def post(_m: Any, _a: Any, _o: Any, name: str = name) -> None:
                spent[name].append(time.perf_counter() - starts[name])
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        phases: dict[str, list[float]] = defaultdict(list)
        batches = self.batches()
        for i in range(steps + 5):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            out = model(batch.inputs)
            t2 = time.perf_counter()
            task_losses = self.objective(out, batch)
            t3 = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            total = self.weighting.backward(task_losses, self.shared) \
                if torch.isfinite(task_losses).all() else task_losses.sum()
            ok = bool(torch.isfinite(total))
            t4 = time.perf_counter()
            self.optimizer.step()
            t5 = time.perf_counter()
            if not ok:
                raise RuntimeError("loss is not finite")
            if i >= 5:
                for name, value in (("batch gather (iterate_batches)", t1 - t0),
                                    ("forward", t2 - t1), ("loss (Objective)", t3 - t2),
                                    ("zero_grad + backward", t4 - t3),
                                    ("optimizer step (Adam, default)", t5 - t4)):
                    phases[name].append(value)
        for handle in handles:
            handle.remove()

        def med(values: list[float]) -> float:
            return statistics.median(values[5:]) * 1000

        parts = {name: med(spent[name]) for name in watched}
        towers = sum(v for k, v in parts.items() if k.startswith("tower"))
        parts = {k: v for k, v in parts.items() if not k.startswith("tower")}
        parts["gate softmax + mixing (bmm) + unbind"] = med(spent["backbone"]) \
            - parts["expert GEMMs (ExpertBank)"] - parts["gate logits (Linear)"]
        parts["towers (2 x MLP 64→32→1)"] = towers
        parts["cascade compose + glue"] = med(spent["model"]) - med(spent["backbone"]) \
            - towers - parts["embedding lookup (FeatureEmbedder)"]
        return ({k: statistics.median(v) * 1000 for k, v in phases.items()}, parts)

    def component_times(self, repeats: int) -> dict[str, float]:
        model, backbone = self.model, self.model.backbone
        batch = next(self.batches())
        x = model.embedder(batch).detach()
        gx = torch.randn_like(x)

        def embed() -> None:
            model.embedder(batch).backward(gx)

        xin = x.clone().requires_grad_(True)
        experts_out = backbone.experts(xin).detach()
        ge = torch.randn_like(experts_out)

        def experts() -> None:
            backbone.experts(xin).backward(ge)

        e_in = experts_out.clone().requires_grad_(True)

        def gates() -> None:
            logits = backbone.gates(xin).view(-1, backbone.num_gates, backbone.num_experts)
            mixed = torch.bmm(logits.softmax(dim=-1), e_in)
            mixed.sum().backward()

        reps = [r.detach().requires_grad_(True) for r in backbone(x)]

        def heads() -> None:
            outs = [tower(rep) for tower, rep in zip(model.towers, reps, strict=True)]
            losses = self.objective(model.cascade.compose(outs), batch)
            losses.sum().backward()

        rows = torch.randperm(len(self.tensors["train"]))[:1024]
        times = {
            "batch gather (index_select of 1024 rows)":
                median_ms(lambda: self.tensors["train"].batch(rows), repeats),
            "embedding lookup (FeatureEmbedder)": median_ms(embed, repeats),
            "expert GEMMs (ExpertBank, 4 x 64)": median_ms(experts, repeats),
            "gate logits + softmax + mixing": median_ms(gates, repeats),
            "towers + cascade + loss": median_ms(heads, repeats),
            "optimizer.zero_grad(set_to_none=True)":
                median_ms(lambda: self.optimizer.zero_grad(set_to_none=True), repeats),
        }
        self.step(batch)  # leave .grad in place for the optimizer timings
        for name, kwargs in (("Adam step, default (for-loop on CPU)", {}),
                             ("Adam step, foreach=True", {"foreach": True}),
                             ("Adam step, fused=True", {"fused": True})):
            opt = torch.optim.Adam(self.params, lr=1e-3, **kwargs)
            times[name] = median_ms(opt.step, repeats)
        return times

    def validation_times(self) -> dict[str, float]:
        from rankengine.data.batching import iterate_batches
        from rankengine.scoring import predict_arrays
        from rankengine.train.evaluation import evaluate_split

        model, valid = self.model, self.tensors["valid"]
        size = self.config.train.eval_batch_size

        def loss_pass() -> None:
            with torch.inference_mode():
                for batch in iterate_batches(valid, size, shuffle=False):
                    self.objective(model(batch.inputs), batch)

        def whole() -> None:
            evaluate_split(model, self.objective, self.weighting, valid, self.encoded["valid"],
                            self.config, self.metrics)

        def predict() -> None:
            with torch.inference_mode():
                predict_arrays(model, valid, size)

        model.eval()
        times = {"evaluate_split (what train() runs per epoch)": median_ms(whole, 3, 1),
                 "of which the loss pass over valid": median_ms(loss_pass, 3, 1),
                 "of which predict_arrays (2nd pass over valid)": median_ms(predict, 3, 1)}
        model.train()
        return times

    def profiler_top(self, steps: int, top: int = 15) -> tuple[list[tuple[str, float, float]],
                                                               float]:
        from torch.profiler import ProfilerActivity, profile

        batches = self.batches()
        for _ in range(3):
            self.step(next(batches))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                self.step(next(batches))
        events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        total = sum(e.self_cpu_time_total for e in events) / 1000 / steps
        events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
        return ([(e.key, e.self_cpu_time_total / 1000 / steps, e.count / steps)
                 for e in events[:top]], total)

    def step_flops(self) -> int:
        batch = next(self.batches())
        with FlopCounterMode(display=False) as counter:
            out = self.model(batch)
            self.weighting.backward(self.objective(out, batch), self.shared)
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())

    def experiments(self, repeats: int) -> dict[str, float]:
        from torch import nn

        batches = self.batches()
        results = {"whole step, current code (Adam default)":
                   median_ms(lambda: self.step(next(batches)), repeats)}
        current = self.optimizer
        self.optimizer = torch.optim.Adam(self.params, lr=1e-3, fused=True)
        results["whole step, Adam(fused=True)"] = median_ms(lambda: self.step(next(batches)),
                                                            repeats)
        self.optimizer = torch.optim.Adam(self.params, lr=1e-3, foreach=True)
        results["whole step, Adam(foreach=True)"] = median_ms(lambda: self.step(next(batches)),
                                                              repeats)
        self.optimizer = current

        # FeatureEmbedder looks ids up with nn.Embedding, whose CPU backward
        # (embedding_dense_backward) is slow with the census' heavily repeated ids; a gather on
        # the weight (index_select, whose backward is one index_add_) gives the same values.
        embedder = self.model.embedder
        original = embedder.forward

        def gather_forward(batch: Any) -> torch.Tensor:
            parts = []
            for t, table in enumerate(embedder.tables):
                ids = batch.ids.index_select(1, getattr(embedder, f"columns_{t}")) \
                    + getattr(embedder, f"offsets_{t}")
                parts.append(table.weight.index_select(0, ids.reshape(-1))
                             .view(ids.shape[0], -1))
            if embedder.has_dense:
                parts.append(batch.dense)
            return torch.cat(parts, dim=1)

        if not embedder.sequence_tables:
            probe = next(batches)
            with torch.no_grad():
                same = torch.equal(original(probe), gather_forward(probe))
            embedder.forward = gather_forward  # type: ignore[method-assign]
            results[f"whole step, embedding as weight.index_select (same output: {same})"] = \
                median_ms(lambda: self.step(next(batches)), repeats)
            self.optimizer = torch.optim.Adam(self.params, lr=1e-3, fused=True)
            results["whole step, index_select embedding + Adam(fused=True)"] = \
                median_ms(lambda: self.step(next(batches)), repeats)
            self.optimizer = current
            embedder.forward = original  # type: ignore[method-assign]
            results["whole step, current code again (drift check)"] = \
                median_ms(lambda: self.step(next(batches)), repeats)

        # ExpertBank keeps [E, D, H] and permutes + reshapes it to [D, E·H] on every forward
        # (a copy, and its backward another); stored as [D, E·H] the first layer is one addmm.
        bank = self.model.backbone.experts
        x = self.model.embedder(next(batches)).detach().requires_grad_(True)
        g = torch.randn(x.shape[0], bank.num_experts, bank.output_dim)

        def current_bank() -> None:
            bank(x).backward(g)

        w0 = nn.Parameter(bank.weights[0].detach().permute(1, 0, 2)
                          .reshape(bank.sizes[0], -1).clone())
        b0 = nn.Parameter(bank.biases[0].detach().reshape(1, -1).clone())

        def laid_out_bank() -> None:
            h = torch.addmm(b0, x, w0).view(x.shape[0], bank.num_experts, -1).relu()
            h.backward(g)

        results["ExpertBank fwd+bwd, current ([E, D, H] permuted per call)"] = \
            median_ms(current_bank, repeats)
        results["ExpertBank fwd+bwd, weight stored as [D, E·H] (one addmm + relu)"] = \
            median_ms(laid_out_bank, repeats)
        return results


if __name__ == "__main__":
    main()
