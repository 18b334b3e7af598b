"""Hardening of the HTTP server: malformed bodies, oversized bodies, non-finite scores, numeric
flags and the admin endpoint's token. Real uvicorn servers on loopback, real sockets."""

from __future__ import annotations

import math
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankengine.cli import cli
from rankengine.errors import DataError
from rankengine.predict import score_table
from rankengine.registry.artifacts import load_version
from rankengine.serve import ModelHolder, ServeSettings, create_app
from rankengine.serve.app import REFUSED_BODY_GRACE
from rankengine.serve.http import NoDelayH11Protocol

from .conftest import FEATURES, ServeProcess, Server, rank_payload, rows, wait_ready


def counter(metrics: str, endpoint: str, status: int) -> float:
    """rankengine_requests_total for one endpoint and status (0 when absent)."""
    key = f'rankengine_requests_total{{endpoint="{endpoint}",status="{status}"}} '
    line = next((x for x in metrics.splitlines() if x.startswith(key)), None)
    return float(line.removeprefix(key)) if line else 0.0


def infer_inputs(funnel: Path, n: int = 4) -> list[dict[str, Any]]:
    data = rows(funnel, n)
    data["user_hist_categories"] = ["|".join(map(str, h)) for h in data["user_hist_categories"]]
    kinds = {"device": "BYTES", "user_hist_categories": "BYTES", "item_price": "FP64"}
    return [{"name": f, "shape": [n], "datatype": kinds.get(f, "INT64"), "data": data[f]}
            for f in FEATURES]


# -- malformed bodies: 4xx, and /metrics counts the status really sent -------------------------

@pytest.mark.parametrize("datatype", [["FP32"], {"type": "FP32"}, 32, True])
def test_a_malformed_datatype_is_a_400_naming_the_input(served: tuple, datatype: Any) -> None:
    client, _, funnel = served
    inputs = infer_inputs(funnel)
    inputs[5]["datatype"] = datatype  # item_price
    response = client.post("/v2/models/demo/infer", json={"inputs": inputs})
    assert response.status_code == 400, response.text
    assert "input 'item_price'" in response.json()["error"]
    assert "datatype" in response.json()["error"]
    metrics = client.get("/metrics").text
    assert counter(metrics, "infer", 400) == 1
    assert counter(metrics, "infer", 200) == 0


