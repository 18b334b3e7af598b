"""The position-bias shallow tower: training-only logit, optional at serving, and debiasing."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rankengine.bundle import ModelBundle
from rankengine.config import load_config
from rankengine.data.batching import TensorData
from rankengine.data.dataset import encode_table
from rankengine.errors import ConfigError
from rankengine.scoring import predict_arrays
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

POSITION_BIAS = 1.0


def config_text(data: Path, *, bias_tower: bool, position: bool = True) -> str:
    position_feature = """
[[features]]
name = "position"
kind = "categorical"
dim = 4
groups = ["bias"]
""" if position else ""
    tower = '[model.bias_tower]\ngroups = ["bias"]\ntasks = ["click"]\nhidden = [8]\n' \
        if bias_tower else ""
    return textwrap.dedent(f"""
[engine]
seed = 5

[data]
train = "{data / 'train.parquet'}"
valid = "{data / 'valid.parquet'}"
test = "{data / 'test.parquet'}"

[train]
epochs = 3
batch_size = 512
lr = 5e-3
progress = false
early_stopping = {{ metric = "loss", patience = 3 }}

[model]
backbone = {{ kind = "shared_bottom", hidden = [32] }}
tower = {{ kind = "mlp", hidden = [16] }}
cascade = "esmm"
{tower}
[tasks]
click = {{ label = "click" }}
order = {{ label = "order", after = "click" }}

[[features]]
name = "user_segment"
kind = "categorical"
side = "context"
dim = 8

[[features]]
name = "device"
kind = "categorical"
side = "context"
dim = 4

[[features]]
name = "item_category"
kind = "categorical"
dim = 8

[[features]]
name = "item_brand"
kind = "categorical"
dim = 8

[[features]]
name = "item_price"
kind = "numeric"
transform = "log1p_standardize"
{position_feature}
""")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log whose ranker put promoted brands on top: position is confounded with brand."""
    out = tmp_path_factory.mktemp("logged")
    write_funnel(out, SimulationConfig(requests=8000, users=800, items=400, seed=21,
                                       position_bias=POSITION_BIAS, logger_bias=3.0))
    return out


def trained(tmp_path: Path, data: Path, name: str, **kw: bool) -> ModelBundle:
    path = tmp_path / f"{name}.toml"
    path.write_text(config_text(data, **kw))
    return train(load_config(path), progress=False)


