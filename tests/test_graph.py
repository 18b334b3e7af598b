from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankengine.config import TaskSpec
from rankengine.errors import DataError, GraphError
from rankengine.graph import TaskGraph


def spec(**kw: object) -> TaskSpec:
    return TaskSpec.model_validate({"label": kw.pop("label", "y"), **kw})


FUNNEL = {
    "click": spec(label="click"),
    "favorite": spec(label="fav", after="click"),
    "order": spec(label="order", after="click", via="favorite"),
    "pay": spec(label="pay", after="order"),
    "dwell": spec(label="dwell", type="regression", after="click"),
}


def test_topological_order_and_indices() -> None:
    graph = TaskGraph(dict(reversed(list(FUNNEL.items()))))
    names = graph.names
    assert names.index("click") < names.index("favorite") < names.index("order")
    assert names.index("order") < names.index("pay")
    assert graph.parent_index[graph.index("pay")] == graph.index("order")
    assert graph.via_index[graph.index("order")] == graph.index("favorite")
    assert graph.regression_index == [graph.index("dwell")]
    assert graph.ancestors("pay") == ["order", "click"]
    assert sorted(graph.children("click")) == ["dwell", "favorite", "order"]


def test_cycle_is_reported_with_its_path() -> None:
    with pytest.raises(GraphError, match=r"cycle: (a → b → c → a|b → c → a → b|c → a → b → c)"):
        TaskGraph({"a": spec(after="c"), "b": spec(after="a"), "c": spec(after="b")})


def test_via_cycle_is_a_cycle() -> None:
    with pytest.raises(GraphError, match="cycle"):
        TaskGraph({"click": spec(), "x": spec(after="click", via="y"),
                   "y": spec(after="click", via="x")})


def test_missing_parent_suggests_a_name() -> None:
    with pytest.raises(GraphError, match=r"after = 'clik' names no task.*did you mean 'click'"):
        TaskGraph({"click": spec(), "buy": spec(after="clik")})


def test_via_must_be_a_sibling() -> None:
    with pytest.raises(GraphError, match=r"via = 'pay' must name a sibling.*after = 'order'"):
        TaskGraph({"click": spec(), "order": spec(after="click"),
                   "pay": spec(after="order"), "fav": spec(after="click", via="pay")})


def test_regression_cannot_be_a_parent() -> None:
    with pytest.raises(GraphError, match="regression task; only binary"):
        TaskGraph({"dwell": spec(type="regression"), "x": spec(after="dwell")})


def test_self_reference_and_empty_graph() -> None:
    with pytest.raises(GraphError, match="names the task itself"):
        TaskGraph({"a": spec(after="a")})
    with pytest.raises(GraphError, match="empty"):
        TaskGraph({})


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_dags_validate_and_back_edges_fail(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 8))
    parents = [None] + [data.draw(st.one_of(st.none(), st.integers(0, i - 1)))
                        for i in range(1, n)]
    specs = {f"t{i}": spec(after=None if p is None else f"t{p}") for i, p in enumerate(parents)}
    graph = TaskGraph(specs)
    for i, p in enumerate(graph.parent_index):
        assert p < i  # parents come first
    # Point an ancestor at its descendant: always a cycle.
    child = data.draw(st.sampled_from([i for i, p in enumerate(parents) if p is not None] or [0]))
    if parents[child] is not None:
        root = child
        while parents[root] is not None:
            root = parents[root]
        specs[f"t{root}"] = spec(after=f"t{child}")
        with pytest.raises(GraphError, match="cycle"):
            TaskGraph(specs)


def labels(**cols: list[float]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float64) for k, v in cols.items()}


CHAIN = {"click": spec(), "order": spec(after="click"), "pay": spec(after="order")}


def test_entire_space_labels_when_consistent() -> None:
    graph = TaskGraph(CHAIN)
    y, keep, report = graph.derive_labels(
        labels(click=[1, 1, 0], order=[1, 0, 0], pay=[1, 0, 0]), "error")
    assert keep is None and report.inconsistent == {}
    np.testing.assert_array_equal(y, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_inconsistent_rows_error_names_rows_and_fix() -> None:
    graph = TaskGraph(CHAIN)
    raw = labels(click=[0, 1, 0, 0], order=[1, 1, 0, 1], pay=[0, 1, 1, 0])
    with pytest.raises(DataError, match=r"2 row\(s\) have task 'order' set while its parent "
                                        r"'click' is 0 \(first rows: 0, 3\)"):
        graph.derive_labels(raw, "error", where="train.parquet")


def test_fix_clears_children_and_counts() -> None:
    graph = TaskGraph(CHAIN)
    raw = labels(click=[0, 1, 0, 0], order=[1, 1, 0, 1], pay=[0, 1, 1, 0])
    y, keep, report = graph.derive_labels(raw, "fix")
    assert keep is None
    np.testing.assert_array_equal(y[:, 1], [0, 1, 0, 0])
    np.testing.assert_array_equal(y[:, 2], [0, 1, 0, 0])
    assert report.inconsistent == {"order": 2, "pay": 1}


def test_drop_removes_inconsistent_rows() -> None:
    graph = TaskGraph(CHAIN)
    raw = labels(click=[0, 1, 0, 0, 1], order=[1, 1, 0, 1, 0], pay=[0, 1, 1, 0, 0])
    _, keep, report = graph.derive_labels(raw, "drop")
    assert keep is not None
    assert keep.tolist() == [False, True, False, False, True]
    assert report.rows_dropped == 3


def test_regression_values_masked_to_parent_space() -> None:
    graph = TaskGraph({"click": spec(), "dwell": spec(type="regression", after="click")})
    y, _, report = graph.derive_labels(labels(click=[1, 0, 0], dwell=[12.0, 0.0, 3.0]), "fix")
    np.testing.assert_array_equal(y[:, 1], [12.0, 0.0, 0.0])
    assert report.inconsistent == {"dwell": 1}


def test_non_binary_label_and_missing_value_are_errors() -> None:
    graph = TaskGraph({"click": spec(label="c"), "dwell": spec(type="regression", after="click")})
    with pytest.raises(DataError, match=r"must be 0 or 1; row 1 holds 2.0"):
        graph.derive_labels(labels(click=[1, 2], dwell=[0, 0]), "error")
    with pytest.raises(DataError, match="missing at row 0"):
        graph.derive_labels(labels(click=[1, 0], dwell=[float("nan"), 0]), "error")


def test_a_regression_task_takes_its_value_column_not_a_value_match() -> None:
    specs = {"click": TaskSpec(label="click"),
             "dwell": TaskSpec.model_validate({"label": {"column": "dwell", "equals": [1]},
                                               "type": "regression", "after": "click"})}
    with pytest.raises(GraphError, match=r"task 'dwell': a regression task takes exactly one "
                                         r"label column \(its value\)"):
        TaskGraph(specs)
