"""Any door to any model: every client door through a gateway in front of every upstream kind.

The upstream is a second sluicegate (the session's `server`, its scripted provider: the same
text for the same request). Through each pair, with the stock client of the door: the text
arrives whole and in order, the usage is the upstream's, the stop reason is the door's own
word for it; and a client that leaves ends the upstream's generation as `disconnected`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest

from sluicegate.config import Route as ModelRoute
from sluicegate.config import Settings, UpstreamSettings
from sluicegate.gateway import Gateway
from sluicegate.providers.anthropic import AnthropicProvider
from sluicegate.providers.bedrock import BedrockProvider
from sluicegate.providers.openai import OpenAIProvider
from tests.conftest import Server, serve, stop, wait_until

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"  # what clients ask for
UPSTREAM_MODEL = "scripted-matrix"  # what the gateway sends upstream
PROMPT = "Tell me about the river Thames."
MAX = 24
Result = tuple[str, str, int]  # text, stop reason (the door's word), output tokens


def invoke_stream(url: str, gw: Server) -> Result:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": MAX,
            "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
    response = gw.bedrock().invoke_model_with_response_stream(modelId=MODEL, body=json.dumps(body))
    chunks = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    text = "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta")
    delta = next(c for c in chunks if c["type"] == "message_delta")
    return text, delta["delta"]["stop_reason"], delta["usage"]["output_tokens"]


def converse_stream(url: str, gw: Server) -> Result:
    response = gw.bedrock().converse_stream(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        inferenceConfig={"maxTokens": MAX},
    )
    events = list(response["stream"])
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )
    stop = next(e["messageStop"]["stopReason"] for e in events if "messageStop" in e)
    usage = next(e["metadata"]["usage"]["outputTokens"] for e in events if "metadata" in e)
    return text, stop, usage


def anthropic_messages(url: str, gw: Server) -> Result:
    client = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)
    with client.messages.stream(
        model=MODEL, max_tokens=MAX, messages=[{"role": "user", "content": PROMPT}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return text, str(final.stop_reason), final.usage.output_tokens


def openai_chat(url: str, gw: Server) -> Result:
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    pieces, finish, usage = [], "", 0
    for chunk in client.chat.completions.create(
        model=MODEL,
        max_tokens=MAX,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": PROMPT}],
    ):
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(pieces), finish, usage


def openai_responses(url: str, gw: Server) -> Result:
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    pieces, final = [], None
    for event in client.responses.create(
        model=MODEL, input=PROMPT, max_output_tokens=MAX, stream=True
    ):
        if event.type == "response.output_text.delta":
            pieces.append(event.delta)
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert final is not None and final.usage is not None
    reason = final.incomplete_details.reason if final.incomplete_details else final.status
    return "".join(pieces), str(reason), final.usage.output_tokens


DOORS: dict[str, Callable[[str, Server], Result]] = {
    "invoke-stream": invoke_stream,
    "converse-stream": converse_stream,
    "anthropic": anthropic_messages,
    "openai-chat": openai_chat,
    "openai-responses": openai_responses,
}
# Each door's word for "max_tokens cut it".
CUT = {
    "invoke-stream": "max_tokens",
    "converse-stream": "max_tokens",
    "anthropic": "max_tokens",
    "openai-chat": "length",
    "openai-responses": "max_output_tokens",
}
KINDS = {
    "bedrock": (BedrockProvider, "endpoint_url", ""),
    "openai": (OpenAIProvider, "base_url", "/v1"),
    "anthropic": (AnthropicProvider, "base_url", ""),
}


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


@pytest.fixture(scope="module", params=list(KINDS))
def relay(request: pytest.FixtureRequest, server: Server) -> Iterator[Server]:
    kind = request.param
    cls, where, suffix = KINDS[kind]
    up = UpstreamSettings.model_validate(
        {"type": kind, where: server.url + suffix, "region": "us-east-1"}
    )
    settings = Settings(
        providers={"up": up},
        routes=[ModelRoute(match="anthropic.*", provider="up", model=UPSTREAM_MODEL)],
    )
    gw = serve(Gateway(settings, {"up": cls("up", up)}))
    yield gw
    stop(gw)


@pytest.fixture(scope="module")
def expected(server: Server) -> str:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": MAX,
            "messages": [{"role": "user", "content": PROMPT}]}  # fmt: skip
    direct = server.bedrock().invoke_model(modelId=UPSTREAM_MODEL, body=json.dumps(body))
    text: str = json.loads(direct["body"].read())["content"][0]["text"]
    return text


@pytest.mark.parametrize("door", list(DOORS))
def test_text_usage_and_stop_reason_through_every_pair(
    door: str, relay: Server, server: Server, expected: str
) -> None:
    text, stop_reason, output_tokens = DOORS[door](relay.url, relay)
    assert text == expected
    assert stop_reason == CUT[door]
    assert output_tokens == MAX
    upstream = list(server.gateway.generations.values())[-1]
    assert upstream.request.model == UPSTREAM_MODEL and upstream.stop_reason == "max_tokens"


def test_a_client_that_leaves_ends_the_upstream_generation(relay: Server, server: Server) -> None:
    before = set(server.gateway.generations)
    client = openai.OpenAI(base_url=relay.url + "/v1", api_key="k", max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL,
        max_tokens=1000,
        stream=True,
        messages=[{"role": "user", "content": "sluicegate:delay-ms=20 A long story."}],
    )
    for i, _ in enumerate(stream):
        if i >= 5:
            break
    stream.close()
    [gen] = [g for k, g in server.gateway.generations.items() if k not in before]
    assert wait_until(lambda: gen.done, timeout=5)
    assert gen.stop_reason == "disconnected"
    assert server.gateway.describe(gen)["produced_tokens"] < 100
