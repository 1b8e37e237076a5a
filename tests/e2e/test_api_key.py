"""With an api_key, every AWS door verifies SigV4 signatures: @connections, Bedrock Runtime and
the Lambda API. Forged, stale, tampered or wrongly keyed calls get 403; handlers' own boto3
clients (which find the key in their environment) get through."""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
import websockets
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from sluicegate.config import FunctionSettings, Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop

KEY = "k3y-for-tests"


HANDLERS = """
import boto3, json

def echo(event, context):
    return {"got": event}

def ask(event, context):
    # a handler as published: the client takes its endpoint and keys from the environment
    client = boto3.client("bedrock-runtime")
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]}
    out = client.invoke_model(modelId="scripted", body=json.dumps(body))
    return json.loads(out["body"].read())["content"][0]["text"]
"""


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = tmp_path_factory.mktemp("keyed") / "keyed.py"
    path.write_text(HANDLERS)
    functions = {n: FunctionSettings(handler=f"{path}:{n}") for n in ("echo", "ask")}
    routes = [Route(match="*", provider="scripted")]
    settings = Settings(routes=routes, api_key=KEY, functions=functions)
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001)}))
    yield s
    stop(s)


def client(server: Server, service: str, secret: str) -> Any:
    return boto3.client(
        service,
        region_name="eu-west-1",
        endpoint_url=server.url,
        aws_access_key_id="ANYKEYID",
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def management(server: Server, secret: str) -> Any:
    return boto3.client(
        "apigatewaymanagementapi",
        region_name="eu-west-1",
        endpoint_url=server.url + "/ws",
        aws_access_key_id="ANYKEYID",
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip


def with_connection(server: Server, work: Any) -> list[Any]:
    """Run `work(connection_id)` in a thread while a client is connected; what it received."""

    async def main() -> list[Any]:
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(json.dumps({"action": "whoami"}))
            cid = json.loads(await ws.recv())["connectionId"]
            await asyncio.to_thread(work, cid)
            got = []
            while True:
                try:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
                except TimeoutError:
                    return got

    return asyncio.run(main())


def signed(url: str, body: bytes, secret: str, when: datetime.datetime) -> dict[str, str]:
    """SigV4 headers for a POST, signed at `when` (botocore's signer, our clock)."""
    request = AWSRequest(method="POST", url=url, data=body)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    request.headers["X-Amz-Date"] = stamp
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials("ANYKEYID", secret), "execute-api", "us-east-1")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    scope = f"ANYKEYID/{stamp[:8]}/us-east-1/execute-api/aws4_request"
    auth = f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host;x-amz-date, Signature="
    return {"X-Amz-Date": stamp, "Authorization": auth + signature}


def test_boto3_signed_with_the_key_gets_through(keyed: Server) -> None:
    api = management(keyed, KEY)

    def work(cid: str) -> None:
        api.post_to_connection(ConnectionId=cid, Data=b'{"n": 1}')
        assert api.get_connection(ConnectionId=cid)["Identity"]["SourceIp"] == "127.0.0.1"

    assert with_connection(keyed, work) == [{"n": 1}]


def test_a_wrong_secret_or_a_forged_header_is_refused(keyed: Server) -> None:
    api = management(keyed, "not-the-key")
    forged = "AWS4-HMAC-SHA256 Credential=X/20261125/us-east-1/execute-api/aws4_request, "
    forged += "SignedHeaders=host, Signature=" + "0" * 64
    refused: list[int] = []

    def work(cid: str) -> None:
        with pytest.raises(api.exceptions.ForbiddenException):
            api.post_to_connection(ConnectionId=cid, Data=b'{"n": 2}')
        url = f"{keyed.url}/ws/@connections/{cid.replace('=', '%3D')}"
        for auth in (forged, "Bearer wrong", "AWS4-HMAC-SHA256 Credential=x"):
            refused.append(
                httpx.post(url, content=b'{"n": 3}', headers={"authorization": auth}).status_code
            )
        assert (
            httpx.post(
                url, content=b'{"n": 4}', headers={"authorization": f"Bearer {KEY}"}
            ).status_code
            == 200
        )

    assert with_connection(keyed, work) == [{"n": 4}]
    assert refused == [403, 403, 403]


def test_stale_or_tampered_signatures_are_refused(keyed: Server) -> None:
    statuses: list[int] = []

    def work(cid: str) -> None:
        url = f"{keyed.url}/ws/@connections/{cid.replace('=', '%3D')}"
        now = datetime.datetime.now(datetime.UTC)
        fresh = signed(url, b'{"n": 5}', KEY, now)
        statuses.append(httpx.post(url, content=b'{"n": 5}', headers=fresh).status_code)
        statuses.append(httpx.post(url, content=b'{"n": 6}', headers=fresh).status_code)
        old = signed(url, b'{"n": 7}', KEY, now - datetime.timedelta(hours=1))
        statuses.append(httpx.post(url, content=b'{"n": 7}', headers=old).status_code)

    assert with_connection(keyed, work) == [{"n": 5}]
    assert statuses == [200, 403, 403]  # signed as sent; body changed; an hour old


def test_bedrock_runtime_verifies_signatures(keyed: Server) -> None:
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3,
                       "messages": [{"role": "user", "content": "hello"}]})  # fmt: skip
    before = set(keyed.gateway.generations)
    good = client(keyed, "bedrock-runtime", KEY)
    out = json.loads(good.invoke_model(modelId="scripted", body=body)["body"].read())
    assert out["content"][0]["text"].startswith("You said")
    events = good.invoke_model_with_response_stream(modelId="scripted", body=body)["body"]
    assert any("chunk" in e for e in events)
    bad = client(keyed, "bedrock-runtime", "not-the-key")
    with pytest.raises(ClientError) as caught:
        bad.invoke_model(modelId="scripted", body=body)
    error = caught.value.response
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    unsigned = httpx.post(f"{keyed.url}/model/scripted/invoke", content=body)
    assert unsigned.status_code == 403
    started = [g for k, g in keyed.gateway.generations.items() if k not in before]
    assert len(started) == 2  # only the two signed calls reached a model


