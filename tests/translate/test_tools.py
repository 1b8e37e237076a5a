"""Tool use in each door's translation: tools, tool choice and tool turns in; tool_use blocks
out, streamed and whole."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sluicegate.errors import ValidationError
from sluicegate.events import (
    BlockStart,
    BlockStop,
    JsonPart,
    MessageDelta,
    MessageStart,
    MessageStop,
    TextDelta,
    Tool,
    ToolChoice,
    ToolInputDelta,
    ToolResult,
    ToolUse,
)
from sluicegate.translate import anthropic, converse, openai, tools
from sluicegate.translate.openai_responses import ResponseMeta, ResponseStream, parse_request

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CALL = [
    MessageStart("msg_1", MODEL, 5),
    BlockStart(0),
    TextDelta("Let me look."),
    BlockStop(0),
    BlockStart(1, "tool_use", "toolu_1", "get_weather"),
    ToolInputDelta('{"city": ', 1),
    ToolInputDelta('"Paris"}', 1),
    BlockStop(1),
    MessageDelta("tool_use", None, 9),
    MessageStop(),
]


# -- Converse ------------------------------------------------------------------------------------


def converse_body(**extra: Any) -> bytes:
    body = {"messages": [{"role": "user", "content": [{"text": "Weather?"}]}], **extra}
    return json.dumps(body).encode()


TOOL_CONFIG = {
    "tools": [
        {"toolSpec": {"name": "get_weather", "description": "d", "inputSchema": {"json": SCHEMA}}},
        {"cachePoint": {"type": "default"}},
    ],
    "toolChoice": {"tool": {"name": "get_weather"}},
}


def test_converse_tool_config_becomes_canonical_tools() -> None:
    request = converse.parse_body(MODEL, converse_body(toolConfig=TOOL_CONFIG))
    assert request.tools == (Tool("get_weather", "d", SCHEMA),)
    assert request.tool_choice == ToolChoice("tool", "get_weather")
    auto = converse.parse_body(MODEL, converse_body(toolConfig={"tools": TOOL_CONFIG["tools"]}))
    assert auto.tool_choice == ToolChoice("auto")


def test_converse_tool_turns_are_read_with_text_and_json_results() -> None:
    turns = [
        {"role": "user", "content": [{"text": "Weather?"}]},
        {"role": "assistant", "content": [
            {"text": "Looking."},
            {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "Paris"}}},
        ]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "t1", "content": [{"json": {"t": 18}}, {"text": "ok"}],
                            "status": "error"}},
        ]},
    ]  # fmt: skip
    raw = json.dumps({"messages": turns, "toolConfig": {"tools": TOOL_CONFIG["tools"]}})
    request = converse.parse_body(MODEL, raw.encode())
    assert request.messages[1].text == "Looking."
    assert request.messages[1].blocks == (ToolUse("t1", "get_weather", {"city": "Paris"}),)
    result = request.messages[2].blocks[0]
    assert result == ToolResult("t1", (JsonPart({"t": 18}), "ok"), True)
    assert isinstance(result, ToolResult) and result.text == '{"t": 18}ok'
    without = json.dumps({"messages": turns}).encode()
    with pytest.raises(ValidationError, match="toolConfig field must be defined"):
        converse.parse_body(MODEL, without)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"tools": []}, "at least one tool"),
        ({"tools": [{"systemTool": {}}]}, "tools of type 'systemTool' are not supported"),
        ({"tools": [{"toolSpec": {"name": "a b", "inputSchema": {"json": {}}}}]}, "tool name"),
        ({"tools": [{"toolSpec": {"name": "a"}}]}, "inputSchema must be an object"),
        ({**TOOL_CONFIG, "toolChoice": {"tool": {"name": "other"}}}, "which is not a tool"),
        ({**TOOL_CONFIG, "toolChoice": {"maybe": {}}}, "toolChoice must be one of"),
    ],
)
def test_converse_bad_tool_configs_name_the_problem(config: Any, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        converse.parse_body(MODEL, converse_body(toolConfig=config))


def test_converse_streams_a_tool_use_block() -> None:
    frames = [converse.stream_event(e) for e in CALL]
    assert frames[1] is None  # no contentBlockStart for text, as Bedrock
    assert frames[4] == (
        "contentBlockStart",
        {"start": {"toolUse": {"toolUseId": "toolu_1", "name": "get_weather"}},
         "contentBlockIndex": 1},
    )  # fmt: skip
    assert frames[5] == (
        "contentBlockDelta",
        {"delta": {"toolUse": {"input": '{"city": '}}, "contentBlockIndex": 1},
    )
    assert frames[7] == ("contentBlockStop", {"contentBlockIndex": 1})
    assert frames[8] == ("messageStop", {"stopReason": "tool_use"})


def test_converse_whole_answer_has_text_and_tool_use() -> None:
    content = converse.response_json(CALL)["output"]["message"]["content"]
    assert content == [
        {"text": "Let me look."},
        {"toolUse": {"toolUseId": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}},
    ]
    assert converse.response_json(CALL)["stopReason"] == "tool_use"


# -- Anthropic -----------------------------------------------------------------------------------


def messages_body(**extra: Any) -> dict[str, Any]:
    return {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Weather?"}],
        **extra,
    }


ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "d", "input_schema": SCHEMA}]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, ToolChoice("auto")),
        ({"type": "any"}, ToolChoice("any")),
        ({"type": "none"}, ToolChoice("none")),
        ({"type": "tool", "name": "get_weather"}, ToolChoice("tool", "get_weather")),
    ],
)
def test_anthropic_tools_and_tool_choice(choice: Any, expected: ToolChoice) -> None:
    extra = {"tools": ANTHROPIC_TOOLS} | ({} if choice is None else {"tool_choice": choice})
    request = anthropic.parse_object(MODEL, messages_body(**extra))
    assert request.tools == (Tool("get_weather", "d", SCHEMA),)
    assert request.tool_choice == expected


def test_anthropic_tool_turns() -> None:
    turns = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "P"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C", "is_error": True},
            {"type": "text", "text": "And tomorrow?"},
        ]},
    ]  # fmt: skip
    request = anthropic.parse_object(MODEL, messages_body(messages=turns, tools=ANTHROPIC_TOOLS))
    assert request.messages[1].blocks == (ToolUse("toolu_1", "get_weather", {"city": "P"}),)
    assert request.messages[2].blocks == (ToolResult("toolu_1", ("18 C",), True),)
    assert request.messages[2].text == "And tomorrow?"
    with pytest.raises(ValidationError, match="must define tools"):
        anthropic.parse_object(MODEL, messages_body(messages=turns))


def test_anthropic_streams_and_answers_tool_use() -> None:
    start = anthropic.event_json(CALL[4])
    assert start == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    }
    assert anthropic.event_json(CALL[5]) == {
        "type": "content_block_delta",
        "index": 1,
        "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
    }
    whole = anthropic.message_json(CALL)
    assert whole["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert whole["stop_reason"] == "tool_use"


# -- OpenAI Chat Completions -----------------------------------------------------------------------


def chat(**extra: Any) -> openai.ChatCall:
    body = {"model": "m", "messages": [{"role": "user", "content": "Weather?"}], **extra}
    return openai.parse_chat_body(body)


FUNCTIONS = [
    {"type": "function", "function": {"name": "get_weather", "description": "d",
                                      "parameters": SCHEMA}},
]  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", ToolChoice("auto")),
        ("required", ToolChoice("any")),
        ("none", ToolChoice("none")),
        ({"type": "function", "function": {"name": "get_weather"}},
         ToolChoice("tool", "get_weather")),
    ],
)  # fmt: skip
def test_openai_tools_and_tool_choice(choice: Any, expected: ToolChoice) -> None:
    request = chat(tools=FUNCTIONS, tool_choice=choice).request
    assert request.tools == (Tool("get_weather", "d", SCHEMA),)
    assert request.tool_choice == expected


def test_openai_tool_calls_and_tool_messages_become_turns() -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "user", "content": "Thanks"},
    ]  # fmt: skip
    turns = chat(messages=messages, tools=FUNCTIONS).request.messages
    assert [m.role for m in turns] == ["user", "assistant", "user"]
    assert turns[1].blocks == (ToolUse("call_1", "get_weather", {"city": "Paris"}),)
    assert turns[2].blocks == (ToolResult("call_1", ("18 C",)),) and turns[2].text == "Thanks"


def test_openai_streams_tool_calls_by_their_own_index() -> None:
    stream = openai.ChatStream("c1", 1, "m", False)
    chunks = [json.loads(d) for e in CALL for d in stream.feed(e) if d != openai.DONE]
    calls = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if "tool_calls" in
             c["choices"][0]["delta"]]  # fmt: skip
    assert calls[0] == [{"index": 0, "id": "toolu_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]  # fmt: skip
    assert "".join(c[0]["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    whole = openai.completion_json("c1", 1, "m", CALL)["choices"][0]
    assert whole["finish_reason"] == "tool_calls"
    assert whole["message"]["tool_calls"] == [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    ]  # fmt: skip


# -- shared --------------------------------------------------------------------------------------


def test_blocks_put_a_calls_input_together_and_tolerate_a_cut() -> None:
    found = tools.blocks(CALL)
    assert [b.kind for b in found] == ["text", "tool_use"]
    assert found[1].input == {"city": "Paris"}
    assert tools.Block("tool_use", input_json='{"city": "Pa').input == {}


def test_tool_names_must_be_unique() -> None:
    twice = (Tool("a"), Tool("a"))
    with pytest.raises(ValidationError, match="unique"):
        tools.check_tools(twice, ToolChoice())


# -- OpenAI Responses ------------------------------------------------------------------------------


def test_responses_tools_and_function_call_items_in() -> None:
    body = {
        "model": "m",
        "tools": [{"type": "function", "name": "get_weather", "parameters": SCHEMA}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "input": [
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "18 C"},
        ],
    }  # fmt: skip
    request = parse_request(json.dumps(body).encode()).request
    assert request.tools == (Tool("get_weather", "", SCHEMA),)
    assert request.tool_choice == ToolChoice("tool", "get_weather")
    assert request.messages[1].blocks == (ToolUse("c1", "get_weather", {"city": "Paris"}),)
    assert request.messages[2].blocks == (ToolResult("c1", ("18 C",)),)


def test_responses_stream_a_function_call_item() -> None:
    meta = ResponseMeta("resp_abc", 1000, parse_request(b'{"model": "m", "input": "hi"}'))
    stream = ResponseStream(meta)
    out = [e for event in CALL for e in stream.feed(event)]
    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    call = out[-1]["response"]["output"][1]
    assert call == {"type": "function_call", "id": "fc_abc_1", "call_id": "toolu_1",
                    "name": "get_weather", "arguments": '{"city": "Paris"}',
                    "status": "completed"}  # fmt: skip
    assert out[-1]["response"]["status"] == "completed"