def test_metrics_count_the_status_actually_sent_even_when_a_handler_raises(
        registry: tuple) -> None:
    store = registry[0]
    store.set_alias("demo", "champion", 1)
    app = create_app(ModelHolder(store, "demo@champion"), ServeSettings(max_body_bytes=100))

    @app.get("/v2/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with Server(app) as client:
        wait_ready(client)
        # uvicorn closes a connection whose application raised: do not reuse it.
        response = client.get("/v2/boom", headers={"Connection": "close"})
        assert response.status_code == 500
        assert response.json() == {"error": "internal server error (RuntimeError)"}
        assert client.post("/v1/rank", content=b"x" * 101).status_code == 413
        metrics = client.get("/metrics").text
    assert counter(metrics, "/v2/boom", 500) == 1
    assert counter(metrics, "/v2/boom", 200) == 0
    assert counter(metrics, "rank", 413) == 1
    assert 'rankengine_errors_total{endpoint="rank",kind="413"} 1.0' in metrics


# Wrong JSON types at every level of otherwise valid bodies.
wrong = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
    | st.sampled_from(["FP32", "INT64", "BYTES", "rows", "columns", "click", "item_price"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "shape", "datatype", "data", "parameters", "binary_data_size",
                         "inputs", "outputs", "id", "click", "item_price", "x"]) | st.text(
            max_size=4), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` with one spot somewhere inside it replaced by a wrong value, dropped, or given
    an extra key (descending three times in four at each level)."""
    if isinstance(value, dict) and value and draw(st.integers(0, 3)):
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["descend", "descend", "descend", "drop", "add"]))
        if action == "drop":
            return {k: v for k, v in value.items() if k != key}
        if action == "add":
            return value | {draw(st.text(max_size=5)): draw(wrong)}
        return value | {key: draw(mutated(value[key]))}
    if isinstance(value, list) and value and draw(st.integers(0, 3)):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], draw(mutated(value[i])), *value[i + 1:]]
    return draw(wrong)


def test_fuzzed_malformed_bodies_never_get_a_5xx(served: tuple) -> None:
    client, _, funnel = served
    payload = rank_payload(funnel, 4)
    rank_bodies = [
        payload | {"top_k": 2, "format": "rows", "fusion_weights": {"click": 1.0, "pay": 2.0}},
        payload | {"format": "columns", "candidates": {
            k: [c[k] for c in payload["candidates"]] for k in payload["candidates"][0]}},
    ]
    infer_body = {"id": "r1", "inputs": infer_inputs(funnel),
                  "outputs": [{"name": "score", "parameters": {"binary_data": False}}],
                  "parameters": {"binary_data_output": False}}
    binary = infer_inputs(funnel)
    blob = np.asarray(binary[0]["data"], "<i8").tobytes()
    binary[0] = {"name": "user_id", "shape": [4], "datatype": "INT64",
                 "parameters": {"binary_data_size": len(blob)}}
    binary_body = {"inputs": binary}
    assert client.post("/v1/rank", json=rank_bodies[0]).status_code == 200
    assert client.post("/v2/models/demo/infer", json=infer_body).status_code == 200

    @settings(max_examples=250, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data(), which=st.integers(0, 3), times=st.integers(1, 3))
    def check(data: st.DataObject, which: int, times: int) -> None:
        body: Any = [*rank_bodies, infer_body, binary_body][which]
        for _ in range(times):
            body = data.draw(mutated(body))
        if which < 2:
            response = client.post("/v1/rank", content=orjson.dumps(body))
        else:
            header = orjson.dumps(body)
            response = client.post(
                "/v2/models/demo/infer", content=header + (blob if which == 3 else b""),
                headers={"Inference-Header-Content-Length": str(len(header))}
                if which == 3 else {})
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str), response.text

    check()


# -- body size: Content-Length first, and stop reading at the limit ---------------------------

class CountingApp:
    """ASGI wrapper: how many request body bytes the application pulled from the server."""

    def __init__(self, app: Any) -> None:
        self.app, self.received = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message
        await self.app(scope, counted, send)


def raw_post(port: int, path: str, headers: dict[str, str], body: Iterator[bytes]
             ) -> tuple[int, bytes, int]:
    """POST over a plain socket, sending ``body`` only while the server has not answered.
    Returns (status, response body, request body bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(head.encode())
    sent = 0
    pending = b""
    try:
        while True:
            readable, writable, _ = select.select([sock], [sock], [], 20)
            if readable:
                break  # the server has answered (or closed): stop sending
            assert writable, "the server neither read nor answered"
            if not pending:
                pending = next(body, b"")
                if not pending:
                    break
            try:
                n = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += n
            pending = pending[n:]
        response = b""
        while b"\r\n\r\n" not in response or len(response.partition(b"\r\n\r\n")[2]) < int(
                dict(line.split(b": ", 1) for line in response.partition(b"\r\n\r\n")[0]
                     .split(b"\r\n")[1:]).get(b"content-length", b"0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    finally:
        sock.close()
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2], sent


def chunked(total: int, size: int = 64 << 10) -> Iterator[bytes]:
    piece = b"x" * size
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


@pytest.fixture
def limited(registry: tuple) -> Iterator[tuple[httpx.Client, CountingApp]]:
    store = registry[0]
    store.set_alias("demo", "champion", 1)
    app = CountingApp(create_app(ModelHolder(store, "demo@champion"),
                                 ServeSettings(max_body_bytes=4000)))
    with Server(app) as client:
        wait_ready(client)
        yield client, app


def test_an_oversized_content_length_is_refused_before_reading_the_body(limited: tuple) -> None:
    client, app = limited
    port = client.base_url.port
    for path in ("/v1/rank", "/v2/models/demo/infer"):
        # Only the headers are sent: the answer cannot wait for the 1 GB they announce.
        status, body, _ = raw_post(port, path, {"Content-Length": str(10**9)}, iter(()))
        assert status == 413, body
        assert orjson.loads(body)["error"] == ("request body is 1,000,000,000 bytes; the limit "
                                               "is 4,000 (--max-body-bytes)")
    assert app.received == 0
    exactly = client.post("/v1/rank", content=b" " * 3990 + b'{"a": 1}')
    assert exactly.status_code == 400 and "malformed" not in exactly.text  # read and parsed


def test_a_chunked_body_is_read_only_up_to_the_limit(limited: tuple) -> None:
    client, app = limited
    total = 64 << 20  # no Content-Length: the server must count as it reads
    status, response, sent = raw_post(client.base_url.port, "/v1/rank",
                                      {"Transfer-Encoding": "chunked"}, chunked(total))
    assert status == 413, response
    assert orjson.loads(response)["error"] == ("request body is over the limit of 4,000 bytes "
                                               "(--max-body-bytes)")
    assert sent < total // 4, f"the client got to send {sent:,} of {total:,} bytes"
    # The limit, the 1 MiB read and dropped so that ordinary clients see the 413, and what
    # uvicorn had buffered (one socket read or two): 2 MiB of the 64 sent at most.
    assert app.received < 4000 + 2 * REFUSED_BODY_GRACE, \
        f"the application read {app.received:,} bytes"


def test_a_body_just_over_the_limit_gets_a_clean_413_on_a_kept_connection(
        limited: tuple) -> None:
    client, _ = limited  # httpx sends the whole body before it reads the answer
    for body in (b"x" * 4001, b"x" * (4000 + REFUSED_BODY_GRACE),
                 iter([b"x" * 3000, b"x" * 3000])):  # the last one chunked
        response = client.post("/v1/rank", content=body)
        assert response.status_code == 413, response.text
        assert "the limit" in response.json()["error"]
        assert response.headers.get("connection") != "close"
    assert client.post("/v1/rank", content=b"{}").status_code == 400  # same connection


# -- non-finite scores and inputs ---------------------------------------------------------------

EXTREME = 1e30  # finite, and within float32 once standardised; the network overflows


def extreme_payload(funnel: Path) -> dict:
    payload = rank_payload(funnel, 6)
    payload["candidates"][3]["item_price"] = EXTREME
    return payload


@pytest.fixture
def plain(registry: tuple, plain_model: str) -> Iterator[httpx.Client]:
    with Server(create_app(ModelHolder(registry[0], plain_model))) as client:
        wait_ready(client)
        yield client


def test_extreme_finite_inputs_are_a_422_naming_the_candidate(plain: httpx.Client,
                                                              funnel_dir: Path) -> None:
    client = plain
    payload = extreme_payload(funnel_dir)
    assert client.post("/v1/rank", json=rank_payload(funnel_dir, 6)).status_code == 200
    for body in (payload, payload | {"format": "columns"}):
        response = client.post("/v1/rank", json=body)
        assert response.status_code == 422, response.text
        message = response.json()["error"]
        assert message.startswith(f"candidates[3] (id '{payload['candidates'][3]['id']}'): ")
        assert "not a finite number" in message and "p_dwell" in message
    no_ids = payload | {"candidates": [{k: v for k, v in c.items() if k != "id"}
                                       for c in payload["candidates"]]}
    response = client.post("/v1/rank", json=no_ids)
    assert response.status_code == 422 and response.json()["error"].startswith(
        "candidates[3]: ")
    inputs = infer_inputs(funnel_dir)
    inputs[5]["data"][2] = EXTREME
    response = client.post("/v2/models/plain/infer", json={"inputs": inputs})
    assert response.status_code == 422 and response.json()["error"].startswith("row 2: ")
    metrics = client.get("/metrics").text
    assert counter(metrics, "rank", 422) == 3 and counter(metrics, "infer", 422) == 1
    for path in ("/v1/rank", "/v2/models/{name}/infer"):
        documented = client.get("/openapi.json").json()["paths"][path]["post"]["responses"]
        assert {"400", "413", "422"} <= set(documented)


@pytest.mark.parametrize("datatype,value", [("FP64", math.inf), ("FP32", -math.inf),
                                            ("FP16", math.nan), ("FP64", math.nan)])
def test_non_finite_binary_inputs_are_refused_naming_the_input(served: tuple, datatype: str,
                                                              value: float) -> None:
    client, _, funnel = served
    inputs = infer_inputs(funnel)
    values = np.asarray(inputs[5]["data"], dtype=np.float64)
    values[1] = value
    blob = values.astype({"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}[datatype]).tobytes()
    inputs[5] = {"name": "item_price", "shape": [4], "datatype": datatype,
                 "parameters": {"binary_data_size": len(blob)}}
    header = orjson.dumps({"inputs": inputs})
    response = client.post("/v2/models/demo/infer", content=header + blob,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("item_price[1]: ")
    assert "not a finite number" in response.json()["error"]


def test_onnxruntime_backend_refuses_non_finite_scores_too(registry: tuple,
                                                           plain_model: str) -> None:
    pytest.importorskip("onnxruntime")
    store, _, funnel, _ = registry
    holder = ModelHolder(store, plain_model, backend="onnxruntime")
    with Server(create_app(holder)) as client:
        wait_ready(client)
        assert client.post("/v1/rank", json=rank_payload(funnel, 6)).status_code == 200
        response = client.post("/v1/rank", json=extreme_payload(funnel))
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("candidates[3] (id ")


def test_batch_scoring_names_the_row_whose_score_is_not_finite(registry: tuple,
                                                               plain_model: str) -> None:
    store, _, funnel, _ = registry
    loaded = load_version(store, f"{plain_model}/1")[1]
    table = pq.read_table(funnel / "test.parquet").slice(0, 20)
    score_table(loaded, table)  # fine as it is
    prices = table.column("item_price").to_pylist()
    prices[13] = EXTREME
    table = table.set_column(table.column_names.index("item_price"), "item_price",
                             pa.array(prices))
    item = table.column("item_id")[13].as_py()
    with pytest.raises(DataError, match=rf"^scores.parquet: row 13 \(item_id {item}\): its "
                                        r"p_dwell is nan, not a finite number"):
        score_table(loaded, table, where="scores.parquet")


# -- numeric serving flags ----------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [
    ("--threads", "0"), ("--threads", "100000"), ("--workers", "0"), ("--workers", "100000"),
    ("--port", "99999"), ("--port", "-1"), ("--max-candidates", "0"),
    ("--max-candidates", "-5"), ("--max-body-bytes", "-1"), ("--max-fusion-weight", "nan"),
    ("--max-fusion-weight", "inf"), ("--max-fusion-weight", "-1"), ("--poll-interval", "0"),
    ("--poll-interval", "nan"), ("--poll-interval", "-3"),
])
def test_out_of_range_serving_flags_are_one_line_usage_errors(tmp_path: Path, flag: str,
                                                              value: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "demo", "--registry",
                                      f"sqlite:///{tmp_path / 'none.db'}", flag, value])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith(f"Error: Invalid value for '{flag}': ")
    assert "Traceback" not in result.output


# -- the admin endpoint's token -----------------------------------------------------------------

def test_a_token_guards_the_admin_endpoint_even_on_loopback(registry: tuple) -> None:
    store, _, funnel, _ = registry
    store.set_alias("demo", "champion", 1)
    holder = ModelHolder(store, "demo@champion")
    with Server(create_app(holder, ServeSettings(admin_token="s3cret"))) as client:
        wait_ready(client)
        load = "/v2/repository/models/demo/load"
        missing = client.post(load)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in missing.json()["error"]
        for header in (b"Bearer wrong", b"Bearer s3cret2", b"Basic s3cret", b"Bearer \xe9",
                       b"bearer"):
            response = client.post(load, headers={"Authorization": header})
            assert response.status_code == (401 if header in (b"Basic s3cret", b"bearer")
                                            else 403), (header, response.text)
        assert client.post(load, headers={"Authorization": "Bearer s3cret"}).json() == {
            "name": "demo", "version": 1}
        # Only the admin endpoint: ranking needs no token.
        assert client.post("/v1/rank", json=rank_payload(funnel)).status_code == 200
        metrics = client.get("/metrics").text
    assert counter(metrics, "load", 401) == 3 and counter(metrics, "load", 403) == 3


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com"])
def test_a_non_loopback_host_without_a_token_is_refused(tmp_path: Path, host: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "demo", "--registry",
                                      f"sqlite:///{tmp_path / 'none.db'}", "--host", host],
                                env={"RANKENGINE_ADMIN_TOKEN": None})
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert "--admin-token" in result.output and "RANKENGINE_ADMIN_TOKEN" in result.output


def test_serving_on_all_interfaces_needs_the_token_and_warns(registry: tuple) -> None:
    store, root, funnel, _ = registry
    store.set_alias("demo", "champion", 1)
    with ServeProcess(root, "--host", "0.0.0.0",
                      env=os.environ | {"RANKENGINE_ADMIN_TOKEN": "from-the-env"}) as serving:
        client = serving.client
        load = "/v2/repository/models/demo/load"
        assert client.post(load).status_code == 401
        assert client.post(load, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert client.post(load, headers={
            "Authorization": "Bearer from-the-env"}).status_code == 200
        assert client.post("/v1/rank", json=rank_payload(funnel)).status_code == 200
        output = serving.stop()
    assert "from-the-env" not in output
    warning = [line for line in output.splitlines() if "unauthenticated" in line]
    assert len(warning) == 1 and "0.0.0.0" in warning[0], output


# -- wrong JSON types and values the declared datatype cannot hold: 400 naming the field -------

def _rank_mutation(name: str, payload: dict) -> dict:
    if name == "a boolean price":
        payload["candidates"][1]["item_price"] = True
    elif name == "booleans for a numeric feature":
        for c in payload["candidates"]:
            c["item_price"] = False
    elif name == "a null context feature":
        payload["context"]["device"] = None
    elif name == "one candidate with an unknown feature":
        payload["candidates"][2]["zzz"] = 1
    elif name == "an unknown context feature":
        payload["context"]["zzz"] = 1
    elif name == "a boolean id":
        payload["candidates"][0]["id"] = True
    return payload


@pytest.mark.parametrize(("mutation", "expected"), [
    ("a boolean price", "candidates.item_price[1]: expected a number, found true"),
    ("booleans for a numeric feature", "candidates.item_price: expected numbers"),
    ("a null context feature", "context.device: expected a value, found null"),
    ("one candidate with an unknown feature", "candidates[2].zzz: unknown feature"),
    ("an unknown context feature", "context.zzz: unknown feature"),
    ("a boolean id", "candidates[0].id: expected a string or a number, found bool"),
])
def test_rank_refuses_wrong_types_naming_the_field(served: tuple, mutation: str,
                                                    expected: str) -> None:
    client, _, funnel = served
    response = client.post("/v1/rank", json=_rank_mutation(mutation, rank_payload(funnel, 4)))
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(expected), response.text


@pytest.mark.parametrize(("index", "datatype", "data", "expected"), [
    (3, "INT8", [300] * 4, "item_id[0]: 300 does not fit in INT8 (-128..127)"),
    (3, "UINT64", [-1] * 4, "item_id[0]: -1 does not fit in UINT64"),
    (3, "UINT64", [2**64 - 1] * 4, "item_id[0]: 18446744073709551615 does not fit in UINT64"),
    (5, "INT32", [16.5] * 4, "item_price[0]: 16.5 is not a whole number"),
    (5, "FP16", [1e10] * 4, "item_price[0]: 10000000000.0 does not fit in FP16"),
    (5, "FP32", [1e300] * 4, "item_price[0]: 1e+300 does not fit in FP32"),
    (5, "FP64", [1.5, True, 2.5, 3.5], "item_price[1]: expected a number, found true"),
])
def test_infer_refuses_values_the_datatype_cannot_hold(served: tuple, index: int, datatype: str,
                                                       data: list, expected: str) -> None:
    """pyarrow used to truncate 16.5 to 16 for an integer datatype and wrap nothing else: the
    request scored other numbers than it sent."""
    client, _, funnel = served
    inputs = infer_inputs(funnel)
    inputs[index].update(datatype=datatype, data=data)
    response = client.post("/v2/models/demo/infer", json={"inputs": inputs})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(expected), response.text


@pytest.mark.parametrize(("change", "expected"), [
    ({"inputs": "twice"}, "inputs[7]: input 'user_id' is given twice"),
    ({"parameters": [1]}, "'parameters' must be an object"),
    ({"outputs": [{"name": "score", "parameters": [1]}]},
     "outputs[0].parameters must be an object"),
])
def test_infer_refuses_malformed_envelopes(served: tuple, change: dict, expected: str) -> None:
    client, _, funnel = served
    inputs = infer_inputs(funnel)
    payload: dict[str, Any] = {"inputs": [*inputs, dict(inputs[0])]
                               if change.get("inputs") == "twice" else inputs}
    payload.update({k: v for k, v in change.items() if k != "inputs"})
    response = client.post("/v2/models/demo/infer", json=payload)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == expected


def test_binary_booleans_for_a_numeric_feature_are_refused(served: tuple) -> None:
    client, _, funnel = served
    inputs = infer_inputs(funnel)
    flags = np.array([True, False, True, True]).tobytes()
    inputs[5] = {"name": "item_price", "shape": [4], "datatype": "BOOL",
                 "parameters": {"binary_data_size": len(flags)}}
    header = orjson.dumps({"inputs": inputs})
    response = client.post("/v2/models/demo/infer", content=header + flags,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400, response.text
    assert "item_price: expected numbers" in response.json()["error"]


@pytest.mark.parametrize("value", ["1_0", "+10", "1 0", "²"])
def test_the_inference_header_length_is_ascii_digits_only(served: tuple, value: str) -> None:
    """int() took '1_0' as 10: a lying header was read as a different split of the body."""
    client = served[0]
    response = client.post("/v2/models/demo/infer", content=b'{"inputs": []}',
                           headers={"Inference-Header-Content-Length": value.encode("latin-1")})
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("Inference-Header-Content-Length is")


def test_unknown_paths_and_methods_get_the_json_error_shape(served: tuple) -> None:
    client = served[0]
    response = client.get("/v2/models/../nowhere")
    assert response.status_code == 404
    assert response.json() == {"error": "no endpoint GET '/v2/nowhere'; see /docs"}
    response = client.get("/v1/rank")
    assert response.status_code == 405
    assert response.json() == {"error": "GET '/v1/rank': method not allowed"}
    long_name = "x" * 10_000
    response = client.post(f"/v2/repository/models/{long_name}/load")
    assert response.status_code == 404
    assert len(response.json()["error"]) < 200  # a client's string is not echoed in full


# -- slow clients: headers and bodies have deadlines (rankengine serve's HTTP protocol) --------

class QuickDeadlines(NoDelayH11Protocol):
    header_timeout = 0.5
    body_timeout = 0.5


def _exchange(port: int, parts: list[bytes], pause: float = 0.0) -> tuple[bytes, float]:
    """Send ``parts`` with ``pause`` between them; everything the server answers until it
    closes, and how long that took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for part in parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(pause)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


def test_slow_or_silent_clients_are_answered_408_and_closed(registry: tuple) -> None:
    """uvicorn waited forever for a request's headers: a client that connected and sent
    nothing, or a byte a second (slowloris), held its connection until it left."""
    store = registry[0]
    store.set_alias("demo", "champion", 1)
    app = create_app(ModelHolder(store, "demo@champion"))
    with Server(app, http=QuickDeadlines) as client:
        wait_ready(client)
        port = int(str(client.base_url).rsplit(":", 1)[1])
        silent, took = _exchange(port, [])
        assert silent.startswith(b"HTTP/1.1 408"), silent
        assert b'{"error":"request headers not complete within 0.5 s' in silent
        assert took < 5
        trickled, _ = _exchange(port, [bytes([b]) for b in b"GET /v2 HTTP/1.1\r\nHost: x\r\n"],
                                pause=0.1)
        assert trickled.startswith(b"HTTP/1.1 408"), trickled
        stalled, _ = _exchange(port, [b"POST /v1/rank HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: 100\r\n\r\n{\"context\""])
        assert stalled.startswith(b"HTTP/1.1 408"), stalled
        assert b"request body stalled for 0.5 s" in stalled
        garbage, _ = _exchange(port, [b"POST /v1/rank HTTP/1.1\r\nHost: x\r\n"
                                      b"Content-Length: -1\r\n\r\n"])
        assert garbage.startswith(b"HTTP/1.1 400"), garbage
        assert b'{"error":"invalid HTTP request' in garbage
        # a request that keeps its connection alive is not cut by the header deadline
        with httpx.Client(base_url=str(client.base_url)) as kept:
            for _ in range(3):
                assert kept.get("/v2/health/live").status_code == 200
                time.sleep(0.3)
