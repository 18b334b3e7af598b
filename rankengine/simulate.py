"""Simulate e-commerce impression logs with a click -> favorite / order -> pay funnel.

Each request shows a slate of distinct items (Zipf popularity, users with Zipf activity),
by default in random order, so position is not confounded with relevance and only biases
clicks; ``logger_bias`` > 0 makes a logging ranker put promoted brands first instead.
Preferences are low-rank: user factors = segment factor + ``id_noise`` deviation, item
factors = category factor + deviation, so most signal lives in segment x category
interactions (plus brand, price, device and hour effects) and the ids add the rest.
Conversion factors mix the click factors with independent ones; the mixing weight is
split as sign(c)*sqrt(|c|) on the user side and sqrt(|c|) on the item side so that the
click and conversion *affinities* correlate with ``conversion_correlation`` itself (mixing
both sides by c would give c^2 and lose the sign). Clickbait items and expensive items
draw clicks but convert worse, so clicked rows are a biased sample of impressions.
Intercepts are solved on the simulated rows so base rates hit CTR 10 %, p(fav|click)
20 %, p(order|click) 15 %, p(pay|order) 70 % whatever the other knobs are. Every row
carries counterfactual child outcomes (``cf_*``) and the true probabilities.

Behaviour sequences (``sequence_effect`` > 0, or ``write_sequences``): each user has a log
of behaviours in time (click / favorite / order on items drawn from their long-term taste
or from a short-term intent that changes at session starts), and every row carries its
request's last ``sequence_max_len`` behaviours before the request, most recent first, as
aligned lists: ``seq_item_id``, ``seq_category``, ``seq_brand``, ``seq_behaviour`` (0 click,
1 favorite, 2 order) and ``seq_time_gap`` (hours before the request). The click logit gains
``sequence_effect`` times the candidate's relation to them (recency-decayed, behaviour-
weighted interest in its category and brand, plus a match with the current intent) and the
order logit half of that; the true probabilities include it. The sequences come from their
own random stream, so they are the same at any ``sequence_effect``, and with the effect at
0 and no sequences written the output is bit-identical to a simulator without them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

__all__ = ["BEHAVIOURS", "FUNNEL_SCHEMA", "SEQUENCE_FIELDS", "SimulationConfig",
           "simulate_funnel", "write_funnel"]

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

DEVICES = ("ios", "android", "web", "mini_app")
SPLITS = ("train", "valid", "test")
LABELS = ("click", "favorite", "order", "pay")
TARGET_RATES = {"click": 0.10, "favorite": 0.20, "order": 0.15, "pay": 0.70}
# Per-device logit offsets: web converts worst, the mini app has embedded payment.
_DEVICE_P = np.array([0.35, 0.40, 0.10, 0.15])
_DEVICE_CLICK = np.array([0.0, -0.1, -0.3, 0.1])
_DEVICE_ORDER = np.array([0.2, -0.1, -0.3, 0.0])
_DEVICE_PAY = np.array([0.3, 0.0, -0.3, 0.5])
_CALIBRATION_ROWS = 65_536  # intercepts are solved on a prefix: rows are i.i.d. by request

_PROBS = ("true_p_click", "true_pc_favorite", "true_pc_order", "true_pc_pay",
          "true_p_favorite", "true_p_order", "true_p_pay")
FUNNEL_SCHEMA = pa.schema(
    [(n, pa.int64()) for n in ("request_id", "position", "user_id", "item_id", "user_segment")]
    + [("device", pa.string()), ("hour", pa.int64()), ("item_category", pa.int64()),
       ("item_brand", pa.int64()), ("item_price", pa.float64()),
       ("user_hist_categories", pa.list_(pa.int64()))]
    + [(n, pa.int64()) for n in LABELS] + [("dwell_time", pa.float64())]
    + [(n, pa.float64()) for n in _PROBS]
    + [(n, pa.int64()) for n in ("cf_favorite", "cf_order", "cf_pay")]
)
#: The behaviour sequence columns (written after ``user_hist_categories`` when sequences are
#: on): aligned lists, most recent behaviour first.
SEQUENCE_FIELDS = [("seq_item_id", pa.list_(pa.int64())), ("seq_category", pa.list_(pa.int64())),
                   ("seq_brand", pa.list_(pa.int64())), ("seq_behaviour", pa.list_(pa.int64())),
                   ("seq_time_gap", pa.list_(pa.float64()))]
BEHAVIOURS = ("click", "favorite", "order")  # seq_behaviour codes 0, 1, 2
_BEHAVIOUR_P = np.array([0.75, 0.15, 0.10])
_BEHAVIOUR_WEIGHT = np.array([1.0, 2.0, 3.0])  # an order says more than a click
_HORIZON_H = 14 * 24.0  # the logged requests fall in two weeks (gaps are in hours)
_TENURE_H = 14 * 24.0  # mean history a user has before the log starts
_BEHAVIOUR_RATE = 0.05  # behaviours per hour of a user of average activity
_SESSION_H = 6.0  # mean hours a short-term intent lasts
_INTENT_SHARE = 0.5  # share of behaviours that follow the current intent
_DECAY_H = 48.0  # time constant of the recency decay of interest


MAX_SIZE = 2**31 - 1
MAX_LOGIT_SCALE = 1e6
MAX_SEQUENCE_LEN = 10_000  # requests * slate_size * this many values per seq_* column


def _check(name: str, value: object, lo: float | None, hi: float | None,
           integer: bool = False, most: float | None = None) -> None:
    """``value`` in [lo, hi]; ``most``: a practical upper bound on an open range."""
    v = math.nan
    if isinstance(value, (int, float, np.integer)) and not isinstance(value, bool):
        try:
            v = math.nan if integer and isinstance(value, float) else float(value)
        except OverflowError:  # an int past any float
            v = math.inf
    if math.isinf(v) and integer and most is not None:
        v = most + 1  # an integer is finite: too large, not "not finite"
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite {'integer' if integer else 'number'}, "
                         f"got {value!r}")
    if lo is not None and hi is not None and not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    if lo is not None and hi is None and v < lo:
        raise ValueError(f"{name} must be >= {lo:g}, got {value!r}")
    if most is not None and abs(v) > most:
        raise ValueError(f"{name} must be at most {most:g}{' in size' if lo is None else ''}, "
                         f"got {value!r}")


@dataclass(frozen=True)
class SimulationConfig:
    """Knobs of the simulated world; validated on construction (ValueError names the field)."""

    requests: int = 50_000  # each request shows `slate_size` items at positions 1..slate_size
    slate_size: int = 10
    users: int = 5_000
    items: int = 2_000
    segments: int = 32  # observable user segments
    categories: int = 50  # observable item categories
    brands: int = 200  # observable item brands, each owned by one category
    factor_dim: int = 4  # latent dimensionality
    id_noise: float = 0.1  # std of per-user / per-item factor deviations (ids only)
    conversion_correlation: float = 0.5  # correlation of click and conversion affinities
    favorite_order_boost: float = 1.5  # order logit boost given favorite (ESM2)
    position_bias: float = 0.6  # click logit -= position_bias * log(position)
    #: 0: slates shown in random order (position is not confounded with anything). > 0: a
    #: logging ranker puts items of "promoted" brands (a per-brand effect unrelated to any
    #: outcome) near the top, so a model that ignores position learns to favour them.
    logger_bias: float = 0.0
    inconsistent_rate: float = 0.0  # fraction of rows with a child set although parent is 0
    seed: int = 7
    #: Behaviour sequences: > 0 writes each request's recent behaviours (``seq_*`` columns)
    #: and adds ``sequence_effect`` * (recency-decayed interest in the candidate's category
    #: and brand + match with the user's current intent) to the click logit, half that to
    #: the order logit. 0 (the default) leaves the world exactly as without sequences.
    sequence_effect: float = 0.0
    sequence_max_len: int = 50  # the most recent behaviours kept per request
    #: Write the ``seq_*`` columns even when ``sequence_effect`` is 0 (a placebo world: the
    #: same sequences as any effect would see, but no outcome depends on them).
    write_sequences: bool = False

    def __post_init__(self) -> None:
        # Sizes past int32 overflow numpy's index arithmetic (an opaque error) long before
        # they could fit in memory; logit knobs past 1e6 overflow to inf in the logits.
        for name in ("requests", "slate_size", "users", "items", "segments", "categories",
                     "brands", "factor_dim"):
            _check(name, getattr(self, name), 1, None, integer=True, most=MAX_SIZE)
        _check("seed", self.seed, 0, None, integer=True)
        _check("id_noise", self.id_noise, 0, None, most=MAX_LOGIT_SCALE)
        _check("conversion_correlation", self.conversion_correlation, -1, 1)
        _check("favorite_order_boost", self.favorite_order_boost, None, None,
               most=MAX_LOGIT_SCALE)
        _check("position_bias", self.position_bias, 0, None, most=MAX_LOGIT_SCALE)
        _check("logger_bias", self.logger_bias, 0, None, most=MAX_LOGIT_SCALE)
        _check("inconsistent_rate", self.inconsistent_rate, 0, 1)
        _check("sequence_effect", self.sequence_effect, 0, None, most=MAX_LOGIT_SCALE)
        _check("sequence_max_len", self.sequence_max_len, 1, None, integer=True,
               most=MAX_SEQUENCE_LEN)
        if not isinstance(self.write_sequences, bool):
            raise ValueError(f"write_sequences must be true or false, "
                             f"got {self.write_sequences!r}")

    @property
    def sequences(self) -> bool:
        """Whether the ``seq_*`` columns are written."""
        return self.write_sequences or self.sequence_effect > 0


def _sigmoid(x: Floats) -> Floats:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form never overflows


def _solve_intercept(parts: list[tuple[Floats, Floats]], target: float) -> float:
    """Bisect b so that sum(w * sigmoid(z + b)) / sum(w) == target (monotone in b)."""
    total = sum(float(w.sum()) for _, w in parts)
    lo, hi = -40.0, 40.0
    for _ in range(40 if total > 0 else 0):
        mid = 0.5 * (lo + hi)
        rate = sum(float((w * _sigmoid(z + mid)).sum()) for z, w in parts) / total
        lo, hi = (mid, hi) if rate < target else (lo, mid)
    return 0.5 * (lo + hi)


def _zipf(rng: np.random.Generator, n: int, alpha: float, score: Floats | None = None) -> Floats:
    """Zipf weights over n entities; higher `score` (plus noise) gets the better rank."""
    key = rng.standard_normal(n) + (0.0 if score is None else score)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-key)] = np.arange(n)
    w = (rank + 1.0) ** -alpha
    return np.asarray(w / w.sum(), dtype=np.float64)


def _sample_slates(rng: np.random.Generator, pop: Floats, requests: int, slate: int) -> Ints:
    items = rng.choice(pop.size, size=(requests, slate), p=pop)
    if pop.size < slate:
        return items  # distinct slates are impossible
    for _ in range(100):  # redraw duplicates only; converges in a few rounds
        order = np.argsort(items, axis=1, kind="stable")
        srt = np.take_along_axis(items, order, axis=1)
        dup = np.zeros(items.shape, dtype=bool)
        np.put_along_axis(dup, order[:, 1:], srt[:, 1:] == srt[:, :-1], axis=1)
        if not dup.any():
            break
        items[dup] = rng.choice(pop.size, size=int(dup.sum()), p=pop)
    return items


def _sample_hist(rng: np.random.Generator, pref: Floats, lengths: Ints) -> pa.ListArray:
    """Draw lengths[u] categories per user from softmax(pref[u]) with one searchsorted:
    offsetting each user's CDF by its row index makes the flattened CDFs monotone."""
    n_users, n_cat = pref.shape
    cdf = np.cumsum(np.exp(pref - pref.max(axis=1, keepdims=True)), axis=1)
    cdf = cdf / cdf[:, -1:] + np.arange(n_users)[:, None]
    owner = np.repeat(np.arange(n_users), lengths)
    idx = np.searchsorted(cdf.ravel(), rng.random(owner.size) + owner, side="right")
    values = np.minimum(idx - owner * n_cat, n_cat - 1).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _within_groups(group: Ints, weight: Floats) -> tuple[Ints, Floats]:
    """Members sorted by group, and keys ``group + CDF within the group``: member k of group g
    is drawn (by weight) as ``order[searchsorted(keys, g + u, side="right")]``, u ~ U[0, 1)."""
    order = np.argsort(group, kind="stable")
    g, w = group[order], weight[order]
    total = np.bincount(g, weights=w)
    cdf = np.cumsum(w) - np.concatenate([[0.0], np.cumsum(total)[:-1]])[g]
    cdf = np.minimum(cdf / total[g], 1.0)
    cdf[np.r_[g[1:] != g[:-1], True]] = 1.0  # the last member closes its group exactly
    return order, g + cdf


