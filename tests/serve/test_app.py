"""The HTTP server, run for real by uvicorn on loopback and called over HTTP."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankengine.predict import score_table
from rankengine.registry.artifacts import load_version, path_of
from rankengine.serve import ModelHolder, ServeSettings, create_app

from .conftest import FEATURES, ServeProcess, Server, rank_payload, rows, wait_ready


def test_oip_v2_metadata_and_health(served: tuple) -> None:
    client, _, _ = served
    server = client.get("/v2").json()
    assert server["name"] == "rankengine" and "binary_tensor_data" in server["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    meta = client.get("/v2/models/demo").json()
    assert meta["versions"] == ["1"]
    assert {i["name"] for i in meta["inputs"]} >= {"user_id", "item_id", "position"}
    assert {o["name"] for o in meta["outputs"]} >= {"p_click", "p_pay", "score"}
    assert client.get("/v2/models/demo/versions/1/ready").json()["ready"] is True
    assert client.get("/v2/models/demo/versions/2").status_code == 404
    assert client.get("/v2/models/nope").status_code == 404


def test_infer_matches_offline_scoring(served: tuple) -> None:
    client, store, funnel = served
    data = rows(funnel, 8)
    hist = ["|".join(str(x) for x in h) for h in data["user_hist_categories"]]
    inputs = [{"name": f, "shape": [8], "datatype": "BYTES" if f in ("device",) else
               "FP32" if f == "item_price" else "INT64", "data": data[f]}
              for f in FEATURES if f != "user_hist_categories"]
    inputs.append({"name": "user_hist_categories", "shape": [8], "datatype": "BYTES",
                   "data": hist})
    response = client.post("/v2/models/demo/infer", json={"id": "r1", "inputs": inputs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1" and body["id"] == "r1"
    outputs = {o["name"]: np.array(o["data"]) for o in body["outputs"]}
    offline = score_table(load_version(store, "demo/1")[1],
                          pq.read_table(funnel / "test.parquet").slice(0, 8))
    for name in ("p_click", "p_order", "score"):
        np.testing.assert_allclose(outputs[name], offline[name], rtol=1e-5, atol=1e-7)
    only = client.post("/v2/models/demo/infer",
                       json={"inputs": inputs, "outputs": [{"name": "score"}]}).json()
    assert [o["name"] for o in only["outputs"]] == ["score"]
    unknown = client.post("/v2/models/demo/infer",
                          json={"inputs": inputs, "outputs": [{"name": "p_buy"}]})
    assert unknown.status_code == 400 and "unknown output 'p_buy'" in unknown.json()["error"]


def test_rank_orders_by_fused_score_and_broadcasts_the_context(served: tuple) -> None:
    client, store, funnel = served
    payload = rank_payload(funnel)
    body = client.post("/v1/rank", json=payload | {"top_k": 4}).json()
    ranked = body["ranked"]
    assert len(ranked) == 4 and body["version"] == 1
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    # Same numbers as scoring the request offline with the context repeated on every row.
    table = pq.read_table(funnel / "test.parquet").slice(0, 10)
    first = {c: [table.column(c)[0].as_py()] * 10 for c in ("user_id", "device",
                                                               "user_hist_categories")}
    import pyarrow as pa

    for c, v in first.items():
        table = table.set_column(table.column_names.index(c), c, pa.array(v))
    offline = score_table(load_version(store, "demo/1")[1], table)
    top = ranked[0]
    assert top["score"] == pytest.approx(float(offline["score"][top["index"]]), rel=1e-5)
    assert top["p"]["click"] == pytest.approx(float(offline["p_click"][top["index"]]), rel=1e-5)
    # Fusion weights per request: only clicks count now.
    clicks = client.post("/v1/rank", json=payload | {"fusion_weights": {"click": 1.0}}).json()
    assert [r["score"] for r in clicks["ranked"]] == pytest.approx(
        sorted((r["p"]["click"] for r in clicks["ranked"]), reverse=True), rel=1e-9)


@pytest.mark.parametrize("mutate,status,message", [
    (lambda p: "{not json", 400, "malformed JSON"),
    (lambda p: p | {"candidates": []}, 400, "non-empty list"),
    (lambda p: p | {"candidates": p["candidates"] * 6}, 400, "the limit is 50"),
    (lambda p: p | {"context": p["context"] | {"colour": "red"}}, 400,
     "context.colour: unknown feature"),
    (lambda p: p | {"context": {k: v for k, v in p["context"].items() if k != "device"}}, 400,
     "missing required feature 'device'"),
    (lambda p: p | {"candidates": [c | {"user_id": 1} for c in p["candidates"]]}, 400,
     "'user_id' is a context feature"),
    (lambda p: p | {"candidates": [c | {"item_price": "cheap"} for c in p["candidates"]]}, 400,
     "item_price"),
    (lambda p: p | {"fusion_weights": {"click": 1e9}}, 400, "fusion_weights.click"),
    (lambda p: p | {"fusion_weights": {"clik": 1}}, 400, "unknown task"),
    (lambda p: p | {"top_k": 0}, 400, "top_k"),
    (lambda p: p | {"top_k": True}, 400, "top_k"),
    (lambda p: p | {"format": "csv"}, 400, "'format' must be 'rows' or 'columns'"),
    (lambda p: p | {"candidates": [*p["candidates"][:2], {
        k: v for k, v in p["candidates"][2].items() if k != "item_price"}]}, 400,
     "candidates[2]: missing feature 'item_price'"),
    (lambda p: p | {"candidates": [*p["candidates"][:1],
                                   p["candidates"][1] | {"item_colour": "red"}]}, 400,
     "candidates[1].item_colour: unknown feature"),  # not 'candidates[0]: missing'
    (lambda p: p | {"candidates": [*p["candidates"][:3], 7]}, 400,
     "candidates[3]: expected an object"),
    (lambda p: p | {"candidates": [c | {"item_price": None} for c in p["candidates"]]}, 400,
     "candidates[0]: missing feature 'item_price'"),
])
def test_rank_rejects_bad_input_with_400_naming_the_field(served: tuple, mutate, status: int,
                                                          message: str) -> None:
    client, _, funnel = served
    payload = mutate(rank_payload(funnel))
    response = client.post("/v1/rank", content=payload if isinstance(payload, str) else
                           __import__("orjson").dumps(payload))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_infer_rejects_bad_tensors(served: tuple) -> None:
    client, _, _ = served
    bad_shape = {"inputs": [{"name": "user_id", "shape": [3], "datatype": "INT64",
                             "data": [1, 2]}]}
    response = client.post("/v2/models/demo/infer", json=bad_shape)
    assert response.status_code == 400 and "shape [3]" in response.json()["error"]
    bad_type = {"inputs": [{"name": "item_price", "shape": [1], "datatype": "FP32",
                            "data": ["x"]}]}
    response = client.post("/v2/models/demo/infer", json=bad_type)
    assert response.status_code == 400 and "item_price" in response.json()["error"]
    response = client.post("/v2/models/demo/infer", content=b'{"inputs": [{"name": "a", '
                           b'"shape": [1], "datatype": "FP32", "data": [NaN]}]}')
    assert response.status_code == 400
    assert client.post("/v2/models/other/infer", json=bad_shape).status_code == 404


def test_hot_reload_on_alias_move_and_failed_load_keeps_serving(served: tuple,
                                                                registry: tuple) -> None:
    client, store, funnel = served
    store.set_alias("demo", "champion", 2)
    deadline = time.time() + 20
    while client.get("/v2/models/demo").json()["versions"] != ["2"]:
        assert time.time() < deadline, "alias move was not picked up"
        time.sleep(0.1)
    # Version 3's weights are corrupted: loading it fails and version 2 keeps serving.
    artifact = path_of(store.get_version("demo", 3).artifact_uri or "")
    weights = artifact / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        store.set_alias("demo", "champion", 3)
        response = client.post("/v2/repository/models/demo/load")
        assert response.status_code == 409 and "still serving version 2" in response.text
        assert client.post("/v1/rank", json=rank_payload(funnel)).json()["version"] == 2
    finally:
        weights.write_bytes(original)
    response = client.post("/v2/repository/models/demo/load")
    assert response.status_code == 200 and response.json()["version"] == 3
    metrics = client.get("/metrics").text
    assert 'rankengine_model_version{model="demo"} 3.0' in metrics
    assert 'rankengine_requests_total{endpoint="rank",status="200"}' in metrics
    assert "rankengine_candidates_scored_total" in metrics
    for stage in ("parse", "context", "candidates", "model", "respond"):
        assert f'rankengine_rank_stage_seconds_count{{stage="{stage}"}} 1.0' in metrics


def test_a_new_fusion_weights_tag_is_served_without_reloading_the_model(served: tuple) -> None:
    client, store, funnel = served
    payload = rank_payload(funnel) | {"format": "columns"}
    before = client.post("/v1/rank", json=payload).json()
    assert before["score"] != pytest.approx(before["p"]["click"], rel=1e-9)

    def wait_for(check: Callable[[dict], bool], what: str) -> dict:
        deadline = time.time() + 20
        while not check(body := client.post("/v1/rank", json=payload).json()):
            assert time.time() < deadline, what
            time.sleep(0.05)
        return body

    try:
        # What `rankengine tune-fusion --write` does: only clicks count now.
        store.patch_version("demo", 1, tags={"fusion_weights": "click=1"})
        clicks = wait_for(lambda b: b["score"] == pytest.approx(b["p"]["click"], rel=1e-9),
                          "the fusion_weights tag was not picked up")
        assert clicks["version"] == 1
        for task, probabilities in clicks["p"].items():  # same model, new fusion
            assert probabilities == pytest.approx(
                [before["p"][task][before["index"].index(i)] for i in clicks["index"]], rel=1e-9)
        # An unusable tag is refused and the weights in effect stay.
        store.patch_version("demo", 1, tags={"fusion_weights": "colour=1"})
        response = client.post("/v2/repository/models/demo/load")
        assert response.status_code == 409 and "colour" in response.text
        assert client.post("/v1/rank", json=payload).json()["score"] == clicks["score"]
    finally:
        store.patch_version("demo", 1, tags={"fusion_weights": None})
    wait_for(lambda b: b["score"] == before["score"], "removing the tag did not restore the "
             "artifact's own weights")


def test_not_loaded_is_503(registry: tuple) -> None:
    store, _, _, _ = registry
    holder = ModelHolder(store, "demo@nonexistent")
    with Server(create_app(holder, ServeSettings(poll_interval=60))) as client:
        time.sleep(0.3)
        assert client.get("/v2/health/ready").status_code == 503
        response = client.get("/v2/models/demo")
        assert response.status_code == 503 and "not loaded yet" in response.json()["error"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False,
                                                                          allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)
feature_names = st.sampled_from([*FEATURES, "colour", "id"])


@st.composite
def rank_bodies(draw: st.DrawFn) -> object:
    candidate = st.dictionaries(feature_names, json_values, max_size=6)
    return draw(st.one_of(
        json_values,
        st.fixed_dictionaries({"context": st.dictionaries(feature_names, json_values,
                                                          max_size=4),
                               "candidates": st.lists(candidate, max_size=4)},
                              optional={"top_k": json_values, "format": json_values,
                                        "fusion_weights": json_values}),
    ))


@st.composite
def infer_bodies(draw: st.DrawFn) -> object:
    tensor = st.fixed_dictionaries({"name": feature_names | st.text(max_size=5)},
                                   optional={"shape": json_values,
                                             "datatype": st.sampled_from(["INT64", "FP32",
                                                                          "BYTES", "X"]),
                                             "data": st.lists(json_values, max_size=3)})
    return draw(json_values | st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=4)}))


def test_fuzzed_request_bodies_never_get_a_500(served: tuple) -> None:
    client, _, _ = served

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(rank=rank_bodies(), infer=infer_bodies())
    def check(rank: object, infer: object) -> None:
        for path, payload in (("/v1/rank", rank), ("/v2/models/demo/infer", infer)):
            response = client.post(path, content=orjson.dumps(payload))
            assert response.status_code in (200, 400), (path, payload, response.text)

    check()


@st.composite
def binary_infer_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Bodies of the binary tensor data extension: a JSON header whose inputs declare
    binary_data_size (right or wrong), then arbitrary bytes; the header length may lie."""
    tensor = st.fixed_dictionaries({
        "name": feature_names, "shape": st.lists(st.integers(-1, 4), min_size=1, max_size=2),
        "datatype": st.sampled_from(["INT64", "INT32", "FP32", "BYTES", "BOOL", "BF16", "X"]),
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 40)})})
    header = orjson.dumps({"inputs": draw(st.lists(tensor, max_size=4)),
                           "parameters": {"binary_data_output": draw(st.booleans())}})
    blob = draw(st.binary(max_size=64))
    length = draw(st.sampled_from([str(len(header)), str(len(header) + 3), "-1", "x"]))
    return header + blob, {"Inference-Header-Content-Length": length}


