from __future__ import annotations

import pytest
import torch

from rankengine.pluginmanager import Engine


def build(engine: Engine, kind: str, **params: object):
    comp = engine.components.backbones.get(kind)
    return comp.factory(comp.parse_params(params), input_dim=12, num_outputs=3)


@pytest.mark.parametrize("kind,params,width", [
    ("shared_bottom", {"hidden": [16, 8]}, 8),
    ("omoe", {"experts": 3, "expert_hidden": [16]}, 16),
    ("mmoe", {"experts": 3, "expert_hidden": [16, 4]}, 4),
    ("ple", {"levels": 2, "shared_experts": 2, "task_experts": 1, "expert_hidden": [8]}, 8),
])
def test_one_representation_per_head(engine: Engine, kind: str, params: dict, width: int) -> None:
    torch.manual_seed(0)
    backbone = build(engine, kind, **params)
    x = torch.randn(5, 12)
    reps = backbone(x)
    assert len(reps) == 3 and backbone.output_dim == width
    assert all(r.shape == (5, width) for r in reps)
    sum(r.sum() for r in reps).backward()
    assert all(p.grad is not None for p in backbone.parameters())


def test_mmoe_gates_are_per_head_distributions(engine: Engine) -> None:
    torch.manual_seed(0)
    backbone = build(engine, "mmoe", experts=4)
    reps = backbone(torch.randn(6, 12))
    gates = backbone.last_gate_weights
    assert gates.shape == (6, 3, 4)
    assert torch.allclose(gates.sum(-1), torch.ones(6, 3))
    assert not torch.allclose(reps[0], reps[1])  # different gates, different mixtures


def test_omoe_shares_one_gate(engine: Engine) -> None:
    backbone = build(engine, "omoe", experts=4)
    reps = backbone(torch.randn(6, 12))
    assert torch.equal(reps[0], reps[2])


def test_expert_bank_matches_separate_mlps(engine: Engine) -> None:
    from rankengine import ExpertBank

    torch.manual_seed(1)
    bank = ExpertBank(5, 3, [7, 4])
    x = torch.randn(2, 5)
    out = bank(x)
    for e in range(3):
        h = torch.relu(x @ bank.weights[0][e] + bank.biases[0][e])
        h = torch.relu(h @ bank.weights[1][e] + bank.biases[1][e])
        assert torch.allclose(out[:, e], h, atol=1e-6)


def test_mlp_tower_outputs_one_value_per_row(engine: Engine) -> None:
    comp = engine.components.towers.get("mlp")
    tower = comp.factory(comp.parse_params({"hidden": [8], "dropout": 0.1}), input_dim=6)
    assert tower(torch.randn(4, 6)).shape == (4,)


def test_cross_network_matches_the_dcn_v2_formula(engine: Engine) -> None:
    from rankengine import CrossNetwork

    torch.manual_seed(2)
    cross = CrossNetwork(4, 2)
    x = torch.randn(3, 4)
    x1 = x * cross.layers[0](x) + x
    x2 = x * cross.layers[1](x1) + x1
    assert torch.allclose(cross(x), x2)
    backbone = build(engine, "mmoe", experts=2, cross_layers=2)
    assert len(backbone.cross.layers) == 2
    assert all(r.shape == (5, 64) for r in backbone(torch.randn(5, 12)))