def _draw_within(rng: np.random.Generator, sampler: tuple[Ints, Floats], groups: Ints) -> Ints:
    """One member of each of ``groups`` (all non-empty), by weight; see _within_groups."""
    order, keys = sampler
    pos = np.searchsorted(keys, groups + rng.random(groups.size), side="right")
    return order[np.minimum(pos, order.size - 1)]


def _draw_rows(rng: np.random.Generator, weights: Floats, rows: Ints) -> Ints:
    """A column index for each of ``rows``, drawn from that row of ``weights`` (rows with
    some weight); one searchsorted as in _sample_hist."""
    n_rows, n_cols = weights.shape
    cdf = np.cumsum(weights, axis=1)
    cdf = cdf / cdf[:, -1:] + np.arange(n_rows)[:, None]
    idx = np.searchsorted(cdf.ravel(), rng.random(rows.size) + rows, side="right")
    return np.asarray(np.clip(idx - rows * n_cols, 0, n_cols - 1), dtype=np.int64)


@dataclass(frozen=True)
class _Sequences:
    """Each request's behaviours before it, most recent first, flattened request by request."""

    offsets: Ints  # request r's behaviours are [offsets[r], offsets[r + 1])
    item: Ints
    behaviour: Ints
    gap: Floats  # hours between the behaviour and the request
    intent_category: Ints  # the request's current short-term intent
    intent_brand: Ints


