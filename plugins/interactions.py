"""Sequence interactions: DIN's target attention (Zhou et al., KDD 2018), BST's transformer
(Chen et al., DLP-KDD 2019) and DUPN's recurrent encoder with attention (Ni et al., KDD 2018).

Each splits its work as :class:`rankengine.Interaction` asks: what depends only on the
user's sequence runs in ``encode`` once per context (once per served request), what involves
the candidate runs in ``forward`` per candidate.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from rankengine import (
    Activation,
    Interaction,
    InteractionFactory,
    Params,
    Register,
    Width,
    hookimpl,
    mlp,
)


@hookimpl
def rankengine_register_interactions(register: Register[InteractionFactory]) -> None:
    register("din", TargetAttention, params=DINParams,
             help="DIN target attention: an activation unit over [h, c, h-c, h*c] and the "
                  "side information, masked, unnormalised (softmax = true normalises)")
    register("transformer", SequenceTransformer, params=TransformerParams,
             help="BST: self-attention over the sequence plus the target, with positions")
    register("dupn_lstm", RecurrentAttention, params=DUPNParams,
             help="DUPN: an LSTM over the sequence and its side information, attended by the "
                  "candidate")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where ``mask``; a row with no valid entry gets zeros."""
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)


# --------------------------------------------------------------------------------------------
# DIN
# --------------------------------------------------------------------------------------------


class DINParams(Params):
    #: the activation unit's hidden layers (the paper: 80, 40). It runs per candidate and
    #: behaviour (500 x 50 rows for a served request), so its width is most of DIN's serving
    #: cost: one layer of 32 keeps a request within ~1.1x of mean pooling's model time
    hidden: list[Width] = Field(default=[32], min_length=1)
    activation: Activation = "relu"
    #: normalise the weights with a softmax over the sequence; the paper does not, so that
    #: the output's scale keeps how much of the history matches the candidate
    softmax: bool = False
    #: the sequence's first features embed what the target's do, in the target's order and
    #: width (seq_category shares item_category's table ...): those columns are the behaviour
    #: h compared with the candidate as they are, and the rest (behaviour type, time gap) is
    #: side information fed to the activation unit. False: the whole sequence is projected to
    #: the target's width.
    aligned: bool = True