def test_binary_tensor_bodies_are_checked_field_by_field(served: tuple) -> None:
    client, _, _ = served

    def post(tensors: list[dict], blob: bytes, length: str | None = None) -> httpx.Response:
        header = orjson.dumps({"inputs": tensors})
        return client.post("/v2/models/demo/infer", content=header + blob, headers={
            "Inference-Header-Content-Length": length or str(len(header))})

    def int64(name: str, rows: int, size: int) -> dict:
        return {"name": name, "shape": [rows], "datatype": "INT64",
                "parameters": {"binary_data_size": size}}

    cases = [
        (post([int64("position", 1, 8)], b"\0" * 8, length="ten"), "Inference-Header"),
        (post([int64("position", 1, 8)], b"\0" * 8, length="9999"), "Inference-Header"),
        (post([int64("position", 1, 8)], b"\0" * 4), "runs past the 4 bytes"),
        (post([int64("position", 1, 7)], b"\0" * 7), "7 bytes of binary data; 1 INT64"),
        (post([int64("position", 1, 8)], b"\0" * 12), "4 bytes of binary data belong to no"),
        (post([{**int64("device", 1, 3), "datatype": "BYTES"}], b"\x05\0\0"), "4-byte length"),
        (post([{**int64("device", 1, 6), "datatype": "BYTES"}], b"\x05\0\0\0ab"),
         "runs past the end"),
        (post([{**int64("device", 1, 5), "datatype": "BYTES"}], b"\x01\0\0\0\xff"),
         "not UTF-8"),
        (post([{**int64("item_price", 1, 2), "datatype": "BF16"}], b"\0\0"), "BF16"),
        (post([{**int64("position", 1, 8), "datatype": "UINT64"}],
              np.array([2**63 + 5], "<u8").tobytes()), "does not fit in int64"),
        (post([{**int64("item_price", 1, 4), "datatype": "FP32"}],
              np.array([np.nan], "<f4").tobytes()), "not a finite number"),
    ]
    for response, message in cases:
        assert response.status_code == 400, response.text
        assert message in response.json()["error"], (message, response.text)


