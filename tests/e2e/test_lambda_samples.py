"""Lambda as published samples use it, through the stock boto3 `lambda` client and websockets:
the environment Lambda sets, Event and DryRun invocations, generator-function handlers, function
errors in Lambda's shape (never a bare 500), and API Gateway's $disconnect fields and error
messages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import websockets
from botocore.config import Config

from sluicegate.config import FunctionSettings, Route, Settings, WebSocketSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from sluicegate.routes import function_url
from tests.conftest import Server, serve, stop, wait_until

HANDLERS = """
import json, os, time
from pathlib import Path

import boto3

HERE = Path(__file__).parent
REGION = os.environ["AWS_REGION"]  # read at import, as the samples do
NAME_AT_IMPORT = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
NAMES = ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME",
         "AWS_ENDPOINT_URL_LAMBDA", "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI")

def env(event, context):
    return {"at_import": NAME_AT_IMPORT, "now": {n: os.environ.get(n) for n in NAMES},
            "arn": context.invoked_function_arn}

def caller(event, context):
    out = boto3.client("lambda").invoke(FunctionName="target", Payload=json.dumps(event))
    return json.loads(out["Payload"].read())

def target(event, context):
    return {"got": event, "name": os.environ["AWS_LAMBDA_FUNCTION_NAME"]}

def later(event, context):
    time.sleep(0.5)
    (HERE / event["mark"]).write_text(os.environ["AWS_LAMBDA_FUNCTION_NAME"])

def broken(event, context):
    raise ValueError("no good")

def sleepy(event, context):
    time.sleep(2)

def unjson(event, context):
    return {1, 2}

def pieces(event, context):
    for i in range(3):
        time.sleep(0.05)
        yield f"piece {i} of {os.environ['AWS_LAMBDA_FUNCTION_NAME']}\\n"

async def apieces(event, context):
    for i in range(3):
        yield {"i": i}
"""
ROUTES = """
import json, time
from pathlib import Path

def on_disconnect(event, context):
    with (Path(__file__).parent / "disconnects.jsonl").open("a") as f:
        f.write(json.dumps(event["requestContext"]) + "\\n")

def boom(event, context):
    raise RuntimeError("boom")

def dawdle(event, context):
    time.sleep(2)
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: Any) -> Path:
    path: Path = tmp_path_factory.mktemp("samples")
    (path / "samples.py").write_text(HANDLERS)
    (path / "routes.py").write_text(ROUTES)
    return path


@pytest.fixture(scope="module")
def lam_server(folder: Path) -> Iterator[Server]:
    fn = f"{folder}/samples.py"

    def f(name: str, **extra: Any) -> FunctionSettings:
        return FunctionSettings(handler=f"{fn}:{name}", **extra)

    functions = {
        **{n: f(n) for n in ("env", "caller", "target", "later", "broken", "unjson", "pieces")},
        "sleepy": f("sleepy", timeout_seconds=0.3),
        "streamer": f("pieces", invoke_mode="RESPONSE_STREAM"),
        "apieces": f("apieces"),
    }
    ws = WebSocketSettings(
        routes={
            "$disconnect": f"{folder}/routes.py:on_disconnect",
            "boom": f"{folder}/routes.py:boom",
            "dawdle": f"{folder}/routes.py:dawdle",
        },
        handler_timeout_seconds=0.3,
    )
    settings = Settings(
        routes=[Route(match="*", provider="scripted")],
        functions=functions,
        websocket=ws,
        region="eu-west-3",
    )
    server = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001)}))
    yield server
    stop(server)


def lam(server: Server) -> Any:
    return boto3.client(
        "lambda",
        region_name="eu-west-3",
        endpoint_url=server.url,
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )


def payload(out: Any) -> Any:
    return json.loads(out["Payload"].read())


def test_handlers_see_the_environment_lambda_sets(lam_server: Server) -> None:
    out = payload(lam(lam_server).invoke(FunctionName="env"))
    assert out["at_import"] == "env"  # the module was imported as its function
    assert out["now"] == {
        "AWS_REGION": "eu-west-3",
        "AWS_DEFAULT_REGION": "eu-west-3",
        "AWS_LAMBDA_FUNCTION_NAME": "env",
        "AWS_ENDPOINT_URL_LAMBDA": lam_server.url,
        "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": lam_server.url + "/ws",
    }
    assert out["arn"] == "arn:aws:lambda:eu-west-3:000000000000:function:env"


def test_a_handler_invokes_another_function_on_this_server(lam_server: Server) -> None:
    out = payload(lam(lam_server).invoke(FunctionName="caller", Payload=b'{"n": 7}'))
    assert out == {"got": {"n": 7}, "name": "target"}  # each sees its own name


def test_an_event_invocation_answers_202_at_once_and_runs_in_the_background(
    lam_server: Server, folder: Path
) -> None:
    out = lam(lam_server).invoke(
        FunctionName="later", InvocationType="Event", Payload=b'{"mark": "event-ran"}'
    )
    assert out["StatusCode"] == 202 and out["Payload"].read() == b""
    assert not (folder / "event-ran").exists()  # answered while the function still runs
    assert wait_until(lambda: (folder / "event-ran").exists(), timeout=5)
    assert (folder / "event-ran").read_text() == "later"


def test_a_failing_event_invocation_is_logged(
    lam_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    out = lam(lam_server).invoke(FunctionName="broken", InvocationType="Event")
    assert out["StatusCode"] == 202 and "FunctionError" not in out
    assert wait_until(lambda: "function broken failed (InvocationType=Event)" in caplog.text)
    assert "ValueError: no good" in caplog.text


def test_a_dry_run_answers_204_and_runs_nothing(lam_server: Server, folder: Path) -> None:
    client = lam(lam_server)
    out = client.invoke(FunctionName="later", InvocationType="DryRun", Payload=b'{"mark": "dry"}')
    assert out["StatusCode"] == 204
    time.sleep(0.8)
    assert not (folder / "dry").exists()
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="nobody", InvocationType="DryRun")


