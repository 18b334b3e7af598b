"""One library x one model in a process of its own (run.py reads its peak RSS when it exits).

    python benchmarks/peers/worker.py --library deepctr-torch --model mmoe --out result.json

Trains on the encoded census data with the library's own trainer (the way its docs do),
then measures test AUC per task and inference speed on the test split; writes one JSON object.

- rankengine: `rankengine.train.train` on examples/census/engine.toml with the benchmark's
  backbone / lr / epochs; "train samples/s" is its own figure (the epoch loop, which includes
  its per-epoch validation).
- DeepCTR-Torch: `model.compile("adam", loss=[...], metrics=["binary_crossentropy"])` then
  `model.fit(x, y, batch_size, epochs, verbose=2, validation_data=valid)`, as in its MMoE
  example (plus the validation split every library gets); timed around `fit`.
- torch-rechub: `DataGenerator` → `MTLTrainer(...).fit(train_loader, valid_loader)` as in its
  census / Ali-CCP multi-task examples; timed around `fit`.

Inference, on the test split in batches of 1024 under `torch.inference_mode()`: "predict" is
each library's own batch-prediction API (rankengine `predict_arrays`, DeepCTR
`model.predict`, torch-rechub `MTLTrainer.predict`), "forward" the bare `model(batch)` calls
on batches built beforehand in the input format the model takes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

S = common.SETTINGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--library", choices=common.LIBRARIES)
    parser.add_argument("--model", choices=common.MODELS)
    parser.add_argument("--prepare", action="store_true",
                        help="only encode the data (rankengine's cache and the peers' arrays)")
    parser.add_argument("--seed", type=int, default=2018)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--infer-repeats", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.prepare:
        Path(args.out).write_text(json.dumps(common.prepare(args.seed), indent=1))
        return
    if not args.library or not args.model:
        parser.error("--library and --model are required")
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    common.seed_all(args.seed)
    run = {"rankengine": run_rankengine, "deepctr-torch": run_deepctr,
           "torch-rechub": run_rechub}[args.library]
    started = time.perf_counter()
    result = run(args)
    result.update(library=args.library, model=args.model, seed=args.seed, epochs=args.epochs,
                  threads=torch.get_num_threads(), torch=torch.__version__,
                  wall_s=time.perf_counter() - started,
                  maxrss_self_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  cpu=platform.processor() or platform.machine())
    Path(args.out).write_text(json.dumps(result, indent=1))


def timed_inference(predict: Any, forward: Any, rows: int, repeats: int) -> dict[str, float]:
    with torch.inference_mode():
        predict_s = common.best_time(predict, repeats)
        forward_s = common.best_time(forward, repeats)
    return {"infer_predict_sps": rows / predict_s, "infer_forward_sps": rows / forward_s}


def aucs(tasks: list[str], labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {t: common.auc(labels[:, i], scores[:, i]) for i, t in enumerate(tasks)}


# --- rankengine ------------------------------------------------------------------------------

def run_rankengine(args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    import rankengine
    from rankengine.data.batching import TensorData, iterate_batches
    from rankengine.data.dataset import EncodedData
    from rankengine.scoring import predict_arrays
    from rankengine.train import train

    meta = common.load_meta(args.seed)
    config = common.rankengine_config(args.model, seed=args.seed, epochs=args.epochs,
                                      threads=args.threads)
    trained = train(config, progress=False)
    result: dict[str, Any] = {
        "version": getattr(rankengine, "__version__", "0.1.0"),
        "train_sps": trained.result.samples_per_second,
        "train_s": trained.result.train_seconds,
        "train_rows": trained.result.rows.get("train"),
        "own_test_auc": {t: m["auc"] for t, m in trained.result.metrics["test"].items()
                         if "auc" in m},
    }
    model = trained.model
    cat, dense, labels = common.load_split(args.seed, "test")
    test = TensorData(EncodedData(cat, dense, [], labels))
    entire, _ = predict_arrays(model, test, S["batch_size"])
    result["test_auc"] = aucs(meta["tasks"], labels, entire)
    batches = list(iterate_batches(test, S["batch_size"], shuffle=False))

    def forward() -> None:
        for batch in batches:
            model(batch.inputs)

    model.eval()
    result.update(timed_inference(lambda: predict_arrays(model, test, S["batch_size"]),
                                  forward, len(test), args.infer_repeats))

    # GEMM FLOPs of one training step (forward + backward of a batch of 1024), beside a GEMM
    # peak measured now, with the same threads.
    step = training_step(trained)
    batch = test.batch(torch.arange(S["batch_size"]))
    model.train()
    with FlopCounterMode(display=False) as counter:
        step.forward_backward(batch)
    flops = counter.get_total_flops()
    result["step_gflop"] = flops / 1e9
    result["step_flops_by_op"] = {str(k): v for k, v in counter.get_flop_counts()
                                  .get("Global", {}).items()}
    result["achieved_gflops"] = flops / 1e9 * result["train_sps"] / S["batch_size"]
    result["gemm_peak_gflops"] = common.gemm_peak(args.threads)
    width = model.embedder.output_dim
    result["step_shape_gemm_gflops"] = common.step_gemm_peak(
        args.threads, S["batch_size"], width, S["experts"] * S["expert_hidden"])
    return result


class training_step:  # noqa: N801  (used like a function)
    """The loss and backward pass of rankengine's training loop for a trained model."""

    def __init__(self, trained: Any) -> None:
        from rankengine.train import Objective

        plan = trained.plan
        self.weighting = plan.loss_weighting
        self.model = trained.model
        self.objective = Objective(plan.graph, self.model, plan.losses, plan.sample_weighting)
        self.shared = self.model.shared_parameters()

    def forward_backward(self, batch: Any) -> torch.Tensor:
        out = self.model(batch.inputs)
        task_losses = self.objective(out, batch)
        total: torch.Tensor = self.weighting.backward(task_losses, self.shared)
        return total