def test_fuzzed_binary_tensor_bodies_never_get_a_500(served: tuple) -> None:
    client, _, _ = served

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(request=binary_infer_requests())
    def check(request: tuple[bytes, dict[str, str]]) -> None:
        body, headers = request
        response = client.post("/v2/models/demo/infer", content=body, headers=headers)
        assert response.status_code in (200, 400), (body, headers, response.text)

    check()


def test_alias_swap_under_load_drops_nothing(served: tuple) -> None:
    """4 clients rank continuously; the alias moves mid-way; no request fails and every
    response sent after the first new-version response carries the new version."""
    client, store, funnel = served
    body = orjson.dumps(rank_payload(funnel))
    base = str(client.base_url)
    results: list[tuple[float, float, int, int]] = []
    lock = threading.Lock()
    stop = time.time() + 6.0

    def hammer() -> None:
        with httpx.Client(base_url=base, timeout=30) as http:
            while time.time() < stop:
                sent = time.time()
                response = http.post("/v1/rank", content=body)
                version = response.json()["version"] if response.status_code == 200 else -1
                with lock:
                    results.append((sent, time.time(), response.status_code, version))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    store.set_alias("demo", "champion", 2)
    for t in threads:
        t.join()
    assert results and all(status == 200 for _, _, status, _ in results)
    # Once any client has received an answer from version 2, later requests never see 1.
    switched = min(received for _, received, _, version in results if version == 2)
    assert all(version == 2 for sent, _, _, version in results if sent > switched)
    assert any(version == 1 for _, _, _, version in results)