def _behaviour_log(rng: np.random.Generator, cfg: SimulationConfig, activity: Floats,
                   pref: Floats, item_cat: Ints, item_brand: Ints, pop: Floats,
                   req_user: Ints) -> _Sequences:
    """A behaviour log per user in time, and each request's last ``sequence_max_len`` of it.

    Users behave at a rate proportional to their activity, from the start of their history
    (an exponential tenure before the log) to the log's end. A behaviour is, half the time,
    an item of the user's current intent (a category and a brand, those of an item drawn at
    each session start: a Poisson process, sessions of ``_SESSION_H`` hours on average, the
    category from the user's taste flattened, so intents wander off the long-term history),
    else an item of a category drawn from the user's long-term taste; items by popularity
    within their category or brand; the behaviour type click / favorite / order with fixed
    odds. Requests fall uniformly in the log, independently of their id (so a prefix of the
    requests is still a random sample, as the intercepts need). Times are whole seconds
    (keys ``user * stride + seconds``): ordering is exact, a gap is at least one second.
    """
    n_u, n_req = activity.size, req_user.size
    sec = 3600.0
    tenure = np.ceil(rng.exponential(_TENURE_H * sec, n_u)).astype(np.int64)
    span = tenure + int(_HORIZON_H * sec)  # seconds from a user's first behaviour to the end
    stride = int(span.max()) + 1  # key = user * stride + seconds since the user's start

    def timeline(counts: Ints) -> tuple[Ints, Ints]:
        """counts[u] uniform times in user u's span: owners and keys, sorted."""
        owner = np.repeat(np.arange(n_u), counts)
        t = np.floor(rng.random(owner.size) * span[owner]).astype(np.int64)
        key = np.sort(owner * stride + t)  # by user, then time
        return owner, key

    # Sessions: the first starts with the user's history; intents follow the user's taste,
    # flattened, so they drift to categories the long-term history rarely shows.
    ses_user, ses_key = timeline(rng.poisson(span / (_SESSION_H * sec)) + 1)
    first = np.r_[True, ses_user[1:] != ses_user[:-1]]
    ses_key[first] = ses_user[first] * stride  # keys stay sorted: a user's block is fixed
    has_items = np.bincount(item_cat, minlength=pref.shape[1]) > 0
    taste = np.exp(pref - pref.max(axis=1, keepdims=True)) * has_items
    flat_taste = np.exp(0.5 * (pref - pref.max(axis=1, keepdims=True))) * has_items
    by_cat = _within_groups(item_cat, pop)
    by_brand = _within_groups(item_brand, pop)
    seed_item = _draw_within(rng, by_cat, _draw_rows(rng, flat_taste, ses_user))
    ses_cat, ses_brand = item_cat[seed_item], item_brand[seed_item]

    # Behaviours.
    rate = _BEHAVIOUR_RATE / sec * activity * n_u
    ev_user, ev_key = timeline(rng.poisson(rate * span))
    ev_ses = np.searchsorted(ses_key, ev_key, side="right") - 1
    mode = rng.random(ev_user.size)
    intent = mode < _INTENT_SHARE
    by_brand_intent = mode < 0.5 * _INTENT_SHARE
    groups = np.where(intent, ses_cat[ev_ses], 0)
    long_term = ~intent
    groups[long_term] = _draw_rows(rng, taste, ev_user[long_term])
    item = _draw_within(rng, by_cat, groups)
    item[by_brand_intent] = _draw_within(rng, by_brand, ses_brand[ev_ses[by_brand_intent]])
    behaviour = rng.choice(len(BEHAVIOURS), size=ev_user.size, p=_BEHAVIOUR_P)

    # Requests: the behaviours strictly before each, most recent first.
    req_t = tenure[req_user] + np.floor(
        rng.random(n_req) * _HORIZON_H * sec).astype(np.int64)
    req_key = req_user * stride + req_t
    end = np.searchsorted(ev_key, req_key, side="left")
    start = np.searchsorted(ev_key, req_user * stride, side="left")
    length = np.minimum(end - start, cfg.sequence_max_len)
    offsets = np.concatenate([[0], np.cumsum(length)])
    back = np.arange(offsets[-1]) - np.repeat(offsets[:-1], length)  # 0 = the most recent
    flat = np.repeat(end, length) - 1 - back
    gap = (np.repeat(req_key, length) - ev_key[flat]) / sec
    req_ses = np.searchsorted(ses_key, req_key, side="right") - 1
    return _Sequences(offsets=offsets, item=item[flat], behaviour=behaviour[flat], gap=gap,
                      intent_category=ses_cat[req_ses], intent_brand=ses_brand[req_ses])


