"""@connections with an api_key: SigV4 signatures are verified, forged ones get 403."""

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

from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop

KEY = "k3y-for-tests"


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")], api_key=KEY)
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.001)}))
    yield s
    stop(s)


def management(server: Server, secret: str) -> Any:
    return boto3.client(
        "apigatewaymanagementapi",
        region_name="eu-west-1",
        endpoint_url=server.url + "/ws",
        aws_access_key_id="ANYKEYID",
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


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
