from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from rankengine.config import FeatureSpec
from rankengine.errors import DataError
from rankengine.pluginmanager import Engine


def encoder(engine: Engine, kind: str, **params: Any):
    component = engine.components.encoders.get(kind)
    feature = FeatureSpec(name="f", kind=kind, **params)
    return component.factory(feature, component.parse_params(params))


def col(values: list[Any], type_: pa.DataType | None = None) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array(values, type=type_)])


def test_categorical_vocabulary_min_count_and_oov(engine: Engine) -> None:
    enc = encoder(engine, "categorical", min_count=2)
    enc.fit(col(["a", "b", "a", "c", "b", "a", None]))
    assert enc.vocabulary == ["a", "b"]  # by frequency; "c" is below min_count
    assert enc.cardinality == 3
    ids = enc.transform(col(["a", "b", "c", "zzz", None]))
    assert ids.tolist() == [1, 2, 0, 0, 0]


def test_categorical_ints_and_strings_share_categories(engine: Engine) -> None:
    enc = encoder(engine, "categorical")
    enc.fit(col([3, 5, 3]))
    assert enc.transform(col(["3", "5", "7"])).tolist() == [1, 2, 0]
    assert enc.transform(col([3.0, 5.0])).tolist() == [1, 2]


@pytest.mark.parametrize("vocabulary_values", [
    [3, 5, 3, -12],            # all integers: integer columns take the int64 lookup
    ["3", "05", "5", "3"],     # "05" is not how 5 is written: every lookup goes by string
    ["3", "ios", "3", "12"],   # mixed
])
def test_integer_and_string_columns_encode_alike_whatever_the_vocabulary(
        engine: Engine, vocabulary_values: list[Any]) -> None:
    for kind, params in (("categorical", {}), ("sequence", {"max_len": 1})):
        enc = encoder(engine, kind, **params)
        fitted = col(vocabulary_values)
        enc.fit(fitted if kind == "categorical" else col([[v] for v in vocabulary_values]))
        queries = [3, 5, -12, 12, 7, None]
        as_text = [None if q is None else str(q) for q in queries]
        by_int = col(queries, pa.int64()) if kind == "categorical" else \
            col([[q] for q in queries], pa.list_(pa.int64()))
        by_str = col(as_text) if kind == "categorical" else col([[q] for q in as_text])
        ids = enc.transform(by_int).reshape(-1).tolist()
        assert ids == enc.transform(by_str).reshape(-1).tolist()
        expected = [enc.vocabulary.index(t) + (1 if kind == "categorical" else 2)
                    if t in enc.vocabulary else (0 if kind == "categorical" else 1)
                    for t in as_text]
        assert ids == expected


def test_categorical_hash_buckets_are_stable_and_in_range(engine: Engine) -> None:
    enc = encoder(engine, "categorical", hash_buckets=7)
    enc.fit(col(["x"]))
    values = [f"user{i}" for i in range(200)] + [None]
    ids = enc.transform(col(values))
    assert ids[-1] == 0 and ids[:-1].min() >= 1 and ids.max() <= 7
    assert enc.cardinality == 8
    again = encoder(engine, "categorical", hash_buckets=7).transform(col(values))
    np.testing.assert_array_equal(ids, again)  # independent of process / fit
    assert len(set(ids[:-1].tolist())) == 7


def test_state_round_trip(engine: Engine) -> None:
    enc = encoder(engine, "categorical")
    enc.fit(col(["b", "a", "b"]))
    other = encoder(engine, "categorical")
    other.load_state(enc.state())
    data = col(["a", "b", "q"])
    np.testing.assert_array_equal(enc.transform(data), other.transform(data))


def test_numeric_standardize_and_impute(engine: Engine) -> None:
    enc = encoder(engine, "numeric", missing_indicator=True)
    enc.fit(col([1.0, 3.0, None, float("nan")]))
    out = enc.transform(col([1.0, 3.0, None]))
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out[:, 0], [-1.0, 1.0, 0.0])
    np.testing.assert_array_equal(out[:, 1], [0, 0, 1])


def test_numeric_log1p_is_sign_aware(engine: Engine) -> None:
    enc = encoder(engine, "numeric", transform="log1p")
    enc.fit(col([0.0, 10.0]))
    np.testing.assert_allclose(enc.transform(col([-9.0, 0.0, 9.0]))[:, 0],
                               [-np.log(10), 0.0, np.log(10)], rtol=1e-6)


def test_numeric_missing_error_names_the_row(engine: Engine) -> None:
    enc = encoder(engine, "numeric", missing="error")
    with pytest.raises(DataError, match="row 2 is missing"):
        enc.fit(col([1.0, 2.0, None]))