def _sequence_term(seq: _Sequences, item_cat: Ints, item_brand: Ints, request_id: Ints,
                   cat: Ints, brand: Ints, n_c: int, n_b: int) -> Floats:
    """The candidate's relation to its request's sequence, added (scaled) to the logits:
    2 log(1 + I_category) + log(1 + I_brand) + 2 [intent category] + [intent brand], where I
    sums exp(-gap / _DECAY_H) * (1 click, 2 favorite, 3 order) over the behaviours on the
    candidate's category (brand), and the intent is the user's current one (the session's
    behaviours reveal it; the data does not carry it)."""
    n_req = seq.offsets.size - 1
    owner = np.repeat(np.arange(n_req), np.diff(seq.offsets))
    weight = _BEHAVIOUR_WEIGHT[seq.behaviour] * np.exp(-seq.gap / _DECAY_H)

    def interest(side: Ints, n_side: int, candidate: Ints) -> Floats:
        """log(1 + weight of the request's behaviours on the candidate's category / brand)."""
        if owner.size == 0:
            return np.zeros(candidate.size)
        key = owner * n_side + side
        order = np.argsort(key)
        key = key[order]
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        uniq, sums = key[first], np.add.reduceat(weight[order], first)
        want = request_id * n_side + candidate
        pos = np.minimum(np.searchsorted(uniq, want), uniq.size - 1)
        return np.where(uniq[pos] == want, np.log1p(sums[pos]), 0.0)

    return np.asarray(2.0 * interest(item_cat[seq.item], n_c, cat)
                      + interest(item_brand[seq.item], n_b, brand)
                      + 2.0 * (cat == seq.intent_category[request_id])
                      + 1.0 * (brand == seq.intent_brand[request_id]), dtype=np.float64)