# --- DeepCTR-Torch ---------------------------------------------------------------------------

def run_deepctr(args: argparse.Namespace) -> dict[str, Any]:
    import deepctr_torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models.multitask import MMOE, PLE, SharedBottom

    meta = common.load_meta(args.seed)
    tasks = meta["tasks"]
    columns = [SparseFeat(name, vocabulary_size=card, embedding_dim=S["embedding_dim"])
               for name, card in meta["categorical"]]
    columns += [DenseFeat(name, 1) for name in meta["dense"]]
    common_kw = {"tower_dnn_hidden_units": (S["tower_hidden"],), "task_types": ("binary",) * 2,
                 "task_names": tuple(tasks), "seed": args.seed, "device": "cpu"}
    if args.model == "mmoe":
        model = MMOE(columns, num_experts=S["experts"],
                     expert_dnn_hidden_units=(S["expert_hidden"],), gate_dnn_hidden_units=(),
                     **common_kw)
    elif args.model == "shared_bottom":
        model = SharedBottom(columns, bottom_dnn_hidden_units=(S["bottom_hidden"],), **common_kw)
    else:
        model = PLE(columns, shared_expert_num=S["ple_shared"],
                    specific_expert_num=S["ple_specific"], num_levels=S["ple_levels"],
                    expert_dnn_hidden_units=(S["expert_hidden"],), gate_dnn_hidden_units=(),
                    **common_kw)
    model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy"],
                  metrics=["binary_crossentropy"])
    train_cat, train_dense, train_y = common.load_split(args.seed, "train")
    valid_cat, valid_dense, valid_y = common.load_split(args.seed, "valid")
    x_train = common.columns(meta, train_cat, train_dense)
    x_valid = common.columns(meta, valid_cat, valid_dense)
    del train_cat, train_dense, valid_cat, valid_dense
    started = time.perf_counter()
    model.fit(x_train, train_y, batch_size=S["batch_size"], epochs=args.epochs, verbose=2,
              validation_data=(x_valid, valid_y))
    train_s = time.perf_counter() - started
    result: dict[str, Any] = {"version": deepctr_torch.__version__, "train_s": train_s,
                              "train_rows": len(train_y),
                              "train_sps": len(train_y) * args.epochs / train_s}
    del x_train, x_valid, train_y, valid_y
    cat, dense, labels = common.load_split(args.seed, "test")
    x_test = common.columns(meta, cat, dense)
    scores = model.predict(x_test, batch_size=S["batch_size"])
    result["test_auc"] = aucs(tasks, labels, scores)
    # The model's input: every feature column side by side as float (what fit / predict build).
    flat = torch.from_numpy(np.concatenate(
        [x_test[f][:, None] for f in model.feature_index], axis=1).astype(np.float32))
    batches = list(flat.split(S["batch_size"]))
    model.eval()

    def forward() -> None:
        for batch in batches:
            model(batch)

    result.update(timed_inference(lambda: model.predict(x_test, batch_size=S["batch_size"]),
                                  forward, len(labels), args.infer_repeats))
    return result


