"""Device bugs without a GPU: the hot path must create every tensor on the device of what it
meets. With the default device set to ``meta`` while the model lives on the CPU, any tensor
built without an explicit device lands on ``meta`` and the first operation mixing it with a
real tensor raises, so one training step, one evaluation and one served request find them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rankengine.config import load_config
from rankengine.data.dataset import encode_table
from rankengine.plan import make_plan
from rankengine.train.loop import Trainer, seed_everything

from .conftest import tiny_config_text


@contextmanager
def default_device_meta() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


#: every family's built-ins that create tensors while training, spread over three runs
SETUPS = {
    "mmoe_esm2_uncertainty_bpr": ("""
[model]
backbone = { kind = "mmoe", experts = 3, expert_hidden = [16], top_k = 2 }
tower = { kind = "mlp", hidden = [8] }
cascade = "esm2"
[model.bias_tower]
groups = ["bias"]
tasks = ["click"]
""", """
[loss]
weighting = "uncertainty"
sample_weighting = { kind = "label_weight", weights = { order = 3.0 } }
ranking = { kind = "bpr", weight = 0.5 }
"""),
    "ple_independent_dwa_listwise": ("""
[model]
backbone = { kind = "ple", levels = 1, shared_experts = 1, task_experts = 1, expert_hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = "independent"
""", """
[loss]
weighting = "dwa"
sample_weighting = { kind = "dwell_time", tasks = ["click"] }
ranking = { kind = "listwise", weight = 0.5 }
"""),
    "shared_bottom_esmm_gradnorm_ranknet": ("""
[model]
backbone = { kind = "shared_bottom", hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = { kind = "esmm", conditional_loss_weight = 0.5 }
""", """
[loss]
weighting = "gradnorm"
ranking = { kind = "ranknet", weight = 0.5, target = "click" }
"""),
    "omoe_esm2_pareto": ("""
[model]
backbone = { kind = "omoe", experts = 2, expert_hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = "esm2"
""", """
[loss]
weighting = "pareto"
"""),
    "mmoe_esm2_streaming": ("""
[model]
backbone = { kind = "mmoe", experts = 2, expert_hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = "esm2"
""", ""),
    "shared_bottom_esmm_interactions": ("""
[model]
backbone = { kind = "shared_bottom", hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = "esmm"
[[model.interactions]]
name = "din_history"
kind = "din"
softmax = true
sequence = ["user_hist_categories"]
target = ["item_category"]
[[model.interactions]]
name = "bst_history"
kind = "transformer"
sequence = ["history_2"]
target = ["item_category", "item_id"]
[[model.interactions]]
name = "dupn_history"
kind = "dupn_lstm"
sequence = ["history_3"]
target = ["item_id"]
""", """
[[features]]
name = "history_2"
column = "user_hist_categories"
kind = "sequence"
side = "context"
max_len = 5
share_with = "item_category"
dim = 8
[[features]]
name = "history_3"
column = "user_hist_categories"
kind = "sequence"
side = "context"
max_len = 5
dim = 8
"""),
    "mmoe_esm2_pcgrad": ("""
[model]
backbone = { kind = "mmoe", experts = 2, expert_hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = "esm2"
""", """
[loss]
weighting = "pcgrad"
"""),
}


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_training_evaluation_calibration_and_scoring_create_nothing_off_device(
        tmp_path: Path, funnel_dir: Path, setup: str) -> None:
    from rankengine.artifact import load_artifact, save_artifact
    from rankengine.backend import backend_class
    from rankengine.data.batching import TensorData
    from rankengine.predict import score_table
    from rankengine.serve.holder import Served
    from rankengine.serve.scoring import score

    model, loss = SETUPS[setup]
    text = tiny_config_text(funnel_dir, model=model) + loss + """
[calibration]
kind = "platt"
regression = "scale"
"""
    if "bias_tower" in text:  # device feeds only the bias tower
        text = text.replace('name = "device"\nkind = "categorical"\n',
                            'name = "device"\nkind = "categorical"\ngroups = ["bias"]\n')
    if "streaming" in setup:  # row group by row group, read in a background thread
        text = text.replace("[data]\n", "[data]\nstreaming = true\nbuffer_rows = 4000\n")
    (tmp_path / "engine.toml").write_text(text)
    config = load_config(tmp_path / "engine.toml")
    assert config.data.streaming == ("streaming" in setup)
    config.train.epochs = 1
    plan = make_plan(config)
    trainer = Trainer(plan, seed_everything(1), progress=False, log=None, resume=False)
    with default_device_meta():
        bundle = trainer.run()
    history = bundle.training.history
    assert history and np.isfinite(history[0]["valid_loss"]["total"])
    loaded = load_artifact(save_artifact(bundle, tmp_path / "artifact"))
    table = pq.read_table(funnel_dir / "test.parquet").slice(0, 50)
    served = Served("m", 1, loaded, backend_class(loaded.engine)(loaded), loaded)
    context_names = list(dict.fromkeys(f.source for f in loaded.config.features
                                       if f.side == "context"))
    item_names = [f.source for f in loaded.config.features if f.side != "context"]
    with default_device_meta():
        scored = score_table(loaded, table)  # by request: sequences read once per request
        data = TensorData(encode_table(table, loaded.pipeline, loaded.graph, policy="error"))
        assert len(data) == 50
        context = {k: table.column(k).slice(0, 1).combine_chunks() for k in context_names}
        items = {k: table.column(k).combine_chunks() for k in item_names}
        answer = score(served, context, items, 50)
    assert np.isfinite(np.asarray(answer["score"])).all()
    assert len(scored["score"]) == 50


def test_the_device_setting_is_checked_against_the_machine(tmp_path: Path,
                                                            funnel_dir: Path) -> None:
    from rankengine.errors import ConfigError
    from rankengine.train import train
    from rankengine.train.loop import train_device

    (tmp_path / "engine.toml").write_text(tiny_config_text(funnel_dir))
    config = load_config(tmp_path / "engine.toml")
    assert config.train.device == "auto"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert train_device(config).type == expected
    config.train.device = "cpu"
    assert train_device(config) == torch.device("cpu")
    if not torch.cuda.is_available():
        config.train.device = "cuda:0"
        with pytest.raises(ConfigError, match=r"\[train\.device\].*'cuda:0'.*no CUDA device"):
            train(config, progress=False)
    (tmp_path / "bad.toml").write_text(tiny_config_text(funnel_dir).replace(
        "[train]\n", '[train]\ndevice = "gpu"\n'))
    with pytest.raises(ConfigError, match=r"train\.device"):
        load_config(tmp_path / "bad.toml")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_everything_scored_stays_fp32(
        tmp_path: Path, funnel_dir: Path, precision: str) -> None:
    from rankengine.data.batching import TensorData
    from rankengine.scoring import PredictionModule
    from rankengine.train import train

    text = tiny_config_text(funnel_dir).replace(
        "[train]\n", f'[train]\nprecision = "{precision}"\ncheckpoint_dir = "ckpt"\n')
    (tmp_path / "engine.toml").write_text(text)
    config = load_config(tmp_path / "engine.toml")
    config.train.epochs = 1
    plan = make_plan(config)
    trainer = Trainer(plan, seed_everything(1), progress=False, log=None, resume=False)
    # the backbone runs in reduced precision inside the training forward, the heads do not
    seen: list[torch.dtype] = []
    hook = trainer.model.backbone.register_forward_hook(
        lambda module, args, out: seen.append(out[0].dtype))
    batch = next(iter(trainer.data.train.batches(64, torch.Generator().manual_seed(0), False)))
    out = trainer.model_forward(batch.inputs)
    hook.remove()
    assert seen == [{"bf16": torch.bfloat16, "fp16": torch.float16}[precision]]
    assert out.log_p.dtype == torch.float32
    bundle = trainer.run()
    assert all(p.dtype == torch.float32 for p in bundle.model.parameters())
    auc = bundle.training.metrics["test"]["click"]["auc"]
    assert auc > 0.55  # it learned
    test = TensorData(encode_table(pq.read_table(funnel_dir / "test.parquet"), bundle.pipeline,
                                   bundle.graph, policy="error"))
    entire, _ = PredictionModule(bundle.model).predict(test.slice(0, 100).inputs)
    assert entire.dtype == torch.float32
    # fp16 keeps its loss scale in the checkpoints, and a resumed run takes it up
    from rankengine.checkpoint import load_latest

    _, state, _ = load_latest(tmp_path / "ckpt")
    assert ("scaler" in state) == (precision == "fp16")
    if precision == "fp16":
        assert state["scaler"]["scale"] == trainer.scaler.get_scale()
        config.train.epochs = 2
        resumed = train(config, progress=False, resume=True)
        assert [h["epoch"] for h in resumed.training.history] == [1, 2]


def test_compile_trains_the_compiled_forward_to_the_eager_result(
        tmp_path: Path, funnel_dir: Path) -> None:
    def trainer(compile: bool) -> Trainer:
        (tmp_path / "engine.toml").write_text(tiny_config_text(
            funnel_dir, model="""
[model]
backbone = { kind = "shared_bottom", hidden = [16] }
tower = { kind = "mlp", hidden = [8] }
cascade = "esmm"
"""))
        config = load_config(tmp_path / "engine.toml")
        config.train.epochs, config.train.compile = 1, compile
        return Trainer(make_plan(config), seed_everything(1), progress=False, log=None,
                       resume=False)

    compiled = trainer(True)
    result = compiled.run().training
    assert compiled.forward is not compiled.model  # it compiled, it did not fall back
    eager = trainer(False).run().training
    for task in ("click", "order"):
        assert result.metrics["test"][task]["auc"] == pytest.approx(
            eager.metrics["test"][task]["auc"], abs=2e-3)


def test_fp16_is_refused_with_a_weighting_that_loss_scaling_would_bias(
        tmp_path: Path, funnel_dir: Path) -> None:
    from rankengine.errors import ConfigError
    from rankengine.train import train

    (tmp_path / "engine.toml").write_text(tiny_config_text(funnel_dir).replace(
        "[train]\n", '[train]\nprecision = "fp16"\n') + '\n[loss]\nweighting = "uncertainty"\n')
    with pytest.raises(ConfigError, match=r"\[train\.precision\].*'uncertainty'.*bf16"):
        train(load_config(tmp_path / "engine.toml"), progress=False)
