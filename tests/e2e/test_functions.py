"""Lambda handlers behind Function URLs, the REST emulation and the Lambda API, for real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from sluicegate.config import FunctionSettings, Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.handlers import HandlerLoadError, load_handler
from sluicegate.providers.local import LocalProvider
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop, wait_until

CODEGEN = Path(__file__).parents[2] / "examples" / "function_url_codegen" / "app.py"
HANDLERS = """
import json, time
closed = []
def pieces(event, context):
    def body():
        try:
            for i in range(1000):
                time.sleep(0.01)
                yield f"piece {i}\\n"
        finally:
            closed.append(event.get("rawPath") or event["path"])
    return {"statusCode": 201, "headers": {"X-Test": "yes"}, "cookies": ["a=1"], "body": body()}
def echo(event, context):
    left = context.get_remaining_time_in_millis()
    out = {"event": event, "left": left, "arn": context.invoked_function_arn}
    return {"statusCode": 200, "body": json.dumps(out)}
def plain(event, context):
    return {"answer": 42}
def huge(event, context):
    return {"statusCode": 200, "body": "x" * (7 * 1024 * 1024)}
def broken(event, context):
    raise ValueError("no good")
async def agen(event, context):
    async def body():
        for i in range(3):
            yield b"async " + str(i).encode()
    return {"statusCode": 200, "body": body()}
def midway(event, context):
    def body():
        yield "first\\n"
        raise RuntimeError("midway")
    return {"statusCode": 200, "body": body()}
def slow(event, context):
    time.sleep(1.5)
    return {"statusCode": 200, "body": "late"}