def test_an_unknown_invocation_type_is_invalid_parameter_value(lam_server: Server) -> None:
    r = httpx.post(
        lam_server.url + "/2015-03-31/functions/env/invocations",
        headers={"X-Amz-Invocation-Type": "Sometime"},
    )
    assert r.status_code == 400
    assert r.headers["x-amzn-ErrorType"].startswith("InvalidParameterValueException")


def test_a_generator_function_streams_what_it_yields(lam_server: Server) -> None:
    client = lam(lam_server)
    whole = client.invoke(FunctionName="pieces")["Payload"].read().decode()
    assert whole == "".join(f"piece {i} of pieces\n" for i in range(3))
    events = list(client.invoke_with_response_stream(FunctionName="pieces")["EventStream"])
    chunks = [e["PayloadChunk"]["Payload"] for e in events if "PayloadChunk" in e]
    assert chunks == [f"piece {i} of pieces\n".encode() for i in range(3)]
    assert events[-1] == {"InvokeComplete": {}}
    events = list(client.invoke_with_response_stream(FunctionName="apieces")["EventStream"])
    assert [e["PayloadChunk"]["Payload"] for e in events[:-1]] == [
        b'{"i": 0}',
        b'{"i": 1}',
        b'{"i": 2}',
    ]


def test_a_generator_function_behind_a_function_url_streams_piece_by_piece(
    lam_server: Server,
) -> None:
    with httpx.stream("GET", lam_server.url + "/fn/streamer/", timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/octet-stream"
        pieces = list(r.iter_raw())
    assert pieces == [f"piece {i} of streamer\n".encode() for i in range(3)]
    buffered = httpx.get(lam_server.url + "/fn/pieces/", timeout=10)
    assert buffered.text == "".join(f"piece {i} of pieces\n" for i in range(3))


def test_a_handler_failure_is_lambdas_unhandled_function_error(lam_server: Server) -> None:
    out = lam(lam_server).invoke(FunctionName="broken")
    assert out["StatusCode"] == 200 and out["FunctionError"] == "Unhandled"
    error = payload(out)
    assert error["errorType"] == "ValueError" and error["errorMessage"] == "no good"
    assert error["requestId"] == out["ResponseMetadata"]["RequestId"]
    assert any("raise ValueError" in line for line in error["stackTrace"])


def test_a_timeout_is_an_unhandled_sandbox_timeout(lam_server: Server) -> None:
    out = lam(lam_server).invoke(FunctionName="sleepy")
    assert out["StatusCode"] == 200 and out["FunctionError"] == "Unhandled"
    error = payload(out)
    assert error["errorType"] == "Sandbox.Timedout"
    assert error["errorMessage"].endswith("Error: Task timed out after 0.30 seconds")


def test_a_result_that_is_not_json_is_a_marshal_error(lam_server: Server) -> None:
    out = lam(lam_server).invoke(FunctionName="unjson")
    assert out["FunctionError"] == "Unhandled"
    error = payload(out)
    assert error["errorType"] == "Runtime.MarshalError"
    assert error["errorMessage"].startswith("Unable to marshal response: Object of type set")


def test_a_fault_of_the_gateway_is_a_service_exception_not_a_bare_500(
    lam_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_payload(raw: bytes) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(function_url, "_payload", broken_payload)
    client = lam(lam_server)
    with pytest.raises(client.exceptions.ServiceException):
        client.invoke(FunctionName="env")


def disconnects(folder: Path) -> list[dict[str, Any]]:
    path = folder / "disconnects.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines]


def test_disconnect_events_carry_the_close_code_and_reason(
    lam_server: Server, folder: Path
) -> None:
    async def main() -> list[str]:
        ids = []
        for code, reason in ((1000, ""), (4001, "bye now")):
            async with websockets.connect(lam_server.ws_url) as ws:
                await ws.send(json.dumps({"action": "whoami"}))
                ids.append(json.loads(await ws.recv())["connectionId"])
                await ws.close(code, reason)
        return ids

    ids = asyncio.run(main())
    assert wait_until(lambda: {d["connectionId"] for d in disconnects(folder)} >= set(ids))
    seen = {d["connectionId"]: d for d in disconnects(folder)}
    assert [(seen[i]["disconnectStatusCode"], seen[i]["disconnectReason"]) for i in ids] == [
        (1000, ""),
        (4001, "bye now"),
    ]
    assert all(seen[i]["eventType"] == "DISCONNECT" for i in ids)


def test_a_failing_route_handler_gets_api_gateways_own_messages(lam_server: Server) -> None:
    async def main() -> tuple[str, Any, Any]:
        async with websockets.connect(lam_server.ws_url) as ws:
            await ws.send(json.dumps({"action": "whoami"}))
            cid = json.loads(await ws.recv())["connectionId"]
            await ws.send(json.dumps({"action": "boom"}))
            boom = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps({"action": "dawdle"}))
            dawdle = json.loads(await asyncio.wait_for(ws.recv(), 10))
            return cid, boom, dawdle

    cid, boom, dawdle = asyncio.run(main())
    assert set(boom) == {"message", "connectionId", "requestId"}
    assert boom["message"] == "Internal server error" and boom["connectionId"] == cid
    assert dawdle["message"] == "Endpoint request timed out" and dawdle["connectionId"] == cid
    assert boom["requestId"] != dawdle["requestId"]