def test_the_lambda_api_verifies_signatures_and_handlers_get_through(keyed: Server) -> None:
    lam = client(keyed, "lambda", KEY)
    out = lam.invoke(FunctionName="echo", Payload=b'{"a": 1}')
    assert json.loads(out["Payload"].read()) == {"got": {"a": 1}}
    # The handler's own boto3 client signs with the key it finds in its environment.
    out = lam.invoke(FunctionName="ask", Payload=b"{}")
    assert "FunctionError" not in out and json.loads(out["Payload"].read()).startswith("You said")
    bad = client(keyed, "lambda", "not-the-key")
    for call in (
        lambda: bad.invoke(FunctionName="echo", Payload=b"{}"),
        lambda: bad.invoke_with_response_stream(FunctionName="echo", Payload=b"{}"),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_an_unsigned_payload_cannot_carry_another_body(keyed: Server) -> None:
    """`UNSIGNED-PAYLOAD` would leave the body out of the signature: a signed request could be
    replayed with any body. These APIs sign their bodies on AWS, so it is refused."""

    def work(cid: str) -> None:
        url = f"{keyed.url}/ws/@connections/{cid.replace('=', '%3D')}"
        request = AWSRequest(method="POST", url=url, data=b'{"n": 8}')
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        request.headers["X-Amz-Date"] = stamp
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        request.context["timestamp"] = stamp
        SigV4Auth(Credentials("ANYKEYID", KEY), "execute-api", "us-east-1").add_auth(request)
        headers = dict(request.headers)
        replayed = httpx.post(url, content=b'{"n": "injected"}', headers=headers)
        assert replayed.status_code == 403

    assert with_connection(keyed, work) == []


def test_websocket_generate_needs_the_key_in_a_header_or_the_token_query(keyed: Server) -> None:
    async def first_reply(query: str = "", headers: dict[str, str] | None = None) -> Any:
        url = keyed.ws_url + query
        async with websockets.connect(url, additional_headers=headers or {}) as ws:
            await ws.send(json.dumps({"action": "generate", "id": query or "h", "prompt": "hi"}))
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    async def main() -> None:
        for refused in (
            await first_reply(),
            await first_reply("?token=wrong"),
            await first_reply(headers={"Authorization": "Bearer wrong"}),
            await first_reply("?owner=someone"),
        ):
            assert refused["type"] == "error" and refused["code"] == "ForbiddenException"
            assert "api_key" in refused["message"]
        for served in (
            await first_reply(f"?token={KEY}"),
            await first_reply(headers={"Authorization": f"Bearer {KEY}"}),
        ):
            assert served["type"] == "start", served

    asyncio.run(main())
