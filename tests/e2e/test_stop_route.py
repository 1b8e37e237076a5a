"""`POST /sluicegate/generations/{id}/stop`: any door's generation ends `cancelled`, for its
owner only, and the producer stops (the scripted provider's own count)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import EventStreamError

from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop, wait_until

KEY = "sk-stop-test"
SLOW = "go on sluicegate:delay-ms=30"


@pytest.fixture(scope="module", params=[None, KEY], ids=["no-key", "api-key"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    settings = Settings(routes=[Route(match="*", provider="scripted")], api_key=request.param)
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.03)}))
    yield s
    stop(s)


def produced(server: Server, gen_id: str) -> int:
    count: int = server.gateway.providers["scripted"].produced.get(gen_id, 0)  # type: ignore[attr-defined]
    return count


def started(server: Server, route: str) -> str:
    """The id of the one generation of `route` that is running now."""
    assert wait_until(
        lambda: any(g.route == route and not g.done for g in server.gateway.generations.values())
    )
    return next(
        g.id for g in server.gateway.generations.values() if g.route == route and not g.done
    )


def stopped_for_good(server: Server, gen_id: str) -> None:
    gen = server.gateway.generations[gen_id]
    assert wait_until(lambda: gen.done) and gen.stop_reason == "cancelled"
    made = produced(server, gen_id)
    time.sleep(0.2)
    assert produced(server, gen_id) == made < 64


def anthropic_stream(server: Server, key: str, out: list[Any]) -> threading.Thread:
    def read() -> None:
        body = {"model": "m", "max_tokens": 64, "stream": True,
                "messages": [{"role": "user", "content": SLOW}]}  # fmt: skip
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        with httpx.stream("POST", server.url + "/v1/messages", json=body, headers=headers) as r:
            out.append(r.headers.get("request-id"))
            out.append(b"".join(r.iter_bytes()))

    thread = threading.Thread(target=read)
    thread.start()
    return thread


def test_an_anthropic_stream_stopped_by_its_owner_ends_cancelled(server: Server) -> None:
    key = server.gateway.settings.api_key or "mine"
    out: list[Any] = []
    reader = anthropic_stream(server, key, out)
    gen_id = started(server, "anthropic")
    url = f"{server.url}/sluicegate/generations/{gen_id}/stop"
    # Someone else, and nobody: as if there were no such generation.
    assert httpx.post(url, headers={"x-api-key": "theirs"}).status_code in (403, 404)
    assert httpx.post(url).status_code in (403, 404)
    assert not server.gateway.generations[gen_id].done
    answer = httpx.post(url, headers={"x-api-key": key})
    assert answer.status_code == 200 and answer.json()["stopped"] is True
    reader.join(10)
    stopped_for_good(server, gen_id)
    # The stream ends in the door's own words for an early end (Anthropic has no stop reason).
    assert out[0] == gen_id and b"stopped before it finished" in out[1]
    again = httpx.post(url, headers={"x-api-key": key}).json()
    assert (again["stopped"], again["stop_reason"]) == (False, "cancelled")


def signed(url: str, access_key: str, secret: str) -> dict[str, str]:
    aws = AWSRequest("POST", url, data=b"")
    SigV4Auth(Credentials(access_key, secret), "bedrock", "us-east-1").add_auth(aws)
    return dict(aws.headers)


def test_a_bedrock_stream_stopped_with_a_sigv4_signature_by_the_same_key(server: Server) -> None:
    secret = server.gateway.settings.api_key or "anything"
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", endpoint_url=server.url,
        aws_access_key_id="AKIDOWNER", aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    response = client.converse_stream(
        modelId="m", messages=[{"role": "user", "content": [{"text": SLOW}]}],
        inferenceConfig={"maxTokens": 64},
    )  # fmt: skip
    gen_id = response["ResponseMetadata"]["RequestId"]
    events = iter(response["stream"])
    next(events)
    url = f"{server.url}/sluicegate/generations/{gen_id}/stop"
    other = httpx.post(url, headers=signed(url, "AKIDOTHER", secret))
    assert other.status_code == 404
    if server.gateway.settings.api_key:  # the right key id, but not signed with the api_key
        assert httpx.post(url, headers=signed(url, "AKIDOWNER", "wrong")).status_code == 403
    assert httpx.post(url, headers=signed(url, "AKIDOWNER", secret)).json()["stopped"] is True
    # Converse's own words for an early end: an exception frame, as boto3 models it.
    with pytest.raises(EventStreamError, match="stopped before it finished"):
        list(events)
    stopped_for_good(server, gen_id)


def test_an_unknown_generation_is_404(server: Server) -> None:
    headers = {"x-api-key": server.gateway.settings.api_key or "k"}
    answer = httpx.post(f"{server.url}/sluicegate/generations/nope/stop", headers=headers)
    assert answer.status_code == 404 and "No such generation" in answer.json()["message"]