def test_columnar_candidates_rank_like_rows(served: tuple) -> None:
    client, _, funnel = served
    payload = rank_payload(funnel)
    keys = list(payload["candidates"][0])
    columnar = payload | {"candidates": {k: [c[k] for c in payload["candidates"]]
                                         for k in keys}}
    by_rows = client.post("/v1/rank", json=payload).json()["ranked"]
    by_columns = client.post("/v1/rank", json=columnar).json()["ranked"]
    assert by_rows == by_columns
    # Ids are optional per candidate and come back with each ranked row.
    some_ids = payload | {"candidates": [c if i % 2 else {k: v for k, v in c.items()
                                                          if k != "id"}
                                         for i, c in enumerate(payload["candidates"])]}
    ranked = client.post("/v1/rank", json=some_ids).json()["ranked"]
    assert {r["index"]: r["id"] for r in ranked} == {
        i: (c["id"] if i % 2 else None) for i, c in enumerate(payload["candidates"])}
    # A columnar response holds the same ranking as parallel arrays.
    columns = client.post("/v1/rank", json=columnar | {"format": "columns",
                                                       "top_k": 7}).json()
    assert "ranked" not in columns and len(columns["index"]) == 7
    assert columns["index"] == [r["index"] for r in by_rows[:7]]
    assert columns["id"] == [r["id"] for r in by_rows[:7]]
    assert columns["score"] == [r["score"] for r in by_rows[:7]]
    assert columns["p"] == {t: [r["p"][t] for r in by_rows[:7]] for t in by_rows[0]["p"]}
    ragged = payload | {"candidates": {"item_id": [1, 2], "position": [1]}}
    response = client.post("/v1/rank", json=ragged)
    assert response.status_code == 400 and "same length" in response.json()["error"]


