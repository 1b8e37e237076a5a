"""Tests for the Converse / ConverseStream / CountTokens translation."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sluicegate.errors import SluicegateError, ValidationError
from sluicegate.events import (
    BlockStart,
    BlockStop,
    ChatRequest,
    ErrorEvent,
    Event,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    Metrics,
    Ping,
    TextDelta,
    Usage,
)
from sluicegate.translate.converse import (
    DEFAULT_MAX_TOKENS,
    count_input,
    dumps,
    parse_body,
    response_json,
    stream_event,
)

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def text(value: str) -> list[dict[str, str]]:
    return [{"text": value}]


def user(value: str) -> dict[str, Any]:
    return {"role": "user", "content": text(value)}


def assistant(value: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text(value)}


def parse(body: Any) -> ChatRequest:
    return parse_body(MODEL, json.dumps(body).encode())


def rejected(body: Any, fn: Any = parse_body) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ValidationError) as info:
        fn(MODEL, raw)
    return info.value.message


# -- parse_body ---------------------------------------------------------------------------------


def test_minimal_body_gets_defaults() -> None:
    assert parse({"messages": [user("Hello")]}) == ChatRequest(
        model=MODEL,
        messages=(Message("user", "Hello"),),
        max_tokens=DEFAULT_MAX_TOKENS,
        system="",
        temperature=None,
        top_p=None,
        top_k=None,
        stop_sequences=(),
    )
    assert DEFAULT_MAX_TOKENS == 2048


def test_full_body() -> None:
    body = {
        "modelId": "ignored-in-favour-of-the-path",
        "messages": [
            {"role": "user", "content": [{"text": "Hello, "}, {"text": "wörld"}]},
            assistant("Hi."),
            user("Again 🙂"),
        ],
        "system": [{"text": "Be brief."}, {"text": "Be kind."}],
        "inferenceConfig": {
            "maxTokens": 100,
            "temperature": 0.2,
            "topP": 0.8,
            "stopSequences": ["STOP", "\n\n"],
        },
        "additionalModelRequestFields": {"top_k": 5},
        "requestMetadata": {"tenant": "t1"},
    }
    assert parse(body) == ChatRequest(
        model=MODEL,
        messages=(
            Message("user", "Hello, wörld"),
            Message("assistant", "Hi."),
            Message("user", "Again 🙂"),
        ),
        max_tokens=100,
        system="Be brief.\nBe kind.",
        temperature=0.2,
        top_p=0.8,
        top_k=5,
        stop_sequences=("STOP", "\n\n"),
    )


def test_assistant_last_turn_is_accepted() -> None:
    assert parse({"messages": [user("Count"), assistant("1, 2,")]}).messages[-1] == Message(
        "assistant", "1, 2,"
    )


def test_null_configs_mean_defaults() -> None:
    request = parse(
        {"messages": [user("x")], "inferenceConfig": None, "additionalModelRequestFields": None}
    )
    assert (request.max_tokens, request.temperature, request.top_k) == (2048, None, None)


def test_omitted_sampling_parameters_stay_unset_for_the_model_defaults() -> None:
    request = parse({"messages": [user("x")], "inferenceConfig": {"maxTokens": 9}})
    assert (request.temperature, request.top_p, request.top_k) == (None, None, None)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0])
def test_explicit_sampling_values_are_kept_even_at_the_edges(value: float) -> None:
    body = {
        "messages": [user("x")],
        "inferenceConfig": {"temperature": value, "topP": value},
        "additionalModelRequestFields": {"top_k": int(value)},
    }
    request = parse(body)
    assert (request.temperature, request.top_p, request.top_k) == (value, value, value)
    assert request.temperature is not None and request.top_p is not None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [user("a"), user("b")]}, "messages[1] has role 'user'"),
        ({"messages": [assistant("a")]}, "messages[0] has role 'assistant'"),
        ({"messages": [{"role": "system", "content": text("a")}]}, "role must be 'user' or"),
        ({"messages": []}, "messages must be a non-empty list."),
        ({}, "messages must be a non-empty list."),
        ({"messages": [{"role": "user", "content": "a"}]}, "messages[0].content must be a non-"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content must be a non-"),
        (
            {"messages": [{"role": "user", "content": [{"image": {"format": "png"}}]}]},
            "messages[0].content: content blocks of type 'image' are not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{}]}]},
            "content blocks of type None are not supported",
        ),
        ({"messages": [user("a")], "system": "Be brief."}, "system must be a list"),
        (
            {"messages": [user("a")], "system": [{"guardContent": {}}]},
            "system: content blocks of type 'guardContent' are not supported",
        ),
        ({"messages": [user("a")], "foo": 1}, "Unknown parameter in input: 'foo'."),
        ({"messages": [user("a")], "toolConfig": {}}, "toolConfig must be an object with a list"),
        ({"messages": [user("a")], "guardrailConfig": {}}, "guardrailConfig is not supported"),
        ({"messages": [user("a")], "inferenceConfig": "x"}, "must be objects"),
        ({"messages": [user("a")], "additionalModelRequestFields": [1]}, "must be objects"),
        ({"messages": [user("a")], "inferenceConfig": {"maxTokens": 0}}, "#/maxTokens: 0 is not"),
        (
            {"messages": [user("a")], "inferenceConfig": {"maxTokens": "9"}},
            "#/maxTokens: expected an integer",
        ),
        (
            {"messages": [user("a")], "inferenceConfig": {"temperature": 1.5}},
            "#/temperature: 1.5 is not between 0 and 1",
        ),
        ({"messages": [user("a")], "inferenceConfig": {"topP": -1}}, "#/topP: -1 is not between"),
        (
            {"messages": [user("a")], "inferenceConfig": {"stopSequences": "STOP"}},
            "#/stopSequences: expected a list of strings",
        ),
        (
            {"messages": [user("a")], "additionalModelRequestFields": {"top_k": -2}},
            "#/top_k: -2 is not greater or equal to 0",
        ),
        (b"{oops", "the body is not valid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
    ],
)
def test_invalid_bodies_name_the_problem(body: Any, expected: str) -> None:
    assert expected in rejected(body)


def test_role_error_explains_the_rule() -> None:
    message = rejected({"messages": [user("a"), user("b")]})
    assert "alternate between user and assistant roles, starting with user" in message


@pytest.mark.parametrize("value", [[], 0, False, ""])
def test_falsy_non_object_inference_config_is_rejected(value: Any) -> None:
    assert "must be objects" in rejected({"messages": [user("a")], "inferenceConfig": value})


# -- count_input --------------------------------------------------------------------------------


def count_body(input_: Any) -> bytes:
    return json.dumps({"input": input_}).encode()


def test_count_input_from_converse() -> None:
    raw = count_body({"converse": {"messages": [user("Hi")], "system": text("Sys")}})
    request = count_input(MODEL, raw)
    assert request.messages == (Message("user", "Hi"),)
    assert request.system == "Sys"
    assert request.model == MODEL


def test_count_input_from_invoke_model_body() -> None:
    anthropic_body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 77,
        "system": "Sys",
        "messages": [{"role": "user", "content": "Bonjour, café"}],
    }
    blob = base64.b64encode(json.dumps(anthropic_body).encode()).decode()
    request = count_input(MODEL, count_body({"invokeModel": {"body": blob}}))
    assert request.messages == (Message("user", "Bonjour, café"),)
    assert request.max_tokens == 77
    assert request.system == "Sys"


def test_count_input_validates_the_inner_anthropic_body() -> None:
    inner = json.dumps({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    blob = base64.b64encode(inner.encode()).decode()
    message = rejected(count_body({"invokeModel": {"body": blob}}), count_input)
    assert "required key [anthropic_version] not found" in message


@pytest.mark.parametrize(
    ("input_", "expected"),
    [
        ({"invokeModel": {"body": "not base64 at all!"}}, "input.invokeModel.body is not valid"),
        ({"invokeModel": {"body": "abc"}}, "input.invokeModel.body is not valid base64."),
        ({"invokeModel": {"body": 12}}, "input.invokeModel.body must be a base64 string."),
        ({"invokeModel": {}}, "input.invokeModel.body must be a base64 string."),
        ({"invokeModel": {"body": base64.b64encode(b"{nope").decode()}}, "not valid JSON"),
        ({"converse": {"messages": []}}, "messages must be a non-empty list."),
        ({"other": {}}, "input must hold either 'invokeModel' {body} or 'converse' {messages}."),
        ("text", "input must hold either"),
        (None, "input must hold either"),
    ],
)
def test_count_input_errors(input_: Any, expected: str) -> None:
    assert expected in rejected(count_body(input_), count_input)


def test_count_input_rejects_non_object_and_malformed_bodies() -> None:
    assert "input must hold either" in rejected(b"[]", count_input)
    assert "not valid JSON" in rejected(b"{", count_input)


# -- stream_event and response_json -------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (MessageStart("msg_1", MODEL, 9), ("messageStart", {"role": "assistant"})),
        (BlockStart(), None),
        (BlockStart(1), None),
        (
            TextDelta("Hi 🙂"),
            ("contentBlockDelta", {"delta": {"text": "Hi 🙂"}, "contentBlockIndex": 0}),
        ),
        (
            TextDelta("x", 2),
            ("contentBlockDelta", {"delta": {"text": "x"}, "contentBlockIndex": 2}),
        ),
        (BlockStop(), ("contentBlockStop", {"contentBlockIndex": 0})),
        (BlockStop(2), ("contentBlockStop", {"contentBlockIndex": 2})),
        (MessageDelta("end_turn", None, 5), ("messageStop", {"stopReason": "end_turn"})),
        (MessageDelta("stop_sequence", "END", 5), ("messageStop", {"stopReason": "stop_sequence"})),
        (MessageDelta("max_tokens"), ("messageStop", {"stopReason": "max_tokens"})),
        (
            MessageStop(Usage(3, 4), Metrics(queue_ms=1, first_token_ms=10, total_ms=250)),
            (
                "metadata",
                {
                    "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
                    "metrics": {"latencyMs": 250},
                },
            ),
        ),
        (
            MessageStop(Usage(2, 0)),
            (
                "metadata",
                {
                    "usage": {"inputTokens": 2, "outputTokens": 0, "totalTokens": 2},
                    "metrics": {"latencyMs": 0},
                },
            ),
        ),
        (ErrorEvent("ModelStreamError", "boom"), None),
        (Ping(), None),
    ],
)
def test_stream_event(event: Event, expected: tuple[str, dict[str, Any]] | None) -> None:
    assert stream_event(event) == expected


def test_a_whole_stream_has_no_content_block_start() -> None:
    events: list[Event] = [
        MessageStart("msg_1", MODEL, 9),
        BlockStart(),
        TextDelta("Hel"),
        TextDelta("lo"),
        BlockStop(),
        MessageDelta("end_turn", None, 2),
        MessageStop(Usage(9, 2), Metrics(0, 1, 2)),
    ]
    frames = [f for f in (stream_event(e) for e in events) if f is not None]
    assert [name for name, _ in frames] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]


def test_response_json() -> None:
    events: list[Event] = [
        MessageStart("msg_1", MODEL, 9),
        BlockStart(),
        TextDelta("Hel"),
        TextDelta("lo, 日本"),
        BlockStop(),
        MessageDelta("max_tokens", None, 2),
        MessageStop(Usage(9, 2), Metrics(queue_ms=0, first_token_ms=5, total_ms=42)),
    ]
    assert response_json(events) == {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello, 日本"}]}},
        "stopReason": "max_tokens",
        "usage": {"inputTokens": 9, "outputTokens": 2, "totalTokens": 11},
        "metrics": {"latencyMs": 42},
    }


def test_dumps_is_compact_utf8() -> None:
    raw = dumps({"delta": {"text": "café 🙂"}, "n": 1})
    assert raw == '{"delta":{"text":"café 🙂"},"n":1}'.encode()


@pytest.mark.parametrize("reason", ["cancelled", "disconnected", "timeout", "error"])
def test_early_stop_reasons_never_become_a_converse_stop_reason(reason: Any) -> None:
    """Converse has no word for an early end: the stream sends no messageStop (its metadata
    still reports the usage so far), and a whole response is the error that stands for it."""
    events: list[Event] = [
        MessageStart("msg_1", MODEL, 9),
        BlockStart(),
        TextDelta("Hel"),
        BlockStop(),
        MessageDelta(reason, None, 1),
        MessageStop(Usage(9, 1), Metrics(0, 1, 2)),
    ]
    frames = [f for f in (stream_event(e) for e in events) if f is not None]
    assert [name for name, _ in frames] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "metadata",
    ]
    assert frames[-1][1]["usage"]["outputTokens"] == 1
    with pytest.raises(SluicegateError) as info:
        response_json(events)
    expected = {"timeout": "ModelTimeoutException"}.get(reason, "InternalServerException")
    assert info.value.aws == expected
    assert "after 1 output tokens" in info.value.message
