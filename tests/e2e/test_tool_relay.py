"""Tool use through a gateway in front of every upstream kind (bedrock, openai, anthropic), the
upstream a second sluicegate (the session's `server`, its scripted provider): each door's stock
client gets the upstream's call, streamed and put together, with its id, name and input; the
tool's result goes back up in the upstream's own shape and the answer comes back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

from sluicegate.config import Route as ModelRoute
from sluicegate.config import Settings, UpstreamSettings
from sluicegate.events import BlockStart, BlockStop, TextDelta, ToolInputDelta
from sluicegate.gateway import Gateway
from sluicegate.providers.upstream import Blocks, ToolInput, ToolStart
from tests.conftest import Server, serve, stop
from tests.e2e.test_matrix import KINDS

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ASK = 'sluicegate:tool=get_weather{"city": "Paris", "unit": "celsius"}'
INPUT = {"city": "Paris", "unit": "celsius"}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
Call = tuple[str, str, Any, str]  # id, name, input, the door's stop reason


def converse(gw: Server) -> tuple[Call, str]:
    client = gw.bedrock()
    config = {"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather.",
                                      "inputSchema": {"json": SCHEMA}}}]}  # fmt: skip
    ask = {"role": "user", "content": [{"text": ASK}]}
    use: dict[str, Any] = {}
    stop = ""
    for event in client.converse_stream(modelId=MODEL, messages=[ask], toolConfig=config)["stream"]:
        start = event.get("contentBlockStart", {}).get("start", {})
        if "toolUse" in start:
            use = {**start["toolUse"], "input": ""}
        delta = event.get("contentBlockDelta", {}).get("delta", {})
        if "toolUse" in delta:
            use["input"] += delta["toolUse"]["input"]
        stop = event.get("messageStop", {}).get("stopReason", stop)
    use["input"] = json.loads(use["input"])
    result = {"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": "18 degrees"}]}}
    turns = [ask, {"role": "assistant", "content": [{"toolUse": use}]},
             {"role": "user", "content": [result]}]  # fmt: skip
    answer = client.converse(modelId=MODEL, messages=turns, toolConfig=config)
    text = answer["output"]["message"]["content"][0]["text"]
    return (use["toolUseId"], use["name"], use["input"], stop), text


def messages(gw: Server) -> tuple[Call, str]:
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
    tools = [{"name": "get_weather", "description": "Weather.", "input_schema": SCHEMA}]
    ask = {"role": "user", "content": ASK}
    with client.messages.stream(model=MODEL, max_tokens=200, tools=tools, messages=[ask]) as stream:
        final = stream.get_final_message()
    [use] = [b for b in final.content if b.type == "tool_use"]
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}
    turns = [ask, {"role": "assistant", "content": [use.model_dump()]},
             {"role": "user", "content": [result]}]  # fmt: skip
    answer = client.messages.create(model=MODEL, max_tokens=200, tools=tools, messages=turns)
    return (use.id, use.name, use.input, str(final.stop_reason)), answer.content[0].text


def chat(gw: Server) -> tuple[Call, str]:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
    ask = {"role": "user", "content": ASK}
    with client.chat.completions.stream(model=MODEL, tools=tools, messages=[ask]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion().choices[0]
    [call] = final.message.tool_calls or []
    turns = [ask, final.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}]  # fmt: skip
    answer = client.chat.completions.create(model=MODEL, tools=tools, messages=turns)
    args = json.loads(call.function.arguments)
    found = (call.id, call.function.name, args, str(final.finish_reason))
    return found, answer.choices[0].message.content or ""


DOORS: dict[str, Callable[[Server], tuple[Call, str]]] = {
    "converse-stream": converse,
    "anthropic": messages,
    "openai-chat": chat,
}
STOPS = {"converse-stream": "tool_use", "anthropic": "tool_use", "openai-chat": "tool_calls"}


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
        routes=[ModelRoute(match="anthropic.*", provider="up", model="scripted-tools")],
    )
    gw = serve(Gateway(settings, {"up": cls("up", up)}))
    yield gw
    stop(gw)


@pytest.mark.parametrize("door", list(DOORS))
def test_a_call_and_its_result_through_every_pair(door: str, relay: Server) -> None:
    (call_id, name, given, stop_reason), answer = DOORS[door](relay)
    assert call_id.startswith("toolu_")  # the upstream's own id, passed through
    assert (name, given, stop_reason) == ("get_weather", INPUT, STOPS[door])
    assert answer.startswith("Tool results: 18 degrees")


def test_an_upstreams_text_and_calls_are_numbered_as_blocks() -> None:
    blocks = Blocks()
    events = [
        *blocks.feed("Looking."),
        *blocks.feed(ToolStart("t1", "a")),
        *blocks.feed(ToolInput("{}")),
        *blocks.feed(ToolStart("t2", "b")),
        *blocks.feed("Done."),
        *blocks.close(),
    ]
    assert events == [
        TextDelta("Looking.", 0),
        BlockStop(0),
        BlockStart(1, "tool_use", "t1", "a"),
        ToolInputDelta("{}", 1),
        BlockStop(1),
        BlockStart(2, "tool_use", "t2", "b"),
        BlockStop(2),
        BlockStart(3),
        TextDelta("Done.", 3),
        BlockStop(3),
    ]
