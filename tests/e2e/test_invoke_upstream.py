"""The `bedrock` provider with `api = "invoke"`: InvokeModelWithResponseStream upstream, through a
real uvicorn, the upstream a second sluicegate (the session's `server`, its scripted provider).

Every streaming door over it: the text in order, the usage and the stop reason in the door's own
word; a client that leaves ends the upstream's generation as `disconnected`; an exception frame
from the upstream (throttling, from a small fake) is each door's own error.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from botocore.exceptions import EventStreamError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from sluicegate.codecs import eventstream
from sluicegate.config import Route as ModelRoute
from sluicegate.config import Settings, UpstreamSettings
from sluicegate.events import ChatRequest
from sluicegate.gateway import Gateway
from sluicegate.providers.bedrock import BedrockProvider
from sluicegate.providers.scripted import ScriptedProvider
from sluicegate.providers.upstream import Outgoing
from sluicegate.routes.bedrock import chunk_frame
from tests.conftest import Server, serve, stop, wait_until
from tests.e2e.test_matrix import CUT, DOORS, MAX, MODEL, PROMPT
from tests.e2e.test_tool_relay import DOORS as TOOL_DOORS
from tests.e2e.test_tool_relay import INPUT, STOPS
from tests.e2e.test_upstreams import serve_app

UPSTREAM_MODEL = "scripted-invoke"
# Families with bodies of their own, by the ids clients ask for and the ids sent upstream.
FAMILIES = [
    ("meta.", "meta.llama3-8b-instruct-v1:0"),
    ("amazon.", "us.amazon.nova-lite-v1:0"),
    ("openai.", "openai.gpt-oss-20b-1:0"),
]
STREAMING_DOORS = [
    "invoke-stream",
    "converse-stream",
    "anthropic",
    "openai-chat",
    "openai-responses",
]


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


def invoking_gateway(url: str, models: dict[str, str] | None = None) -> tuple[Server, list[str]]:
    """A gateway whose provider calls `url` with InvokeModelWithResponseStream; the list
    collects the paths it posts to."""
    up = UpstreamSettings(type="bedrock", endpoint_url=url, region="us-east-1", api="invoke")
    settings = Settings(
        providers={"up": up},
        routes=[
            ModelRoute(match=match, provider="up", model=model)
            for match, model in (models or {"anthropic.*": UPSTREAM_MODEL}).items()
        ],
    )
    provider = BedrockProvider("up", up)
    sent: list[str] = []

    build = provider.outgoing

    def outgoing(request: ChatRequest) -> Outgoing:
        out = build(request)
        sent.append(urllib.parse.unquote(urllib.parse.urlsplit(out.url).path))
        return out

    provider.outgoing = outgoing  # type: ignore[method-assign]
    return serve(Gateway(settings, {"up": provider})), sent


@pytest.fixture(scope="module")
def families() -> Iterator[tuple[Server, list[str]]]:
    """A gateway in front of a sluicegate whose every model is scripted, Llama's id included."""
    settings = Settings(routes=[ModelRoute(match="*", provider="scripted")])
    upstream = serve(Gateway(settings, {"scripted": ScriptedProvider(delay=0.002, length=64)}))
    gw, sent = invoking_gateway(upstream.url, {f"{family}*": model for family, model in FAMILIES})
    yield gw, sent
    stop(gw)
    stop(upstream)


@pytest.fixture(scope="module")
def relay(server: Server) -> Iterator[tuple[Server, list[str]]]:
    gw, sent = invoking_gateway(server.url)
    yield gw, sent
    stop(gw)


@pytest.fixture(scope="module")
def expected(server: Server) -> dict[str, Any]:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": MAX,
            "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
    direct = server.bedrock().invoke_model(modelId=UPSTREAM_MODEL, body=json.dumps(body))
    answer: dict[str, Any] = json.loads(direct["body"].read())
    return answer


@pytest.mark.parametrize("door", STREAMING_DOORS)
def test_every_door_over_an_invoke_upstream(
    door: str, relay: tuple[Server, list[str]], server: Server, expected: dict[str, Any]
) -> None:
    gw, sent = relay
    before = set(server.gateway.generations)
    text, stop_reason, output_tokens = DOORS[door](gw.url, gw)
    assert text == expected["content"][0]["text"] and len(text.split()) == MAX
    assert stop_reason == CUT[door]
    assert output_tokens == MAX == expected["usage"]["output_tokens"]
    assert sent[-1] == f"/model/{UPSTREAM_MODEL}/invoke-with-response-stream"
    [upstream] = [g for k, g in server.gateway.generations.items() if k not in before]
    assert upstream.request.model == UPSTREAM_MODEL and upstream.stop_reason == "max_tokens"
    ours = list(gw.gateway.generations.values())[-1]
    # the upstream's own count, from its last chunk's amazon-bedrock-invocationMetrics
    assert ours.usage.input_tokens == expected["usage"]["input_tokens"] > 0


@pytest.mark.parametrize(("family", "model"), FAMILIES)
def test_each_familys_body_and_chunks(
    family: str, model: str, families: tuple[Server, list[str]]
) -> None:
    """Llama 3's template, Nova's messages-v1, gpt-oss's Chat Completions: the upstream
    sluicegate reads each body as Bedrock does (the scripted answer echoes the last user
    turn: the conversation arrived), and its chunks read back as the answer."""
    gw, sent = families
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
    turns = [{"role": "user", "content": "First."}, {"role": "assistant", "content": "Yes."},
             {"role": "user", "content": "Hello river."}]  # fmt: skip
    message = client.messages.create(model=family + "x", max_tokens=6, messages=turns)
    assert sent[-1] == f"/model/{model}/invoke-with-response-stream"  # as decoded
    assert message.content[0].type == "text"
    assert message.content[0].text == "You said: Hello river. Streaming puts "
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 6
    assert message.usage.input_tokens > 0