def _sequence_columns(seq: _Sequences, item_cat: Ints, item_brand: Ints,
                      request_id: Ints) -> list[pa.Array]:
    """The seq_* list columns: every row gets its request's sequence (one numpy gather)."""
    length = np.diff(seq.offsets)[request_id]
    offsets = np.concatenate([[0], np.cumsum(length)])
    if offsets[-1] > MAX_SIZE:
        raise ValueError(f"the seq_* columns would hold {offsets[-1]} values each, past the "
                         f"{MAX_SIZE} a list column can: lower requests or sequence_max_len")
    idx = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - seq.offsets[request_id], length)
    item = seq.item[idx]
    offsets_32 = pa.array(offsets.astype(np.int32))
    return [pa.ListArray.from_arrays(offsets_32, values) for values in (
        _i64(item), _i64(item_cat[item]), _i64(item_brand[item]), _i64(seq.behaviour[idx]),
        _f64(seq.gap[idx]))]


def _i64(a: NDArray[np.generic]) -> pa.Array:
    return pa.array(np.asarray(a, dtype=np.int64))


def _f64(a: NDArray[np.generic]) -> pa.Array:
    return pa.array(np.asarray(a, dtype=np.float64))


def simulate_funnel(config: SimulationConfig) -> pa.Table:
    """Simulate ``requests * slate_size`` impression rows; see the module docstring."""
    cfg, rng = config, np.random.default_rng(config.seed)
    n_s, n_c, n_b, n_u, n_i, d = (cfg.segments, cfg.categories, cfg.brands, cfg.users,
                                  cfg.items, cfg.factor_dim)
    sd, c = cfg.id_noise, cfg.conversion_correlation
    g = rng.standard_normal

    # Users: segment, activity skew, primary device, peak hour, price sensitivity.
    user_seg = rng.integers(0, n_s, n_u)
    activity = _zipf(rng, n_u, 0.6)
    user_dev = rng.choice(4, size=n_u, p=_DEVICE_P)
    seg_peak = rng.choice(np.array([9, 12, 19, 21, 22]), size=n_s)
    seg_sens, seg_trust = rng.uniform(0.2, 1.2, n_s), 0.4 * g(n_s)
    # Items: brands belong to categories; log price = category level + brand premium.
    item_cat = rng.integers(0, n_c, n_i)
    owned = np.bincount(np.arange(n_b) % n_c, minlength=n_c)[item_cat]
    item_brand = np.where(owned > 0, item_cat + n_c * (rng.random(n_i) * owned).astype(np.int64),
                          rng.integers(0, n_b, n_i))
    log_price = (3.3 + 0.7 * g(n_c))[item_cat] + (0.3 * g(n_b))[item_brand] + 0.35 * g(n_i)
    price = np.exp(log_price)
    lp_item = (log_price - log_price.mean()) / (log_price.std() or 1.0)
    cat_peak = rng.integers(0, 24, n_c)
    bait = (0.4 * g(n_c))[item_cat] + 0.5 * sd * g(n_i)  # clickbait: clicks up, orders down
    quality_z = g(n_i)  # per-item click quality, also makes the item more popular
    quality, user_bias = sd * quality_z, sd * g(n_u)
    pop = _zipf(rng, n_i, 0.8, score=quality_z)
    brand_click, brand_fav, brand_conv = 0.3 * g(n_b), 0.3 * g(n_b), 0.3 * g(n_b)

    def latent(groups: Ints, n_groups: int, n: int) -> tuple[Floats, Floats]:
        base = g((n_groups, d))  # segment / category factor, shared by its members
        return base, base[groups] + sd * g((n, d))

    def mix(wt: float, x: Floats, z: Floats) -> Floats:
        return wt * x + math.sqrt(max(0.0, 1.0 - wt * wt)) * z

    u_click = latent(user_seg, n_s, n_u)[1]
    cat_click, i_click = latent(item_cat, n_c, n_i)
    u_z = latent(user_seg, n_s, n_u)[1]
    cat_z, i_z = latent(item_cat, n_c, n_i)
    w = math.sqrt(abs(c))
    u_conv, i_conv = mix(math.copysign(w, c), u_click, u_z), mix(w, i_click, i_z)
    cat_conv = mix(w, cat_click, cat_z)
    u_fav, i_fav = latent(user_seg, n_s, n_u)[1], latent(item_cat, n_c, n_i)[1]
    norm = math.sqrt(d) * (1.0 + sd * sd)  # unit-variance affinities whatever d and id_noise

    # History: recent categories follow the user's click + conversion taste; active users
    # have longer histories.
    pref = 1.5 * (u_click @ cat_click.T + u_conv @ cat_conv.T) / norm
    act_q = np.empty(n_u)
    act_q[np.argsort(activity)] = np.arange(n_u) / max(n_u - 1, 1)
    hist = _sample_hist(rng, pref, rng.binomial(10, 0.15 + 0.7 * act_q).astype(np.int64))

    # Requests: user by activity, mostly on their primary device, around their segment's peak.
    n_req, slate = cfg.requests, cfg.slate_size
    req_user = rng.choice(n_u, size=n_req, p=activity)
    req_dev = np.where(rng.random(n_req) < 0.85, user_dev[req_user], rng.integers(0, 4, n_req))
    req_hour = (seg_peak[user_seg[req_user]] + np.rint(3.5 * g(n_req)).astype(np.int64)) % 24
    slates = _sample_slates(rng, pop, n_req, slate)
    if cfg.logger_bias > 0:  # own random stream: the default world stays bit-identical
        logger = np.random.default_rng([cfg.seed, 1])
        promoted = logger.standard_normal(n_b)[item_brand[slates]]
        key = cfg.logger_bias * promoted + logger.gumbel(size=slates.shape)
        slates = np.take_along_axis(slates, np.argsort(-key, axis=1), axis=1)
    seq = None
    if cfg.sequences:  # own random stream: the world without sequences stays bit-identical
        seq = _behaviour_log(np.random.default_rng([cfg.seed, 2]), cfg, activity, pref,
                             item_cat, item_brand, pop, req_user)
    item = slates.ravel()
    n = n_req * slate
    request_id = np.repeat(np.arange(n_req, dtype=np.int64), slate)
    position = np.tile(np.arange(1, slate + 1, dtype=np.int64), n_req)
    user, dev, hour = req_user[request_id], req_dev[request_id], req_hour[request_id]
    seg, cat, brand, lp = user_seg[user], item_cat[item], item_brand[item], lp_item[item]

    def aff(uf: Floats, itf: Floats) -> Floats:
        return np.asarray(np.einsum("ij,ij->i", uf[user], itf[item]) / norm, dtype=np.float64)

    a_click, a_conv = aff(u_click, i_click), aff(u_conv, i_conv)
    a_fav = 0.5 * a_click + 0.4 * a_conv + 0.6 * aff(u_fav, i_fav)
    # Logits without intercepts. Clickbait and price push clicks and orders apart (selection
    # bias); price sensitivity is per segment; position only touches the click.
    z_click = (1.2 * a_click + user_bias[user] + quality[item] + brand_click[brand] + bait[item]
               + 0.3 * np.cos(2 * np.pi * (hour - cat_peak[cat]) / 24) + _DEVICE_CLICK[dev]
               + 0.15 * lp - cfg.position_bias * np.log(position))
    z_fav = a_fav + 0.3 * lp + brand_fav[brand]
    z_order = (1.3 * a_conv - seg_sens[seg] * lp - 0.8 * bait[item] + brand_conv[brand]
               + _DEVICE_ORDER[dev])
    z_pay = 0.5 * a_conv - 0.3 * seg_sens[seg] * lp + seg_trust[seg] + _DEVICE_PAY[dev]
    if seq is not None and cfg.sequence_effect > 0:  # what the user just did, read against
        # the candidate: clicks follow it, orders half as much (p_order gets both); the
        # intercepts below are solved with it, so base rates keep their targets
        z_seq = cfg.sequence_effect * _sequence_term(seq, item_cat, item_brand, request_id,
                                                     cat, brand, n_c, n_b)
        z_click, z_order = z_click + z_seq, z_order + 0.5 * z_seq

    k, boost = min(n, _CALIBRATION_ROWS), cfg.favorite_order_boost
    z_click += _solve_intercept([(z_click[:k], np.ones(k))], TARGET_RATES["click"])
    p_click = _sigmoid(z_click)
    z_fav += _solve_intercept([(z_fav[:k], p_click[:k])], TARGET_RATES["favorite"])
    pc_fav = _sigmoid(z_fav)
    z_order += _solve_intercept([(z_order[:k] + boost, p_click[:k] * pc_fav[:k]),
                                 (z_order[:k], p_click[:k] * (1 - pc_fav[:k]))],
                                TARGET_RATES["order"])
    p_order_fav, p_order_nofav = _sigmoid(z_order + boost), _sigmoid(z_order)
    pc_order = pc_fav * p_order_fav + (1 - pc_fav) * p_order_nofav  # total probability
    p_order = p_click * pc_order
    pc_pay = _sigmoid(z_pay + _solve_intercept([(z_pay[:k], p_order[:k])], TARGET_RATES["pay"]))

    # Potential outcomes for every row; observed children = parent & counterfactual.
    click = rng.random(n) < p_click
    cf_fav = rng.random(n) < pc_fav
    cf_order = rng.random(n) < np.where(cf_fav, p_order_fav, p_order_nofav)
    cf_pay = rng.random(n) < pc_pay
    favorite, order = click & cf_fav, click & cf_order
    pay = order & cf_pay
    log_dwell = 3.0 + 0.3 * a_click + 0.3 * a_conv + 0.15 * lp + 0.5 * g(n)
    dwell = np.where(click, np.exp(log_dwell), 0.0)

    if cfg.inconsistent_rate > 0:  # dirty logs: set one child whose parent is 0
        children = np.stack([favorite, order, pay], axis=1)
        eligible = np.stack([~click, ~click, ~order], axis=1)
        cand = np.flatnonzero(eligible.any(axis=1))
        n_bad = min(cand.size, round(cfg.inconsistent_rate * n))
        rows = rng.choice(cand, size=n_bad, replace=False)
        keys = np.where(eligible[rows], rng.random((rows.size, 3)), -1.0)
        children[rows, keys.argmax(axis=1)] = True
        favorite, order, pay = children[:, 0], children[:, 1], children[:, 2]

    device = pa.DictionaryArray.from_arrays(pa.array(dev.astype(np.int32)), pa.array(DEVICES))
    columns = [
        _i64(request_id), _i64(position), _i64(user), _i64(item), _i64(seg),
        device.dictionary_decode(), _i64(hour), _i64(cat), _i64(brand), _f64(price[item]),
        hist.take(pa.array(user)), _i64(click), _i64(favorite), _i64(order), _i64(pay), _f64(dwell),
        _f64(p_click), _f64(pc_fav), _f64(pc_order), _f64(pc_pay), _f64(p_click * pc_fav),
        _f64(p_order), _f64(p_order * pc_pay), _i64(cf_fav), _i64(cf_order), _i64(cf_pay),
    ]
    if seq is None:
        return pa.Table.from_arrays(columns, schema=FUNNEL_SCHEMA)
    at = FUNNEL_SCHEMA.get_field_index("user_hist_categories") + 1
    columns[at:at] = _sequence_columns(seq, item_cat, item_brand, request_id)
    schema = pa.schema(list(FUNNEL_SCHEMA)[:at] + [pa.field(n, t) for n, t in SEQUENCE_FIELDS]
                       + list(FUNNEL_SCHEMA)[at:])
    return pa.Table.from_arrays(columns, schema=schema)