def test_openapi_documents_the_bodies_the_handlers_accept_and_return(served: tuple) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    client, _, funnel = served
    spec = client.get("/openapi.json").json()

    def validator(path: str, part: str) -> Any:
        operation = spec["paths"][path]["post"]
        where = operation["requestBody"] if part == "request" else \
            operation["responses"][part]
        return jsonschema.Draft202012Validator(where["content"]["application/json"]["schema"])

    payload = rank_payload(funnel)
    columnar = payload | {"format": "columns", "candidates": {
        k: [c[k] for c in payload["candidates"]] for k in payload["candidates"][0]}}
    for body in (payload, columnar):
        validator("/v1/rank", "request").validate(body)
        response = client.post("/v1/rank", json=body)
        validator("/v1/rank", "200").validate(response.json())
    bad = client.post("/v1/rank", json=payload | {"top_k": 0})
    validator("/v1/rank", "400").validate(bad.json())
    assert not validator("/v1/rank", "request").is_valid(payload | {"format": "csv"})
    tensors = {"inputs": [{"name": "position", "shape": [1], "datatype": "INT64",
                           "data": [1]}]}
    validator("/v2/models/{name}/infer", "request").validate(tensors)
    missing = client.post("/v2/models/demo/infer", json=tensors)
    validator("/v2/models/{name}/infer", "400").validate(missing.json())


def test_rank_reports_where_the_time_went_in_server_timing(served: tuple) -> None:
    client, _, funnel = served
    response = client.post("/v1/rank", json=rank_payload(funnel))
    stages = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
    assert list(stages) == ["parse", "context", "candidates", "model", "respond", "total"]
    durations = {k: float(v) for k, v in stages.items()}
    assert all(d > 0 for d in durations.values())
    assert sum(durations[k] for k in ("parse", "context", "candidates", "model", "respond")) \
        <= durations["total"]