@pytest.mark.parametrize("door", list(TOOL_DOORS))
def test_a_tool_call_and_its_result_over_the_messages_body(
    door: str, relay: tuple[Server, list[str]]
) -> None:
    """Tools go up in the Messages body; the call streams back as tool_use chunks."""
    gw, sent = relay
    (call_id, name, given, stop_reason), answer = TOOL_DOORS[door](gw)
    assert sent[-1].endswith("/invoke-with-response-stream")
    assert call_id.startswith("toolu_")  # the upstream's own id, passed through
    assert (name, given, stop_reason) == ("get_weather", INPUT, STOPS[door])
    assert answer.startswith("Tool results: 18 degrees")


def test_a_natural_end_is_end_turn(relay: tuple[Server, list[str]]) -> None:
    gw, _ = relay
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
    message = client.messages.create(  # the scripted answer is 64 words: under max_tokens
        model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "Hi."}]
    )
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 64


@pytest.mark.parametrize("door", ["invoke-stream", "openai-chat"])
def test_a_client_that_leaves_ends_the_upstream_generation(
    door: str, relay: tuple[Server, list[str]], server: Server
) -> None:
    gw, _ = relay
    before = set(server.gateway.generations)
    slow = "sluicegate:delay-ms=20 A long story."
    if door == "invoke-stream":
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1000,
                "messages": [{"role": "user", "content": slow}]}  # fmt: skip
        response = gw.bedrock().invoke_model_with_response_stream(
            modelId=MODEL, body=json.dumps(body)
        )
        events = iter(response["body"])
        for _ in range(6):
            next(events)
        response["body"].close()
    else:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        stream = client.chat.completions.create(
            model=MODEL, max_tokens=1000, stream=True, messages=[{"role": "user", "content": slow}]
        )
        for i, _ in enumerate(stream):
            if i >= 5:
                break
        stream.close()
    [gen] = [g for k, g in server.gateway.generations.items() if k not in before]
    assert wait_until(lambda: gen.done, timeout=5)
    assert gen.stop_reason == "disconnected"
    assert server.gateway.describe(gen)["produced_tokens"] < 100


def test_an_upstream_failure_mid_stream_comes_through(relay: tuple[Server, list[str]]) -> None:
    """The upstream sluicegate's own exception frame (modelStreamErrorException)."""
    gw, _ = relay
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20,
            "messages": [{"role": "user", "content": "sluicegate:fail-after=3"}]}  # fmt: skip
    response = gw.bedrock().invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(body))
    texts = []
    with pytest.raises(EventStreamError, match="modelStreamErrorException") as info:
        for event in response["body"]:
            chunk = json.loads(event["chunk"]["bytes"])
            if chunk["type"] == "content_block_delta":
                texts.append(chunk["delta"]["text"])
    assert texts == ["You ", "said: ", "sluicegate:fail-after=3 "]
    assert "Scripted failure after 3 tokens" in str(info.value)


# -- an exception frame from the upstream ----------------------------------------------------------


def throttling_upstream() -> Starlette:
    """Opens a Messages stream, sends one word, then a throttlingException frame."""
    chunks = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 3, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "one "}},
    ]  # fmt: skip

    async def frames() -> Any:
        for chunk in chunks:
            yield chunk_frame(chunk)
        yield eventstream.exception("throttlingException", "Too many tokens, please wait.")

    async def endpoint(request: Request) -> Response:
        await request.body()
        return StreamingResponse(frames(), media_type="application/vnd.amazon.eventstream")

    path = "/model/{model:path}/invoke-with-response-stream"
    return Starlette(routes=[Route(path, endpoint, methods=["POST"])])


@pytest.fixture(scope="module")
def throttled() -> Iterator[Server]:
    url, done = serve_app(throttling_upstream())
    gw, _ = invoking_gateway(url)
    yield gw
    stop(gw)
    done()


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_a_throttling_frame_on_the_bedrock_doors(throttled: Server) -> None:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20, "messages": user("hi")}
    client = throttled.bedrock()
    response = client.invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(body))
    seen = []
    with pytest.raises(EventStreamError, match="throttlingException") as info:
        for event in response["body"]:
            seen.append(json.loads(event["chunk"]["bytes"])["type"])
    assert "content_block_delta" in seen
    assert "Too many tokens" in str(info.value)
    converse = client.converse_stream(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}]
    )
    with pytest.raises(EventStreamError, match="throttlingException"):
        list(converse["stream"])
    gen = list(throttled.gateway.generations.values())[-1]
    assert gen.stop_reason == "error"


def test_a_throttling_frame_on_the_anthropic_door(throttled: Server) -> None:
    client = anthropic.Anthropic(base_url=throttled.url, api_key="k", max_retries=0)
    pieces: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        client.messages.stream(model=MODEL, max_tokens=20, messages=user("hi")) as stream,
    ):
        for text in stream.text_stream:
            pieces.append(text)
    assert pieces == ["one "]
    assert info.value.body["error"]["type"] == "rate_limit_error"
    assert "Too many tokens" in info.value.body["error"]["message"]


def test_a_throttling_frame_on_the_openai_door(throttled: Server) -> None:
    client = openai.OpenAI(base_url=throttled.url + "/v1", api_key="k", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, max_tokens=20, stream=True, messages=user("hi")
    )
    texts: list[str] = []
    with pytest.raises(openai.APIError, match="Too many tokens") as info:
        for chunk in stream:
            texts += [c.delta.content or "" for c in chunk.choices]
    assert "".join(texts) == "one "
    assert info.value.body is not None and info.value.code == "rate_limit_exceeded"