def click_logits(model: ModelBundle, table) -> np.ndarray:  # type: ignore[no-untyped-def]
    data = TensorData(encode_table(table, model.pipeline, model.graph,
                                   policy=model.config.data.inconsistent))
    entire, _ = predict_arrays(model.model, data, 8192)
    p = np.clip(entire[:, 0], 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def pairwise_agreement(scores: np.ndarray, truth: np.ndarray, slate: int) -> float:
    """Share of item pairs within each request that ``scores`` order like ``truth``."""
    s, t = scores.reshape(-1, slate), truth.reshape(-1, slate)
    i, j = np.triu_indices(slate, 1)
    ds, dt = s[:, i] - s[:, j], t[:, i] - t[:, j]
    return float(np.mean(np.sign(ds) == np.sign(dt)))


def test_bias_logit_joins_training_only_and_position_is_optional(tmp_path: Path,
                                                                 logged: Path) -> None:
    model = trained(tmp_path, logged, "tower", bias_tower=True)
    table = pq.read_table(logged / "test.parquet").slice(0, 200)
    data = TensorData(encode_table(table, model.pipeline, model.graph,
                                   policy=model.config.data.inconsistent))
    batch = data.slice(0, 200)
    net = model.model
    net.train()
    with torch.no_grad():
        training = net(batch.inputs)
    net.eval()
    with torch.no_grad():
        serving = net(batch.inputs)
        moved = batch.inputs.ids.clone()
        position = next(f.column for f in model.pipeline.layout() if f.name == "position")
        moved[:, position] = torch.randint(0, 5, (200,))
        batch.inputs.ids = moved
        serving_moved = net(batch.inputs)
    assert not torch.allclose(training.log_p[:, 0], serving.log_p[:, 0])  # click: + bias
    assert torch.allclose(serving.log_p, serving_moved.log_p)  # position is not read
    assert model.config.model.bias_only_features(model.config.features) == ["position"]


def test_bias_tower_ranks_closer_to_the_position_free_truth(tmp_path: Path,
                                                            logged: Path) -> None:
    table = pq.read_table(logged / "test.parquet")
    p = np.asarray(table.column("true_p_click"))
    position = np.asarray(table.column("position"), dtype=np.float64)
    truth = np.log(p / (1 - p)) + POSITION_BIAS * np.log(position)  # the click at position 1
    slate = 10
    with_tower = click_logits(trained(tmp_path, logged, "tower", bias_tower=True), table)
    naive = click_logits(trained(tmp_path, logged, "naive", bias_tower=False, position=False),
                         table)
    tower_score = pairwise_agreement(with_tower, truth, slate)
    naive_score = pairwise_agreement(naive, truth, slate)
    print(f"pairwise agreement with the position-free click logit: tower {tower_score:.4f}, "
          f"no tower {naive_score:.4f}")
    assert tower_score > naive_score + 0.01


def test_bias_tower_config_errors(tmp_path: Path, logged: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config_text(logged, bias_tower=True).replace('tasks = ["click"]',
                                                                  'tasks = ["dwell"]'))
    with pytest.raises(ConfigError, match=r"model\.bias_tower\.tasks"):
        train(load_config(path), progress=False)
    path.write_text(config_text(logged, bias_tower=True, position=False))
    with pytest.raises(ConfigError, match="feature group 'bias' has no features"):
        train(load_config(path), progress=False)


def test_serving_does_not_need_the_bias_features(tmp_path: Path, logged: Path) -> None:
    from rankengine.artifact import load_artifact, save_artifact
    from rankengine.backend import backend_class
    from rankengine.serve.holder import Served
    from rankengine.serve.scoring import column, score

    loaded = load_artifact(save_artifact(trained(tmp_path, logged, "tower", bias_tower=True),
                                         tmp_path / "artifact"))
    served = Served("m", 1, loaded, backend_class(loaded.engine)(loaded), loaded)
    rows = pq.read_table(logged / "test.parquet").slice(0, 20).to_pydict()
    context = {k: column(k, [rows[k][0]]) for k in ("user_segment", "device")}
    items = {k: column(k, rows[k]) for k in ("item_category", "item_brand", "item_price")}
    without = score(served, context, items, 20)
    with_position = score(served, context, items | {"position": column("position",
                                                                        rows["position"])}, 20)
    assert np.allclose(without["score"], with_position["score"])


def test_scoring_uses_the_bias_tower_reference_that_keeps_the_mean_prediction(
        tmp_path: Path, logged: Path) -> None:
    from rankengine.artifact import load_artifact, save_artifact

    model = trained(tmp_path, logged, "tower", bias_tower=True)
    bias = model.model.bias
    assert bias is not None

    def logits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        table = pq.read_table(logged / f"{split}.parquet")
        data = TensorData(encode_table(table, model.pipeline, model.graph,
                                       policy=model.config.data.inconsistent))
        with torch.no_grad():
            shifts, heads = model.model.bias_logits(data.slice(0, len(data)).inputs)
        return shifts.double(), heads[:, 0].double()

    # on the validation rows it was solved on: the click head's mean prediction with each
    # row's own position effect, which the mean bias logit would miss (the sigmoid is not linear)
    shifts, click = logits("valid")
    kept = torch.sigmoid(click + bias.reference[0]).mean().item()
    assert kept == pytest.approx(torch.sigmoid(click + shifts).mean().item(), rel=1e-5)
    assert abs(torch.sigmoid(click + shifts.mean()).mean().item() / kept - 1) > 0.05
    # on the test rows, what scoring predicts (positions unknown) keeps the mean prediction
    # of the positions the log had
    shifts, click = logits("test")
    table = pq.read_table(logged / "test.parquet")
    scored = 1 / (1 + np.exp(-click_logits(model, table)))
    with_positions = torch.sigmoid(click + shifts).mean().item()
    assert scored.mean() == pytest.approx(with_positions, rel=0.01)
    loaded = load_artifact(save_artifact(model, tmp_path / "artifact"))
    assert loaded.model.bias is not None
    assert torch.equal(loaded.model.bias.reference, bias.reference)