def test_onnxruntime_backend_serves_the_same_scores(served: tuple) -> None:
    pytest.importorskip("onnxruntime")
    client, store, funnel = served
    payload = rank_payload(funnel, 30)
    holder = ModelHolder(store, "demo@champion", backend="onnxruntime")
    with Server(create_app(holder, ServeSettings(max_candidates=50))) as onnx_client:
        wait_ready(onnx_client)
        by_onnx = onnx_client.post("/v1/rank", json=payload).json()["ranked"]
        tensors = {"inputs": [{"name": "item_id", "shape": [1], "datatype": "INT64",
                               "data": [payload["candidates"][0]["item_id"]]}]}
        infer = onnx_client.post("/v2/models/demo/infer", json=tensors)
    by_torch = client.post("/v1/rank", json=payload).json()["ranked"]
    onnx_rows, torch_rows = ({r["index"]: r for r in ranked} for ranked in (by_onnx, by_torch))
    assert onnx_rows.keys() == torch_rows.keys() == set(range(30))
    for i, row in torch_rows.items():
        assert onnx_rows[i]["score"] == pytest.approx(row["score"], abs=1e-5)
        assert onnx_rows[i]["p"] == pytest.approx(row["p"], abs=1e-5)
    assert infer.status_code == 400 and "missing required feature" in infer.json()["error"]


def test_rankengine_serve_process_ranks_and_shuts_down_gracefully(registry: tuple) -> None:
    store, root, funnel, _ = registry
    store.set_alias("demo", "champion", 1)
    with ServeProcess(root, "--max-body-bytes", "4000", "--max-fusion-weight", "5") as serving:
        client = serving.client
        ranked = client.post("/v1/rank", json=rank_payload(funnel)).json()["ranked"]
        assert len(ranked) == 10 and ranked[0]["score"] >= ranked[-1]["score"]
        too_big = client.post("/v1/rank", json=rank_payload(funnel, 100))
        assert too_big.status_code == 413 and "the limit is 4,000" in too_big.text
        heavy = client.post("/v1/rank", json=rank_payload(funnel) | {
            "fusion_weights": {"click": 6}})
        assert heavy.status_code == 400 and "[0, 5.0]" in heavy.text
        output = serving.stop()
    server = serving.server
    # uvicorn finishes in-flight work, runs the shutdown hooks, then re-raises the signal.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "1 inference thread(s) each with" in output
    assert "Application shutdown complete" in output and "POST /v1/rank" not in output


def test_unknown_backend_is_refused(registry: tuple) -> None:
    with pytest.raises(Exception, match=r"unknown serving back end 'tensorrt'.*onnxruntime"):
        ModelHolder(registry[0], "demo@champion", backend="tensorrt")


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_standard_triton_http_client_works_unchanged(served: tuple, binary: bool) -> None:
    """tritonclient sends inputs and asks for outputs as binary data unless told otherwise."""
    httpclient = pytest.importorskip("tritonclient.http")
    client, store, funnel = served
    triton = httpclient.InferenceServerClient(url=str(client.base_url).removeprefix("http://"))
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("demo")
    assert triton.get_model_metadata("demo")["versions"] == ["1"]
    data = rows(funnel, 5)
    inputs = []
    for name in FEATURES:
        if name == "user_hist_categories":
            values = np.array(["|".join(map(str, h)) for h in data[name]], dtype=object)
            datatype = "BYTES"
        elif name == "device":
            values, datatype = np.array(data[name], dtype=object), "BYTES"
        elif name == "item_price":
            values, datatype = np.array(data[name], dtype=np.float32), "FP32"
        else:
            values, datatype = np.array(data[name], dtype=np.int64), "INT64"
        tensor = httpclient.InferInput(name, [5], datatype)
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("score", "p_pay")]
    result = triton.infer("demo", inputs, outputs=outputs)
    everything = triton.infer("demo", inputs)  # no outputs named: all of them, binary
    assert {o["name"] for o in everything.get_response()["outputs"]} >= {"p_click", "score"}
    np.testing.assert_array_equal(everything.as_numpy("score"), result.as_numpy("score"))
    offline = score_table(load_version(store, "demo/1")[1],
                          pq.read_table(funnel / "test.parquet").slice(0, 5))
    np.testing.assert_allclose(result.as_numpy("score"), offline["score"], rtol=1e-4)
    np.testing.assert_allclose(result.as_numpy("p_pay"), offline["p_pay"], rtol=1e-4)
    triton.close()