def test_numeric_column_of_strings_names_row_and_value(engine: Engine) -> None:
    enc = encoder(engine, "numeric")
    with pytest.raises(DataError, match=r"expected numbers, but row 1 holds 'twelve'"):
        enc.fit(col(["3.5", "twelve", "4"]))
    enc.fit(col([" 3.5", "4 "]))  # numbers written as text are fine


def test_numeric_infinity_is_refused(engine: Engine) -> None:
    enc = encoder(engine, "numeric")
    with pytest.raises(DataError, match="row 1 holds an infinite value"):
        enc.fit(col([1.0, float("inf")]))


def test_bucketize_quantiles_and_missing(engine: Engine) -> None:
    enc = encoder(engine, "bucketize", buckets=4)
    enc.fit(col([float(i) for i in range(100)]))
    assert len(enc.boundaries) == 3
    ids = enc.transform(col([-5.0, 30.0, 60.0, 1000.0, None]))
    assert ids.tolist() == [1, 2, 3, 4, 0]
    assert enc.cardinality == 5


def test_sequence_padding_truncation_and_oov(engine: Engine) -> None:
    enc = encoder(engine, "sequence", max_len=3)
    enc.fit(col([[1, 2], [2, 3, 3], []], pa.list_(pa.int64())))
    out = enc.transform(col([[3, 2, 1, 2], None, [9], [2]], pa.list_(pa.int64())))
    vocab = {v: i + 2 for i, v in enumerate(enc.vocabulary)}
    assert out.shape == (4, 3)
    assert out[0].tolist() == [vocab["3"], vocab["2"], vocab["1"]]  # first max_len kept
    assert out[1].tolist() == [0, 0, 0]  # null list → all padding
    assert out[2].tolist() == [1, 0, 0]  # unseen id → OOV (1)
    assert out[3].tolist() == [vocab["2"], 0, 0]


def test_sequence_from_delimited_strings(engine: Engine) -> None:
    enc = encoder(engine, "sequence", max_len=4, separator=",")
    enc.fit(col(["a,b", "b,c"]))
    out = enc.transform(col(["c,a", ""]))
    assert out[0, 0] > 1 and out[0, 1] > 1 and out[0, 2] == 0
    with pytest.raises(DataError, match="expected a list column"):
        enc.transform(col([1, 2]))


def test_bucketize_gives_heavy_values_their_own_bucket(engine: Engine) -> None:
    enc = encoder(engine, "bucketize", buckets=5)
    gains = [0.0] * 90 + [float(v) for v in range(100, 1100, 100)]  # 90 % zeros
    enc.fit(col(gains))
    ids = enc.transform(col([0.0, 150.0, 950.0]))
    assert len(set(ids.tolist())) == 3  # zero, small and large gains are told apart
    zero_bucket = enc.transform(col([0.0] * 3 + [-1e-9, 1e-9]))
    assert zero_bucket[:3].tolist() == [ids[0]] * 3
    assert zero_bucket[3] != ids[0] and zero_bucket[4] != ids[0]


# -- hostile inputs (issue #13) ----------------------------------------------------------------


@pytest.mark.parametrize("values", [pa.array([["a"], ["b"]]), pa.array([{"x": 1}, {"x": 2}])])
def test_categorical_refuses_a_nested_column_in_one_line(engine: Engine, values: pa.Array) -> None:
    enc = encoder(engine, "categorical")
    with pytest.raises(DataError, match=r"expected one value per row .* found type"):
        enc.fit(pa.chunked_array([values]))


def test_dictionary_and_null_typed_columns_encode_like_their_values(engine: Engine) -> None:
    cat = encoder(engine, "categorical")
    cat.fit(col(["a", "b", "a"]))
    dictionary = pa.chunked_array([pa.array(["a", "b", None]).dictionary_encode()])
    assert cat.transform(dictionary).tolist() == cat.transform(col(["a", "b", None])).tolist()
    num = encoder(engine, "numeric", transform="none")
    num.fit(col([1.0, 3.0]))
    assert num.transform(pa.chunked_array([pa.nulls(2)]))[:, 0].tolist() == [2.0, 2.0]
    seq = encoder(engine, "sequence", max_len=2)
    seq.fit(col(["a|b", "c"]))
    assert seq.transform(pa.chunked_array([pa.nulls(1)])).tolist() == [[0, 0]]