def _rate(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _summary(part: pa.Table, fraction: float) -> dict[str, object]:
    sums = {name: int(np.asarray(part.column(name)).sum()) for name in LABELS}
    rows = part.num_rows
    return {
        "fraction": fraction,
        "rows": rows,
        "requests": len(np.unique(np.asarray(part.column("request_id")))),
        "label_rates": {name: _rate(sums[name], rows) for name in LABELS},
        "conditional_rates": {"favorite_given_click": _rate(sums["favorite"], sums["click"]),
                              "order_given_click": _rate(sums["order"], sums["click"]),
                              "pay_given_order": _rate(sums["pay"], sums["order"])},
    }


ROW_GROUP_ROWS = 100_000  # a multiple of the slate size: requests stay inside a row group


def _write_split(part: pa.Table, target: Path, shards: int) -> None:
    if shards == 1:
        pq.write_table(part, target, row_group_size=ROW_GROUP_ROWS)
        return
    # Shard on request boundaries so a request never straddles two files.
    req = np.asarray(part.column("request_id"))
    ordinal = np.concatenate([[0], np.cumsum(req[1:] != req[:-1])]) if req.size else req
    n_req = int(ordinal[-1]) + 1 if req.size else 1
    bounds = np.searchsorted(ordinal * shards // n_req, np.arange(shards + 1))
    target.mkdir()
    for s in range(shards):
        pq.write_table(part.slice(bounds[s], bounds[s + 1] - bounds[s]),
                       target / f"part-{s:05d}.parquet", row_group_size=ROW_GROUP_ROWS)


def _move_into_place(src: Path, dst: Path, trash: Path) -> None:
    """A file is swapped in with one atomic os.replace; a directory cannot replace a
    non-empty one (or a file), so the old entry is first renamed into the trash."""
    if dst.exists() and not dst.is_symlink() and (dst.is_dir() or src.is_dir()):
        dst.rename(trash / dst.name)
    os.replace(src, dst)


def write_funnel(out_dir: str | Path, config: SimulationConfig, *,
                 splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
                 shards: int = 1) -> dict[str, Path]:
    """Simulate, split by request and write train/valid/test parquet plus simulation.json.

    Returns the paths keyed by ``train``, ``valid``, ``test`` and ``simulation``.
    """
    if (not isinstance(splits, (tuple, list)) or len(splits) != 3
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not f >= 0
                   for f in splits) or not math.isclose(sum(splits), 1.0, abs_tol=1e-9)):
        raise ValueError(f"splits must be 3 non-negative numbers summing to 1, got {splits!r}")
    _check("shards", shards, 1, None, integer=True)
    table = simulate_funnel(config)
    # Own random stream, so the split never perturbs the simulated rows.
    perm_pos = np.argsort(np.random.default_rng([config.seed, 1]).permutation(config.requests))
    bounds = np.round(np.cumsum(splits) * config.requests)
    bounds[-1] = config.requests
    split_of_row = np.searchsorted(bounds, perm_pos, side="right")[
        np.asarray(table.column("request_id"))]
    entries = {name: f"{name}.parquet" if shards == 1 else name for name in SPLITS}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Staging dir inside out_dir: same filesystem so renames are atomic, and the dot
        # prefix hides it from pyarrow.dataset if a crash leaves it behind.
        tmp = Path(tempfile.mkdtemp(prefix=".simulate-", dir=out))
    except OSError as exc:  # a parent that is a file, no permission
        why = "a part of the path is a file, not a folder" if isinstance(
            exc, FileExistsError | NotADirectoryError) else exc.strerror or exc
        raise ValueError(f"{out}: cannot create the output directory: {why}") from None
    try:
        summaries: dict[str, object] = {}
        for k, name in enumerate(SPLITS):
            part = table.filter(pa.array(split_of_row == k))
            _write_split(part, tmp / entries[name], shards)
            summaries[name] = {"path": entries[name], **_summary(part, splits[k])}
        meta = {"config": asdict(config), "shards": shards, "target_rates": TARGET_RATES,
                "splits": summaries}
        (tmp / "simulation.json").write_text(json.dumps(meta, indent=2, default=int))
        # Everything is written: move each split in whole, metadata last; drop the other
        # layout's copy of a split (train/ vs train.parquet) so readers never see two.
        (tmp / "trash").mkdir()
        for name, entry in [*entries.items(), ("simulation", "simulation.json")]:
            _move_into_place(tmp / entry, out / entry, tmp / "trash")
            stale = out / (f"{name}.parquet" if shards > 1 else name)
            if name in entries and (stale.exists() or stale.is_symlink()):
                stale.rename(tmp / "trash" / stale.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: out / entries[name] for name in SPLITS} | {"simulation": out / "simulation.json"}