# --- torch-rechub ----------------------------------------------------------------------------

def run_rechub(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    from torch.utils.data import DataLoader
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom
    from torch_rechub.trainers import MTLTrainer
    from torch_rechub.utils.data import DataGenerator, PredictDataset

    meta = common.load_meta(args.seed)
    tasks = meta["tasks"]
    features = [SparseFeature(name, vocab_size=card, embed_dim=S["embedding_dim"])
                for name, card in meta["categorical"]]
    features += [DenseFeature(name) for name in meta["dense"]]
    task_types = ["classification"] * len(tasks)
    towers = [{"dims": [S["tower_hidden"]]} for _ in tasks]
    if args.model == "mmoe":
        model = MMOE(features, task_types, n_expert=S["experts"],
                     expert_params={"dims": [S["expert_hidden"]]}, tower_params_list=towers)
    elif args.model == "shared_bottom":
        model = SharedBottom(features, task_types, bottom_params={"dims": [S["bottom_hidden"]]},
                             tower_params_list=towers)
    else:
        model = PLE(features, task_types, n_level=S["ple_levels"],
                    n_expert_specific=S["ple_specific"], n_expert_shared=S["ple_shared"],
                    expert_params={"dims": [S["expert_hidden"]]}, tower_params_list=towers)
    train_cat, train_dense, train_y = common.load_split(args.seed, "train")
    valid_cat, valid_dense, valid_y = common.load_split(args.seed, "valid")
    test_cat, test_dense, test_y = common.load_split(args.seed, "test")
    x_train = common.columns(meta, train_cat, train_dense)
    x_valid = common.columns(meta, valid_cat, valid_dense)
    x_test = common.columns(meta, test_cat, test_dense)
    del train_cat, train_dense, valid_cat, valid_dense, test_cat, test_dense
    generator = DataGenerator(x_train, train_y)
    train_loader, valid_loader, _ = generator.generate_dataloader(
        x_val=x_valid, y_val=valid_y, x_test=x_test, y_test=test_y,
        batch_size=S["batch_size"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = MTLTrainer(model, task_types=task_types,
                             optimizer_params={"lr": S["lr"], "weight_decay": 1e-5},
                             n_epoch=args.epochs, earlystop_patience=10, device="cpu",
                             model_path=tmp)
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bars
            trainer.fit(train_loader, valid_loader)
        train_s = time.perf_counter() - started
    result: dict[str, Any] = {"version": version("torch-rechub"), "train_s": train_s,
                              "train_rows": len(train_y),
                              "train_sps": len(train_y) * args.epochs / train_s}
    test_loader = DataLoader(PredictDataset(x_test), batch_size=S["batch_size"], shuffle=False)

    def predict() -> np.ndarray:
        with contextlib.redirect_stderr(io.StringIO()):
            return np.asarray(trainer.predict(trainer.model, test_loader))

    scores = predict()
    result["test_auc"] = aucs(tasks, test_y, scores)
    batches = list(test_loader)  # dicts of per-feature tensors, as its DataLoader yields them
    model = trainer.model
    model.eval()

    def forward() -> None:
        for batch in batches:
            model(batch)

    result.update(timed_inference(predict, forward, len(test_y), args.infer_repeats))
    return result


if __name__ == "__main__":
    main()