def test_sequence_refuses_lists_of_lists_and_an_empty_separator(engine: Engine) -> None:
    seq = encoder(engine, "sequence")
    with pytest.raises(DataError, match=r"expected a list of ids .* found type list<"):
        seq.fit(pa.chunked_array([pa.array([[[1]]])]))
    with pytest.raises(ValidationError, match="at least 1 character"):
        encoder(engine, "sequence", separator="")


def test_bucketize_boundaries_must_increase(engine: Engine) -> None:
    with pytest.raises(ValidationError, match=r"strictly increasing; found 3\.0 then 1\.0"):
        encoder(engine, "bucketize", boundaries=[3.0, 1.0])


@pytest.mark.parametrize(("kind", "state", "message"), [
    ("numeric", {"mean": "x", "std": 1.0, "fill": 0.0}, "'mean' must be a finite number"),
    ("numeric", {"mean": 0.0, "std": 0, "fill": 0.0}, "'std' must be a finite number > 0"),
    ("categorical", {"vocabulary": "abc"}, "'vocabulary' must be a list of strings"),
    ("categorical", {"vocabulary": [1, None]}, "'vocabulary' must be a list of strings"),
    ("bucketize", {"boundaries": [2.0, 1.0]}, "'boundaries' must be strictly increasing"),
])
def test_a_damaged_fitted_state_is_refused(engine: Engine, kind: str, state: dict[str, Any],
                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encoder(engine, kind).load_state(state)


# -- behaviour sequences (issue #17) ------------------------------------------------------------


def test_sequence_keeps_the_most_recent_elements_from_either_end(engine: Engine) -> None:
    lists = col([[1, 2, 3, 4], [5]], pa.list_(pa.int64()))
    first = encoder(engine, "sequence", max_len=2)
    first.fit(lists)
    last = encoder(engine, "sequence", max_len=2, keep="last")
    last.fit(lists)
    vocab = {v: i + 2 for i, v in enumerate(first.vocabulary)}
    assert first.transform(lists).tolist() == [[vocab["1"], vocab["2"]], [vocab["5"], 0]]
    assert last.transform(lists).tolist() == [[vocab["3"], vocab["4"]], [vocab["5"], 0]]
    assert first.lengths(lists).tolist() == [4, 1]


def test_sequence_limit_and_null_lists_are_errors_naming_the_row(engine: Engine) -> None:
    strict = encoder(engine, "sequence", max_len=2, limit=3, null="error")
    strict.fit(col([[1], [2]], pa.list_(pa.int64())))
    with pytest.raises(DataError, match=r"row 1: 4 elements, more than the limit of 3"):
        strict.transform(col([[1], [1, 2, 3, 4]], pa.list_(pa.int64())))
    with pytest.raises(DataError, match=r"row 2: expected a list \(an empty one for no "
                                        r"elements\), found null"):
        strict.transform(col([[1], [], None], pa.list_(pa.int64())))
    lenient = encoder(engine, "sequence", max_len=2)
    lenient.fit(col([[1]], pa.list_(pa.int64())))
    assert lenient.transform(col([None], pa.list_(pa.int64()))).tolist() == [[0, 0]]


def test_a_shared_sequence_uses_the_ids_of_the_feature_it_shares(engine: Engine) -> None:
    items = encoder(engine, "categorical")
    items.fit(col([10, 11, 12, 10]))
    history = encoder(engine, "sequence", max_len=3, share_with="item_id")
    assert history.shares_with == "item_id"
    history.share(items)
    history.fit(col([[99, 98]], pa.list_(pa.int64())))  # learns no vocabulary of its own
    out = history.transform(col([[12, 10, 77]], pa.list_(pa.int64())))
    own = items.transform(col([12, 10, 77]))
    assert out.tolist() == [(own + 1).tolist()]  # 77 is unknown to item_id: id 0 → 1 (OOV)
    assert out[0, 2] == 1 and history.cardinality == items.cardinality + 1
    assert history.state() == {"share_with": "item_id"}


def test_sequence_bucketize_buckets_each_element(engine: Engine) -> None:
    gaps = encoder(engine, "sequence_bucketize", max_len=4, boundaries=[1.0, 24.0])
    gaps.fit(col([[0.5]], pa.list_(pa.float64())))
    out = gaps.transform(col([[0.5, 1.0, 30.0, None], []], pa.list_(pa.float64())))
    assert out.tolist() == [[2, 3, 4, 1], [0, 0, 0, 0]]  # missing element → 1, padding 0
    assert gaps.cardinality == 5 and gaps.raw_datatype == "FP32"
    with pytest.raises(ValidationError, match="strictly increasing"):
        encoder(engine, "sequence_bucketize", boundaries=[2.0, 1.0])