class TargetAttention(Interaction):
    """``sum_i a(h_i, s_i, c) h_i`` over the valid positions, ``a`` an MLP on ``[h, c, h - c,
    h * c, s]``: ``h`` the behaviour in the candidate's space, ``c`` the candidate, ``s`` the
    behaviour's side information (see ``aligned``). The output is ``h``'s width.

    The first layer on the concatenation is split by linearity: ``W [h, c, h - c, h * c, s]
    = (W_h + W_d) h + W_s s + (W_c - W_d) c + W_p (h * c)``; the terms without ``c`` are
    computed once per context. The attention mass ``sum_i a_i`` (how much of the history
    matches the candidate, the paper's "intensity of user interests") is output beside the
    attended vector: read off the vector, it would need a product with ``c`` downstream.
    """

    def __init__(self, params: DINParams, *, sequence_dim: int, target_dim: int,
                 max_len: int) -> None:
        super().__init__()
        self.softmax = params.softmax
        self.aligned = params.aligned
        if params.aligned and sequence_dim < target_dim:
            raise ValueError(f"aligned = true needs the sequence's first features to match the "
                             f"target's ({target_dim} wide); the sequence is {sequence_dim} "
                             f"wide: list them first, or set aligned = false")
        side = sequence_dim - target_dim if params.aligned else 0
        self.key = nn.Identity() if params.aligned else nn.Linear(sequence_dim, target_dim)
        self.unit = mlp(4 * target_dim + side, params.hidden, activation=params.activation,
                        output_dim=1)
        first = self.unit[0]
        assert isinstance(first, nn.Linear)
        self.first = first
        self.dim = target_dim
        self.output_dim = target_dim + 1

    def encode(self, sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.aligned:
            keys, side = sequence[..., :self.dim], sequence[..., self.dim:]
        else:
            keys, side = self.key(sequence), sequence[..., :0]
        w_h, _, w_d, _, w_s = torch.split(self.first.weight,
                                          [self.dim] * 4 + [side.shape[-1]], dim=1)
        history_term = keys @ (w_h + w_d).T + side @ w_s.T + self.first.bias  # [R, L, H]
        return keys, history_term, mask

    def forward(self, encoded: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        keys, history_term, mask = encoded
        _, w_c, w_d, w_p, _ = torch.split(
            self.first.weight, [self.dim] * 4 + [self.first.in_features - 4 * self.dim], dim=1)
        target_term = (target @ (w_c - w_d).T).unsqueeze(1)  # [B, 1, H]
        product_term = (keys * target.unsqueeze(1)) @ w_p.T  # [B, L, H]
        scores = self.unit[1:](history_term + target_term + product_term)
        scores = scores.squeeze(-1)  # [B, L]
        weights = masked_softmax(scores, mask) if self.softmax else scores * mask
        attended = (weights.unsqueeze(-1) * keys).sum(dim=1)
        return torch.cat([attended, weights.sum(dim=1, keepdim=True)], dim=1)


# --------------------------------------------------------------------------------------------
# BST
# --------------------------------------------------------------------------------------------


class TransformerParams(Params):
    #: the model width the sequence and the target are projected to
    dim: Width = 32
    heads: int = Field(default=2, ge=1, le=16)
    #: learned position embeddings (the target is position 0, the i-th behaviour i + 1);
    #: a time-gap encoding comes from putting a sequence_bucketize feature of the time gaps
    #: in the sequence, whose embedding joins each behaviour's
    positions: bool = True
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class SequenceTransformer(Interaction):
    """One transformer block (post-norm, as BST) over ``[target, h_1 ... h_L]``.

    The queries, keys and values of the sequence and the sequence-to-sequence attention
    scores are computed once per context; per candidate only the scores involving the target
    token are added. The output is the target token's block output and the masked mean of the
    sequence tokens' attention outputs (``2 * dim``), rather than BST's flattened
    ``(L + 1) * dim`` concatenation, which would tie the model's width to ``max_len``.
    """

    def __init__(self, params: TransformerParams, *, sequence_dim: int, target_dim: int,
                 max_len: int) -> None:
        super().__init__()
        d, h = params.dim, params.heads
        if d % h:
            raise ValueError(f"dim ({d}) must be a multiple of heads ({h})")
        self.heads, self.head_dim = h, d // h
        self.sequence_in = nn.Linear(sequence_dim, d)
        self.target_in = nn.Linear(target_dim, d)
        self.positions = nn.Parameter(torch.zeros(max_len + 1, d)) if params.positions \
            else None
        if self.positions is not None:
            nn.init.normal_(self.positions, std=0.02)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm1 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Dropout(params.dropout),
                                 nn.Linear(4 * d, d))
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(params.dropout)
        self.output_dim = 2 * d

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[N, T, 3d]`` → q, k, v as ``[N, heads, T, head_dim]``."""
        n, t, _ = x.shape
        return [part.reshape(n, t, self.heads, self.head_dim).transpose(1, 2)
                for part in x.chunk(3, dim=-1)]

    def encode(self, sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.sequence_in(sequence)  # [R, L, d]
        if self.positions is not None:
            x = x + self.positions[1:x.shape[1] + 1]
        q, k, v = self._split(self.qkv(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # [R, h, L, L]
        return x, q, k, v, scores, mask

    def forward(self, encoded: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        x, q, k, v, scores, mask = encoded
        t = self.target_in(target).unsqueeze(1)  # [B, 1, d]
        if self.positions is not None:
            t = t + self.positions[:1]
        qt, kt, vt = self._split(self.qkv(t))  # [B, h, 1, dh]
        scale = math.sqrt(self.head_dim)
        keys_valid = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)[:, None, None, :]
        # the sequence's queries over [sequence keys, target key]
        seq_scores = torch.cat([scores, q @ kt.transpose(-1, -2) / scale], dim=-1)
        # the target's query over the same keys
        tgt_scores = torch.cat([qt @ k.transpose(-1, -2), qt @ kt.transpose(-1, -2)],
                               dim=-1) / scale
        values = torch.cat([v, vt], dim=2)  # [B, h, L + 1, dh]
        attended = masked_softmax(torch.cat([tgt_scores, seq_scores], dim=2),
                                  keys_valid) @ values  # [B, h, L + 1, dh]
        b, _, tokens, _ = attended.shape
        attended = self.out(attended.transpose(1, 2).reshape(b, tokens, -1))
        tokens_in = torch.cat([t, x], dim=1)
        y = self.norm1(tokens_in + self.dropout(attended))  # [B, L + 1, d]
        target_out = self.norm2(y[:, 0] + self.dropout(self.ffn(y[:, 0])))
        valid = mask.unsqueeze(-1).to(y.dtype)
        sequence_out = (y[:, 1:] * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
        return torch.cat([target_out, sequence_out], dim=1)


# --------------------------------------------------------------------------------------------
# DUPN
# --------------------------------------------------------------------------------------------


class DUPNParams(Params):
    #: the LSTM's hidden size (the output width)
    hidden: Width = 32
    #: the attention's hidden size
    attention: Width = 32


class RecurrentAttention(Interaction):
    """An LSTM over the behaviours (each one's item and side-information embeddings), then
    attention by the candidate: ``a_i ∝ exp(v·tanh(W_h s_i + W_e e_i + W_c c))`` over the
    valid positions, output ``sum_i a_i s_i``. The side information (behaviour type, time
    gap) enters both the recurrent state and, through ``e_i``, the attention, as in DUPN.

    The LSTM reads the sequence in its stored order (most recent first, padding last), so no
    padding precedes a behaviour; it and the ``W_h s_i + W_e e_i`` term run once per context.
    """

    def __init__(self, params: DUPNParams, *, sequence_dim: int, target_dim: int,
                 max_len: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(sequence_dim, params.hidden, batch_first=True)
        self.state_in = nn.Linear(params.hidden, params.attention)
        self.element_in = nn.Linear(sequence_dim, params.attention, bias=False)
        self.target_in = nn.Linear(target_dim, params.attention, bias=False)
        self.score = nn.Linear(params.attention, 1, bias=False)
        self.output_dim = params.hidden

    def encode(self, sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states, _ = self.lstm(sequence)  # [R, L, hidden]
        context_term = self.state_in(states) + self.element_in(sequence)  # [R, L, A]
        return states, context_term, mask

    def forward(self, encoded: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        states, context_term, mask = encoded
        scores = self.score(torch.tanh(context_term + self.target_in(target).unsqueeze(1)))
        weights = masked_softmax(scores.squeeze(-1), mask)  # [B, L]
        out: torch.Tensor = (weights.unsqueeze(-1) * states).sum(dim=1)
        return out
