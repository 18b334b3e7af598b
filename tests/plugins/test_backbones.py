from __future__ import annotations

from pathlib import Path

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


def test_top_k_gating_keeps_k_experts_per_row_and_head(engine: Engine) -> None:
    torch.manual_seed(0)
    dense, sparse = build(engine, "mmoe", experts=4), build(engine, "mmoe", experts=4, top_k=2)
    sparse.load_state_dict(dense.state_dict())
    x = torch.randn(8, 12)
    dense(x)
    reps = sparse(x)
    gates = sparse.last_gate_weights
    assert ((gates > 0).sum(-1) == 2).all()
    assert torch.allclose(gates.sum(-1), torch.ones(8, 3))
    # The two kept experts are the dense gate's two largest, renormalised.
    full = dense.last_gate_weights
    top = full.topk(2, dim=-1)
    kept = torch.zeros_like(full).scatter(-1, top.indices, top.values)
    assert torch.allclose(gates, kept / kept.sum(-1, keepdim=True), atol=1e-6)
    sum(r.sum() for r in reps).backward()
    with pytest.raises(ValueError, match="top_k = 5 exceeds experts = 4"):
        build(engine, "mmoe", experts=4, top_k=5)


@pytest.mark.parametrize("kind", ["mmoe", "omoe"])
@pytest.mark.parametrize("dispatch", ["padded", "expert_by_expert"])
def test_sparse_experts_run_only_on_their_rows_and_equal_the_dense_mix(
        engine: Engine, kind: str, dispatch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    moe = build(engine, kind, experts=16, top_k=2, expert_hidden=[8, 4]).eval()
    x = torch.randn(64, 12)
    bank = moe.experts
    pad_up_to = 100.0 if dispatch == "padded" else 0.0
    seen: list[tuple[torch.Tensor, list[int]]] = []
    calls: list[int] = []
    routed_fn, run_one = bank.routed, bank.run_one
    monkeypatch.setattr(bank, "routed", lambda x, rows, counts: seen.append((rows, counts))
                        or routed_fn(x, rows, counts, pad_up_to=pad_up_to))
    monkeypatch.setattr(bank, "run_one",
                        lambda layers, rows: calls.append(len(rows)) or run_one(layers, rows))
    reps = torch.stack(moe(x), dim=1)  # [B, heads, H]
    gates = moe.last_gate_weights  # [B, G, E], 0 where not routed
    # grouped dispatch: each expert gets exactly the rows some gate routed to it
    routed = (gates > 0).any(dim=1)  # [B, E]
    (rows, counts), = seen
    assert counts == routed.sum(dim=0).tolist() and sum(counts) < 64 * 16
    for e, chunk in enumerate(torch.split(rows, counts)):
        assert chunk.tolist() == routed[:, e].nonzero().flatten().tolist()
    # padded: one batched matmul per layer; otherwise one call per expert with rows
    assert calls == ([] if dispatch == "padded" else [n for n in counts if n])
    with torch.no_grad():  # the dense computation: every expert on every row, same gates
        every = bank(x)  # [B, E, H]
        dense = torch.bmm(gates, every)
    want = dense if gates.shape[1] == 3 else dense.expand(-1, 3, -1)
    torch.testing.assert_close(reps, want, rtol=1e-5, atol=1e-6)


def test_padded_dispatch_gives_the_per_expert_gradients(engine: Engine) -> None:
    torch.manual_seed(2)
    moe = build(engine, "mmoe", experts=8, top_k=2, expert_hidden=[8, 4])
    x = torch.randn(32, 12)
    rows = torch.randperm(32)[:20].sort().values.repeat(2)  # two experts' rows, 20 each
    counts = [20, 0, 0, 20, 0, 0, 0, 0]
    grads = []
    for pad_up_to in (100.0, 0.0):
        moe.zero_grad()
        moe.experts.routed(x, rows, counts, pad_up_to=pad_up_to).square().sum().backward()
        grads.append([p.grad.clone() for p in moe.experts.parameters()])
    for padded, looped in zip(*grads, strict=True):
        torch.testing.assert_close(padded, looped, rtol=1e-5, atol=1e-6)
    assert grads[0][0][1].abs().sum() == 0  # an expert without rows gets no gradient


def test_sparse_gates_add_a_load_balancing_loss_once_per_step(engine: Engine) -> None:
    torch.manual_seed(2)
    moe = build(engine, "mmoe", experts=8, top_k=2, balance_weight=0.5)
    x = torch.randn(256, 12)
    moe(x)
    loss = moe.auxiliary_loss()
    logits = moe.gates(x).view(-1, 3, 8)
    share = (moe.last_gate_weights > 0).float().mean(0) / 2
    want = 0.5 * 8 * (share * logits.softmax(-1).mean(0)).sum(-1).mean()
    torch.testing.assert_close(loss, want)
    assert moe.auxiliary_loss() is None  # taken once
    loss.backward()
    assert moe.gates.weight.grad is not None and moe.gates.weight.grad.abs().sum() > 0
    moe.eval()
    moe(x)
    assert moe.auxiliary_loss() is None  # a training loss only
    assert build(engine, "mmoe", experts=8).auxiliary_loss() is None  # dense: none


@pytest.mark.parametrize("kind,params,experts", [
    ("mmoe", {"experts": 3}, 3), ("omoe", {"experts": 3}, 3),
    ("ple", {"levels": 2, "shared_experts": 2, "task_experts": 1}, 5),
])
def test_gate_weights_name_experts_and_are_distributions(
        engine: Engine, kind: str, params: dict, experts: int) -> None:
    backbone = build(engine, kind, **params)
    assert backbone.gate_weights() is None  # nothing before the first forward
    backbone(torch.randn(7, 12))
    names, weights = backbone.gate_weights()
    assert len(names) == experts and weights.shape == (7, 3, experts)
    assert torch.allclose(weights.sum(-1), torch.ones(7, 3), atol=1e-6)
    assert build(engine, "shared_bottom").gate_weights() is None


@pytest.mark.parametrize("kind", ["shared_bottom", "mmoe", "ple"])
def test_last_shared_parameters_feed_every_head(engine: Engine, kind: str) -> None:
    backbone = build(engine, kind)
    last = backbone.last_shared_parameters()
    assert last and all(isinstance(p, torch.nn.Parameter) for p in last)
    reps = backbone(torch.randn(4, 12))
    for rep in reps:
        grads = torch.autograd.grad(rep.sum(), last, retain_graph=True, allow_unused=True)
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_sparse_mmoe_trains_and_records_each_experts_load(tmp_path: Path,
                                                          funnel_dir: Path) -> None:
    from rankengine.config import load_config
    from rankengine.train import train

    from ..conftest import tiny_config_text

    path = tmp_path / "engine.toml"
    path.write_text(tiny_config_text(funnel_dir, model="""
[model]
backbone = { kind = "mmoe", experts = 6, expert_hidden = [16], top_k = 2 }
tower = { kind = "mlp", hidden = [8] }
cascade = "esm2"
"""))
    result = train(load_config(path), progress=False).result
    for entry in result.gate_stats.values():
        assert len(entry["load"]) == 6 and all(0.0 <= x <= 1.0 for x in entry["load"])
        assert sum(entry["load"]) == pytest.approx(2.0)  # each row goes to k = 2 experts
        assert sum(entry["weights"]) == pytest.approx(1.0, abs=1e-6)
    first, last = result.history[0], result.history[-1]
    assert last["valid_loss"]["total"] < first["valid_loss"]["total"]  # it learns