"""


@pytest.fixture(scope="module")
def fn_server(local: LocalProvider, tmp_path_factory: Any) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("fns") / "fns.py"
    path.write_text(HANDLERS)
    stream = "RESPONSE_STREAM"
    functions = {
        "codegen": FunctionSettings(handler=f"{CODEGEN}:lambda_handler", invoke_mode=stream),
        "pieces": FunctionSettings(handler=f"{path}:pieces", invoke_mode=stream),
        "agen": FunctionSettings(handler=f"{path}:agen", invoke_mode=stream),
        "cut": FunctionSettings(handler=f"{path}:pieces", invoke_mode=stream, timeout_seconds=0.5),
        **{n: FunctionSettings(handler=f"{path}:{n}") for n in ("echo", "plain", "huge", "broken")},
        "slow": FunctionSettings(handler=f"{path}:slow", timeout_seconds=1.0),
        "midway": FunctionSettings(handler=f"{path}:midway", invoke_mode=stream),
        "slowrest": FunctionSettings(handler=f"{path}:slow"),
    }
    settings = Settings(
        routes=[Route(match="*", provider="local")],
        functions=functions,
        rest_timeout_seconds=0.5,
        rest_stream=["pieces"],
    )
    server = serve(Gateway(settings, {"local": local, "scripted": ScriptedProvider()}))
    yield server
    stop(server)


def test_the_seed_handler_streams_from_the_model(fn_server: Server) -> None:
    body = {"prompt": "Write a Python function that adds two numbers."}
    with httpx.stream("POST", fn_server.url + "/fn/codegen/", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/plain"
        pieces = list(r.iter_raw())
    assert len(pieces) > 5 and len(b"".join(pieces).decode()) > 20


def test_a_client_that_leaves_closes_the_handler_and_the_model_stops(
    fn_server: Server, local: LocalProvider
) -> None:
    body = {"prompt": "Write a very long story about a lighthouse."}
    with httpx.stream("POST", fn_server.url + "/fn/codegen/", json=body, timeout=120) as r:
        for i, _ in enumerate(r.iter_raw()):
            if i == 5:
                break
    # The handler's Bedrock stream was closed: its generation ended as disconnected.
    gens = fn_server.gateway.generations.values()
    assert wait_until(lambda: any(g.stop_reason == "disconnected" for g in gens), timeout=10)
    assert wait_until(lambda: local.engine.active() == (0, 0))


def test_streamed_status_headers_cookies_and_generator_exit(fn_server: Server) -> None:
    with httpx.stream("GET", fn_server.url + "/fn/pieces/some/path?q=1", timeout=30) as r:
        assert r.status_code == 201 and r.headers["x-test"] == "yes"
        assert r.headers["set-cookie"] == "a=1"
        for i, _ in enumerate(r.iter_lines()):
            if i == 3:
                break
    import sys

    module = next(m for n, m in sys.modules.items() if n.startswith("sluicegate_handler_fns"))
    assert wait_until(lambda: "/some/path" in module.closed)


def test_a_stream_ends_at_the_function_timeout(
    fn_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with httpx.stream("GET", fn_server.url + "/fn/cut/", timeout=30) as r:
        lines = list(r.iter_lines())
    # 10 ms a piece for 1000 pieces, cut at 0.5 s: a prefix of them, then a clean end
    assert 5 < len(lines) < 100 and lines[0] == "piece 0"
    assert "cut: Task timed out after 0.50 seconds" in caplog.text


def test_async_generator_bodies_stream(fn_server: Server) -> None:
    r = httpx.get(fn_server.url + "/fn/agen/")
    assert r.content == b"async 0async 1async 2"


def test_the_function_url_event_has_the_payload_2_shape(fn_server: Server) -> None:
    r = httpx.post(
        fn_server.url + "/fn/echo/a/b?x=1&y=2", json={"k": "v"}, headers={"Cookie": "c1=1; c2=2"}
    )
    out = r.json()
    event = out["event"]
    assert event["version"] == "2.0" and event["rawPath"] == "/a/b"
    assert event["rawQueryString"] == "x=1&y=2"
    assert event["queryStringParameters"] == {"x": "1", "y": "2"}
    assert event["cookies"] == ["c1=1", "c2=2"]
    assert json.loads(event["body"]) == {"k": "v"} and event["isBase64Encoded"] is False
    assert event["requestContext"]["http"]["method"] == "POST"
    assert 0 < out["left"] <= 900_000 and out["arn"].endswith(":function:echo")
    assert "queryStringParameters" not in httpx.get(fn_server.url + "/fn/echo/").json()["event"]


def test_buffered_errors_in_the_lambda_shape(fn_server: Server) -> None:
    assert httpx.get(fn_server.url + "/fn/plain/").json() == {"answer": 42}
    r = httpx.get(fn_server.url + "/fn/broken/")
    # A public endpoint: Lambda's bare answer; the message and stack trace stay in the log.
    assert r.status_code == 502 and r.text == "Internal Server Error"
    assert "no good" not in r.text
    r = httpx.get(fn_server.url + "/rest/broken/x")  # behind the REST API: API Gateway's answer
    assert r.status_code == 502 and r.json() == {"message": "Internal server error"}
    r = httpx.get(fn_server.url + "/fn/huge/")
    assert r.status_code == 502 and "payload size exceeded" in r.text
    r = httpx.get(fn_server.url + "/fn/slow/", timeout=10)
    assert r.status_code == 504 and "Task timed out after 1.00 seconds" in r.text
    assert httpx.get(fn_server.url + "/fn/nobody/").status_code == 404


def test_rest_emulation_cuts_at_the_integration_timeout(fn_server: Server) -> None:
    r = httpx.get(fn_server.url + "/rest/slowrest/x", timeout=10)
    assert r.status_code == 504 and r.json() == {"message": "Endpoint request timed out"}
    event = httpx.get(fn_server.url + "/rest/echo/a?z=9").json()["event"]
    assert event["httpMethod"] == "GET" and event["path"] == "/a"
    assert event["queryStringParameters"] == {"z": "9"}
    assert (
        httpx.get(fn_server.url + "/rest/echo/a").json()["event"]["queryStringParameters"] is None
    )


def test_rest_stream_mode_streams_past_the_integration_timeout(fn_server: Server) -> None:
    with httpx.stream("GET", fn_server.url + "/rest/pieces/x", timeout=30) as r:
        lines = []
        for line in r.iter_lines():
            lines.append(line)
            if len(lines) == 80:  # 0.8 s of pieces: beyond the 0.5 s buffered timeout
                break
    assert r.status_code == 201 and lines[79] == "piece 79"


def test_a_failure_mid_stream_ends_the_stream_cleanly(
    fn_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    r = httpx.get(fn_server.url + "/fn/midway/")
    assert r.status_code == 200 and r.text == "first\n"
    assert (
        "function midway failed mid-stream" in caplog.text and "RuntimeError: midway" in caplog.text
    )
    assert httpx.get(fn_server.url + "/fn/plain/").json() == {"answer": 42}  # others unaffected


def test_the_lambda_api_through_boto3(fn_server: Server) -> None:
    lam = boto3.client(
        "lambda",
        region_name="us-east-1",
        endpoint_url=fn_server.url,
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}),
    )
    out = lam.invoke(FunctionName="plain", Payload=b"{}")
    assert json.loads(out["Payload"].read()) == {"answer": 42} and "FunctionError" not in out
    out = lam.invoke(FunctionName="broken", Payload=b"{}")
    assert out["FunctionError"] == "Unhandled"
    assert json.loads(out["Payload"].read())["errorMessage"] == "no good"
    events = list(
        lam.invoke_with_response_stream(FunctionName="agen", Payload=b"{}")["EventStream"]
    )
    chunks = [e["PayloadChunk"]["Payload"] for e in events if "PayloadChunk" in e]
    assert b"".join(chunks) == b"async 0async 1async 2" and "InvokeComplete" in events[-1]
    events = list(lam.invoke_with_response_stream(FunctionName="broken")["EventStream"])
    assert events[-1]["InvokeComplete"]["ErrorCode"] == "Unhandled"
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="nobody")


def test_a_broken_module_is_reported_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\ny = (\n")
    with pytest.raises(HandlerLoadError, match=r"bad.py:2"):
        load_handler(f"{bad}:handler")
    worse = tmp_path / "worse.py"
    worse.write_text("import json\nraise RuntimeError('at import')\n")
    with pytest.raises(HandlerLoadError, match=r"worse.py:2: RuntimeError: at import"):
        load_handler(f"{worse}:handler")
    with pytest.raises(HandlerLoadError, match="no function"):
        load_handler(f"{CODEGEN}:missing")


def test_bodies_over_lambdas_6_mb_are_refused_in_its_shape(fn_server: Server) -> None:
    """Function URLs and the Lambda API take at most 6,291,456 bytes, as Lambda does; the
    handler never runs."""
    big = b"x" * (6 * 1024 * 1024 + 1)
    url = httpx.post(fn_server.url + "/fn/echo/", content=big, timeout=30)
    assert url.status_code == 413 and "smaller than 6291456 bytes" in url.json()["Message"]
    api = httpx.post(
        fn_server.url + "/2015-03-31/functions/echo/invocations", content=big, timeout=30
    )
    assert api.status_code == 413
    assert api.headers["x-amzn-ErrorType"].startswith("RequestTooLargeException")
    just = httpx.post(fn_server.url + "/fn/echo/", content=b"x" * 1000, timeout=30)
    assert just.status_code == 200
