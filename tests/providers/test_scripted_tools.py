"""The scripted provider's tool calls: a plan of calls from `sluicegate:tool=` directives."""

from __future__ import annotations

import asyncio
import json

from sluicegate.events import (
    BlockStart,
    ChatRequest,
    Event,
    Message,
    MessageDelta,
    TextDelta,
    Tool,
    ToolChoice,
    ToolInputDelta,
    ToolResult,
    ToolUse,
)
from sluicegate.generation import Meter
from sluicegate.providers.scripted import ScriptedProvider, example

ADD = Tool("add", "", {"type": "object", "properties": {"a": {"type": "integer"}},
                       "required": ["a"]})  # fmt: skip
UPPER = Tool("upper", "", {"type": "object", "properties": {"s": {"type": "string"}},
                           "required": ["s"]})  # fmt: skip


def run(request: ChatRequest) -> list[Event]:
    async def go() -> list[Event]:
        provider = ScriptedProvider(delay=0, length=8)
        return [e async for e in provider.stream(request, Meter(key="k"))]

    return asyncio.run(go())


def call_of(events: list[Event]) -> tuple[str, object] | None:
    start = next((e for e in events if isinstance(e, BlockStart) and e.kind == "tool_use"), None)
    if start is None:
        return None
    text = "".join(e.partial_json for e in events if isinstance(e, ToolInputDelta))
    return start.tool_name, json.loads(text)


def test_a_plan_of_two_calls_then_text() -> None:
    ask = Message("user", 'sluicegate:tool=add{"a": 2} then sluicegate:tool=upper')
    first = run(ChatRequest("m", (ask,), 50, tools=(ADD, UPPER)))
    assert call_of(first) == ("add", {"a": 2})
    assert [e.stop_reason for e in first if isinstance(e, MessageDelta)] == ["tool_use"]
    start = next(e for e in first if isinstance(e, BlockStart))
    assert start == next(e for e in run(ChatRequest("m", (ask,), 50, tools=(ADD, UPPER)))
                         if isinstance(e, BlockStart))  # fmt: skip
    turns = (
        ask,
        Message("assistant", "", (ToolUse(start.tool_id, "add", {"a": 2}),)),
        Message("user", "", (ToolResult(start.tool_id, ("3",)),)),
    )
    second = run(ChatRequest("m", turns, 50, tools=(ADD, UPPER)))
    assert call_of(second) == ("upper", {"s": "example"})
    turns += (
        Message("assistant", "", (ToolUse("t2", "upper", {"s": "example"}),)),
        Message("user", "", (ToolResult("t2", ("EXAMPLE",)),)),
    )
    last = run(ChatRequest("m", turns, 50, tools=(ADD, UPPER)))
    assert call_of(last) is None
    assert "".join(e.text for e in last if isinstance(e, TextDelta)).startswith(
        "Tool results: EXAMPLE"
    )


def test_forced_choices_call_without_a_plan_and_none_never_calls() -> None:
    ask = (Message("user", "Hello"),)
    assert call_of(run(ChatRequest("m", ask, 50, tools=(ADD, UPPER)))) is None
    forced = ChatRequest("m", ask, 50, tools=(ADD, UPPER), tool_choice=ToolChoice("tool", "upper"))
    assert call_of(run(forced)) == ("upper", {"s": "example"})
    assert call_of(run(ChatRequest("m", ask, 50, tools=(ADD,), tool_choice=ToolChoice("any"))))
    planned = (Message("user", "sluicegate:tool=add"),)
    none = ChatRequest("m", planned, 50, tools=(ADD,), tool_choice=ToolChoice("none"))
    assert call_of(run(none)) is None


def test_examples_follow_the_schema() -> None:
    schema = {
        "type": "object",
        "required": ["u", "n", "o"],
        "properties": {
            "u": {"enum": ["c", "f"]},
            "n": {"type": ["number", "null"]},
            "o": {"type": "object", "properties": {"x": {"type": "boolean"}}, "required": ["x"]},
        },
    }
    assert example(schema) == {"u": "c", "n": 1, "o": {"x": True}}
