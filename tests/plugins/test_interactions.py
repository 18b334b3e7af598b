"""The built-in interactions against their papers' formulas, and a third-party interaction."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from rankengine import Interaction, Register, hookimpl
from rankengine.config import load_config
from rankengine.plan import make_plan
from rankengine.pluginmanager import Engine, load_engine


def build(engine: Engine, kind: str, *, sequence_dim: int = 6, target_dim: int = 6,
          max_len: int = 5, **params: object) -> Interaction:
    component = engine.components.interactions.get(kind)
    module = component.factory(component.parse_params(params), sequence_dim=sequence_dim,
                               target_dim=target_dim, max_len=max_len)
    assert isinstance(module, Interaction)
    return module.eval()


def inputs(rows: int = 3, length: int = 5, dim: int = 6, target_dim: int = 6
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sequence = torch.randn(rows, length, dim, generator=g)
    mask = torch.tensor([[True] * length, [True, True, False, False, False],
                         [False] * length])[:rows]
    return sequence, mask, torch.randn(rows, target_dim, generator=g)


def run(module: Interaction, sequence: torch.Tensor, mask: torch.Tensor,
        target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(module.encode(sequence, mask), target)


def test_din_is_the_activation_unit_on_the_concatenation(engine: Engine) -> None:
    din = build(engine, "din", hidden=[8, 4])
    sequence, mask, target = inputs()
    got = run(din, sequence, mask, target)
    c = target.unsqueeze(1).expand_as(sequence)
    with torch.no_grad():  # the paper's formula: a(h, c) on [h, c, h - c, h * c]
        weights = din.unit(torch.cat([sequence, c, sequence - c, sequence * c], dim=-1))
        a = weights.squeeze(-1) * mask
        want = torch.cat([(a.unsqueeze(-1) * sequence).sum(dim=1), a.sum(1, keepdim=True)], 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[2], torch.zeros(7))  # no history: nothing attended
    # unnormalised: a longer matching history weighs more, unlike a softmax
    normalised = build(engine, "din", hidden=[8, 4], softmax=True)
    normalised.load_state_dict(din.state_dict())
    out = run(normalised, sequence, mask, target)
    assert not torch.allclose(out, got)
    assert torch.equal(out[2], torch.zeros(7))
    torch.testing.assert_close(out[:2, -1], torch.ones(2))  # the softmax's mass is 1


def test_din_feeds_side_information_to_the_unit_or_projects_the_sequence(
        engine: Engine) -> None:
    din = build(engine, "din", sequence_dim=10, target_dim=6, hidden=[8])
    sequence, mask, target = inputs(dim=10)
    got = run(din, sequence, mask, target)
    h, side = sequence[..., :6], sequence[..., 6:]  # the behaviour, and its side information
    c = target.unsqueeze(1).expand_as(h)
    with torch.no_grad():
        weights = din.unit(torch.cat([h, c, h - c, h * c, side], dim=-1)).squeeze(-1) * mask
    torch.testing.assert_close(got[:, :6], (weights.unsqueeze(-1) * h).sum(dim=1), rtol=1e-5,
                               atol=1e-6)
    projected = build(engine, "din", sequence_dim=10, target_dim=6, aligned=False)
    assert run(projected, sequence, mask, target).shape == (3, projected.output_dim) == (3, 7)
    with pytest.raises(ValueError, match=r"aligned = true needs the sequence's first features "
                                         r"to match the target's \(6 wide\); the sequence is "
                                         r"4 wide"):
        build(engine, "din", sequence_dim=4, target_dim=6)


def test_transformer_equals_full_self_attention_over_target_and_sequence(
        engine: Engine) -> None:
    bst = build(engine, "transformer", sequence_dim=6, target_dim=4, dim=8, heads=2)
    sequence, mask, target = inputs(target_dim=4)
    got = run(bst, sequence, mask, target)
    with torch.no_grad():  # [target, h_1..h_L] through one post-norm block, keys masked
        tokens = torch.cat([bst.target_in(target).unsqueeze(1), bst.sequence_in(sequence)],
                           dim=1) + bst.positions
        q, k, v = bst.qkv(tokens).chunk(3, dim=-1)
        heads = [(q[..., i:i + 4] @ k[..., i:i + 4].transpose(1, 2)) / math.sqrt(4)
                 for i in (0, 4)]
        valid = torch.cat([torch.ones(3, 1, dtype=torch.bool), mask], dim=1).unsqueeze(1)
        attended = torch.cat([torch.softmax(h.masked_fill(~valid, -math.inf), dim=-1)
                              @ v[..., i:i + 4] for h, i in zip(heads, (0, 4), strict=True)],
                             dim=-1)
        y = bst.norm1(tokens + bst.out(attended))
        target_out = bst.norm2(y[:, 0] + bst.ffn(y[:, 0]))
        m = mask.unsqueeze(-1).float()
        sequence_out = (y[:, 1:] * m).sum(1) / m.sum(1).clamp(min=1)
    torch.testing.assert_close(got, torch.cat([target_out, sequence_out], dim=1),
                               rtol=1e-5, atol=1e-5)


def test_dupn_attends_only_to_behaviours_and_ignores_padding(engine: Engine) -> None:
    dupn = build(engine, "dupn_lstm", hidden=8, attention=4)
    sequence, mask, target = inputs()
    got = run(dupn, sequence, mask, target)
    assert got.shape == (3, 8) and torch.equal(got[2], torch.zeros(8))
    padded = sequence.clone()
    padded[1, 2:] = 100.0  # whatever sits in the padding changes nothing
    torch.testing.assert_close(run(dupn, padded, mask, target), got)
    changed = sequence.clone()
    changed[1, 0] += 1.0  # a behaviour does
    assert not torch.allclose(run(dupn, changed, mask, target)[1], got[1])


class MeanMatch(Interaction):
    """A third party's interaction: the mean history dotted with the projected candidate."""

    def __init__(self, params: object, *, sequence_dim: int, target_dim: int,
                 max_len: int) -> None:
        super().__init__()
        self.project = nn.Linear(target_dim, sequence_dim)
        self.output_dim = 1
        self.encoded_rows: list[int] = []

    def encode(self, sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.encoded_rows.append(int(sequence.shape[0]))
        valid = mask.unsqueeze(-1).to(sequence.dtype)
        return ((sequence * valid).sum(1) / valid.sum(1).clamp(min=1.0),)

    def forward(self, encoded: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        (history,) = encoded
        return (history * self.project(target)).sum(-1, keepdim=True)


class MeanMatchPlugin:
    @hookimpl
    def rankengine_register_interactions(self, register: Register) -> None:
        register("mean_match", MeanMatch, help="mean history . candidate")


def test_a_third_party_interaction_is_built_into_the_model(tmp_path: Path,
                                                           funnel_dir: Path) -> None:
    from rankengine.data.pipeline import feature_layout

    path = tmp_path / "engine.toml"
    path.write_text(textwrap.dedent(f"""
    [data]
    train = "{funnel_dir / 'train.parquet'}"

    [tasks]
    click = {{ label = "click" }}

    [[features]]
    name = "item_category"
    kind = "categorical"

    [[features]]
    name = "user_hist_categories"
    kind = "sequence"
    side = "context"
    share_with = "item_category"

    [[model.interactions]]
    name = "match"
    kind = "mean_match"
    sequence = ["user_hist_categories"]
    target = ["item_category"]
    groups = ["default", "match"]
    """))
    config = load_config(path)
    engine = load_engine(["builtin"], extra=[("meanmatch", MeanMatchPlugin())])
    plan = make_plan(config, engine)
    model = plan.build_model(feature_layout(config.features, plan.pipeline.encoders,
                                            cardinality=10))
    embedder = model.embedder
    assert embedder.spans["match"] == (16, 17) and embedder.output_dim == 17
    from rankengine.data.batching import ModelInput

    out = model(ModelInput(torch.randint(0, 10, (4, 1)), torch.zeros(4, 0),
                           [torch.randint(0, 11, (1, 20))]))
    assert out.entire(model.graph).shape == (4, 1)
    assert embedder.interactions[0].encoded_rows == [1]  # one context for the four rows
