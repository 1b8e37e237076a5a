"""Per-caller caps: one client address at its cap of live generations, on all doors together,
gets each door's throttling error, while another client is still served."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import anthropic
import botocore.exceptions
import httpx
import openai
import pytest
import websockets

from sluicegate.config import Route, Settings
from sluicegate.gateway import Gateway
from sluicegate.providers.scripted import ScriptedProvider
from tests.conftest import Server, serve, stop, wait_until

CAP = 3
BODY = json.dumps(
    {
        "anthropic_version": "bedrock-2023-05-31",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 400,
    }
)


@pytest.fixture(scope="module")
def capped() -> Iterator[Server]:
    settings = Settings(
        routes=[Route(match="*", provider="scripted")], max_generations_per_caller=CAP
    )
    # 400 words at 50 ms: each stream stays live for the whole test unless it is stopped.
    s = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.05, length=400)}))
    yield s
    stop(s)


def from_address(local: str) -> httpx.Client:
    """An HTTP client whose connections come from another loopback address: another caller."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=local), timeout=30)


def live(server: Server) -> int:
    return sum(not g.done for g in server.gateway.generations.values())


def test_a_caller_at_its_cap_is_throttled_on_every_door_and_another_is_served(
    capped: Server,
) -> None:
    async def main() -> None:
        # Caller A (127.0.0.1) fills its cap with streams on three doors.
        bedrock = capped.bedrock()
        first = bedrock.invoke_model_with_response_stream(modelId="scripted", body=BODY)
        events = iter(first["body"])
        next(events)
        ws = await websockets.connect(capped.ws_url)
        await ws.send(json.dumps({"action": "generate", "id": "w", "prompt": "hi"}))
        assert json.loads(await ws.recv())["type"] == "start"
        oa = openai.OpenAI(base_url=capped.url + "/v1", api_key="x", max_retries=0)
        third = oa.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        next(iter(third))
        assert capped.gateway.live_by_caller["127.0.0.1"] == CAP

        # A's next one is refused on each door, in the door's own shape.
        with pytest.raises(botocore.exceptions.ClientError) as aws:
            bedrock.invoke_model(modelId="scripted", body=BODY)
        assert aws.value.response["Error"]["Code"] == "ThrottlingException"
        an = anthropic.Anthropic(base_url=capped.url, api_key="x", max_retries=0)
        with pytest.raises(anthropic.RateLimitError):
            an.messages.create(
                model="scripted", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.RateLimitError):
            oa.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": "hi"}]
            )
        await ws.send(json.dumps({"action": "generate", "id": "w2", "prompt": "hi"}))
        refused = json.loads(await ws.recv())
        while refused["type"] == "delta":  # w's deltas interleave with the refusal
            refused = json.loads(await ws.recv())
        assert refused["type"] == "error" and refused["code"] == "ThrottlingException"

        # Caller B, from 127.0.0.2, is served in full meanwhile.
        other = openai.OpenAI(
            base_url=capped.url + "/v1",
            api_key="x",
            max_retries=0,
            http_client=from_address("127.0.0.2"),
        )
        answer = other.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        assert answer.choices[0].finish_reason == "length"
        assert live(capped) == CAP

        # When A stops one, A may start one again.
        await ws.send(json.dumps({"action": "stop", "id": "w"}))
        assert wait_until(lambda: capped.gateway.live_by_caller["127.0.0.1"] == CAP - 1)
        again = oa.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert again.choices[0].finish_reason == "length"
        await ws.close()
        first["body"].close()
        third.close()

    asyncio.run(main())
    # The clients left: each of their generations ended, and the count went back to zero.
    assert wait_until(lambda: "127.0.0.1" not in capped.gateway.live_by_caller, timeout=15)
