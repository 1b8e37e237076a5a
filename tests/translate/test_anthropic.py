"""Tests for the Anthropic Messages (Bedrock InvokeModel) translation: bodies in, events out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate import errors
from sluicegate.errors import ValidationError
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
from sluicegate.translate import anthropic
from sluicegate.translate.anthropic import (
    api_events,
    early_end,
    event_json,
    invocation_metrics,
    message_json,
    parse_body,
    parse_count,
    parse_request,
)

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
DROP = object()  # marks a key to remove from the seed body


def seed(**changes: Any) -> dict[str, Any]:
    """The seed body of PROTOCOLS.md §1.3, with keys changed, added or (with DROP) removed."""
    body: dict[str, Any] = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "Write a haiku about rivers."}],
    }
    for key, value in changes.items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def parse(body: Any) -> ChatRequest:
    return parse_body(MODEL, json.dumps(body).encode())


def rejected(body: Any) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ValidationError) as info:
        parse_body(MODEL, raw)
    assert info.value.status == 400
    assert info.value.aws == "ValidationException"
    return info.value.message


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


# -- parse_body: accepted bodies ----------------------------------------------------------------


def test_seed_body_gives_canonical_request_with_defaults() -> None:
    assert parse(seed()) == ChatRequest(
        model=MODEL,
        messages=(Message("user", "Write a haiku about rivers."),),
        max_tokens=2048,
        system="",
        temperature=None,
        top_p=None,
        top_k=None,
        stop_sequences=(),
        seed=None,
    )


def test_model_id_comes_from_the_path_not_the_body() -> None:
    assert parse_body("my-alias", json.dumps(seed()).encode()).model == "my-alias"


def test_list_of_text_blocks_is_concatenated() -> None:
    blocks = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "wörld 🙂"}]
    request = parse(seed(messages=[user(blocks)]))
    assert request.messages == (Message("user", "Hello, wörld 🙂"),)


def test_system_as_string() -> None:
    assert parse(seed(system="You are terse.")).system == "You are terse."


def test_system_as_list_of_blocks_joins_with_newlines() -> None:
    system = [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Use French."}]
    assert parse(seed(system=system)).system == "You are terse.\nUse French."


def test_sampling_parameters_and_stop_sequences() -> None:
    request = parse(
        seed(temperature=0.25, top_p=0.9, top_k=40, stop_sequences=["\n\nHuman:", "END"])
    )
    assert request.temperature == 0.25
    assert request.top_p == 0.9
    assert request.top_k == 40
    assert request.stop_sequences == ("\n\nHuman:", "END")


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0])
def test_temperature_bounds_are_inclusive_and_give_floats(value: float) -> None:
    temperature = parse(seed(temperature=value)).temperature
    assert temperature == value
    assert type(temperature) is float


def test_omitted_sampling_parameters_stay_unset_for_the_model_defaults() -> None:
    request = parse(seed())
    assert (request.temperature, request.top_p, request.top_k) == (None, None, None)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0])
def test_explicit_sampling_values_are_kept_even_at_the_edges(value: float) -> None:
    request = parse(seed(temperature=value, top_p=value, top_k=int(value)))
    assert (request.temperature, request.top_p, request.top_k) == (value, value, value)
    assert request.temperature is not None and request.top_p is not None


@pytest.mark.parametrize(
    "version",
    ["bedrock-2023-05-31", "2023-06-01", "bedrock-2026-10-21", "2026-10-21", "2024-02-29"],
)
def test_anthropic_version_is_any_dated_version(version: str) -> None:
    assert parse(seed(anthropic_version=version)).max_tokens == 2048


@pytest.mark.parametrize(
    "version",
    ["banana", "bedrock-2023-13-45", "2023-02-29", "bedrock-", "", "bedrock-2023-5-31",
     "2023-05-31x", " 2023-05-31", "vertex-2023-10-16", 20230531, None],
)  # fmt: skip
def test_anthropic_version_must_be_a_real_date(version: Any) -> None:
    message = rejected(seed(anthropic_version=version))
    assert message.startswith("Malformed input request: #/anthropic_version: ")
    assert "is not a version such as 'bedrock-2023-05-31'" in message


def test_alternating_conversation_is_kept_in_order() -> None:
    messages = [user("one"), assistant("two"), user([{"type": "text", "text": "three"}])]
    assert parse(seed(messages=messages)).messages == (
        Message("user", "one"),
        Message("assistant", "two"),
        Message("user", "three"),
    )


def test_assistant_last_turn_is_a_prefill() -> None:
    request = parse(seed(messages=[user("Count to 3."), assistant("1, 2,")]))
    assert request.messages[-1] == Message("assistant", "1, 2,")
    assert len(request.messages) == 2


def test_metadata_is_accepted() -> None:
    assert parse(seed(metadata={"user_id": "u-1"})).max_tokens == 2048


# -- parse_body: rejected bodies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"", "the body is not valid JSON"),
        (b"\xff\xfe\x00garbage", "the body is not valid JSON"),
        (b"[]", "the body must be a JSON object"),
        (b'"hello"', "the body must be a JSON object"),
        (b"null", "the body must be a JSON object"),
    ],
)
def test_malformed_bodies(raw: bytes, expected: str) -> None:
    message = rejected(raw)
    assert expected in message
    assert message.startswith("Malformed input request:")


BAD_BODIES = [
    (seed(anthropic_version=DROP), "required key [anthropic_version] not found"),
    (seed(anthropic_version="banana"), '#/anthropic_version: "banana" is not a version such as'),
    (seed(max_tokens=DROP), "required key [max_tokens] not found"),
    (seed(stream=True), "extraneous key [stream] is not permitted"),
    (seed(model=MODEL), "extraneous key [model] is not permitted"),
    (seed(max_tokens=0), "#/max_tokens: 0 is not greater or equal to 1"),
    (seed(max_tokens=-5), "#/max_tokens: -5 is not greater or equal to 1"),
    (seed(max_tokens="100"), '#/max_tokens: expected an integer, found "100"'),
    (seed(max_tokens=True), "#/max_tokens: expected an integer, found true"),
    (seed(max_tokens=10.5), "#/max_tokens: expected an integer, found 10.5"),
    (seed(max_tokens=None), "#/max_tokens: expected an integer, found null"),
    (seed(temperature=1.5), "#/temperature: 1.5 is not between 0 and 1"),
    (seed(temperature=-0.1), "#/temperature: -0.1 is not between 0 and 1"),
    (seed(temperature="hot"), '#/temperature: expected a number, found "hot"'),
    (seed(temperature=False), "#/temperature: expected a number, found false"),
    (seed(top_p=2), "#/top_p: 2 is not between 0 and 1"),
    (seed(top_k=-1), "#/top_k: -1 is not greater or equal to 0"),
    (seed(top_k=2.5), "#/top_k: expected an integer"),
    (seed(stop_sequences="END"), "#/stop_sequences: expected a list of strings"),
    (seed(stop_sequences=["END", 3]), "#/stop_sequences: expected a list of strings"),
    (seed(messages=[]), "#/messages: expected a non-empty list of messages"),
    (seed(messages=DROP), "#/messages: expected a non-empty list of messages"),
    (seed(messages={"role": "user"}), "#/messages: expected a non-empty list of messages"),
    (seed(messages=[{"role": "system", "content": "x"}]), "needs a role of 'user' or 'assistant'"),
    (seed(messages=["hello"]), "#/messages/0: each message needs a role"),
    (
        seed(messages=[{"role": "user", "content": "x", "name": "bob"}]),
        "#/messages/0: extraneous key [name] is not permitted",
    ),
    (seed(messages=[user("hi"), user("again")]), "message 1 has role 'user'"),
    (seed(messages=[user("a"), assistant("b"), assistant("c")]), "message 2 has role 'assistant'"),
    (seed(messages=[assistant("hi")]), "message 0 has role 'assistant'"),
    (seed(messages=[user([])]), "#/messages/0/content: expected a string or a non-empty list"),
    (seed(messages=[user(None)]), "#/messages/0/content: expected a string or a non-empty list"),
    (seed(messages=[{"role": "user"}]), "#/messages/0/content: expected a string"),
    (
        seed(messages=[user([{"type": "video", "url": "x"}])]),
        'unknown content block type "video"',
    ),
    (seed(messages=[user([{"text": "no type"}])]), "unknown content block type null"),
    (seed(messages=[user(["plain string block"])]), "unknown content block type null"),
    (
        seed(messages=[user([{"type": "image", "source": {}}])]),
        "#/messages/0/content/0: content blocks of type 'image' are not supported yet",
    ),
    (
        seed(messages=[user([{"type": "text", "text": "a"}, {"type": "tool_result"}])]),
        "#/messages/0/content/1: required key [tool_use_id] not found",
    ),
    (seed(system=42), "#/system: expected a string or a list of text blocks"),
    (seed(system=[{"type": "image"}]), "content blocks of type 'image' are not supported yet"),
    (seed(tools=[{"type": "web_search_20250305"}]), "server tools ('web_search_20250305')"),
    (seed(tool_choice={"type": "sometimes"}), "#/tool_choice/type: expected one of"),
    (seed(thinking={"type": "enabled"}), "[thinking] is not supported by sluicegate yet"),
]


@pytest.mark.parametrize(("body", "expected"), BAD_BODIES)
def test_invalid_bodies_name_the_problem(body: dict[str, Any], expected: str) -> None:
    assert expected in rejected(body)


def test_roles_error_explains_the_rule() -> None:
    message = rejected(seed(messages=[user("hi"), user("again")]))
    assert "roles must alternate between 'user' and 'assistant', starting with 'user'" in message


def test_stream_and_model_both_present_names_one_of_them() -> None:
    message = rejected(seed(stream=True, model=MODEL))
    assert "extraneous key [model] is not permitted" in message


def test_text_block_with_non_string_text_says_what_is_wrong() -> None:
    message = rejected(seed(messages=[user([{"type": "text", "text": 5}])]))
    assert "unknown content block type" not in message


# -- event_json: canonical events to Anthropic stream events (PROTOCOLS.md §1.3) -----------------


def test_message_start_shape() -> None:
    data = event_json(MessageStart("msg_bdrk_01", MODEL, 10))
    assert data is not None
    usage = data["message"].pop("usage")
    assert data == {
        "type": "message_start",
        "message": {
            "id": "msg_bdrk_01",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        },
    }
    assert usage["input_tokens"] == 10
    assert isinstance(usage["output_tokens"], int)
    assert set(usage) == {"input_tokens", "output_tokens"}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            BlockStart(),
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            BlockStart(2),
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            TextDelta("Hi"),
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hi"},
            },
        ),
        (
            TextDelta("日本語 🙂", 1),
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": "日本語 🙂"},
            },
        ),
        (BlockStop(), {"type": "content_block_stop", "index": 0}),
        (BlockStop(3), {"type": "content_block_stop", "index": 3}),
        (
            MessageDelta("end_turn", None, 15),
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        (
            MessageDelta("stop_sequence", "END", 4),
            {
                "type": "message_delta",
                "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
                "usage": {"output_tokens": 4},
            },
        ),
        (
            MessageDelta("cancelled", None, 2),
            {
                "type": "message_delta",
                "delta": {"stop_reason": "cancelled", "stop_sequence": None},
                "usage": {"output_tokens": 2},
            },
        ),
        (MessageStop(Usage(10, 15), Metrics(1, 2, 3)), {"type": "message_stop"}),
        (
            ErrorEvent("ModelStreamError", "the model broke"),
            {"type": "error", "error": {"type": "api_error", "message": "the model broke"}},
        ),
        (Ping(), {"type": "ping"}),
    ],
)
def test_event_shapes(event: Event, expected: dict[str, Any]) -> None:
    assert event_json(event) == expected


def test_a_whole_stream_has_the_bedrock_order_and_is_json() -> None:
    events: list[Event] = [
        MessageStart("msg_bdrk_01", MODEL, 10),
        BlockStart(),
        TextDelta("Hi"),
        TextDelta(" there"),
        BlockStop(),
        MessageDelta("end_turn", None, 15),
        MessageStop(Usage(10, 15), Metrics(0, 5, 9)),
    ]
    chunks = [event_json(e) for e in events]
    assert [c["type"] for c in chunks if c is not None] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    # Every chunk must survive a JSON round trip unchanged (it goes on the wire as bytes).
    assert [json.loads(json.dumps(c)) for c in chunks] == chunks


# -- invocation_metrics and message_json --------------------------------------------------------


def test_invocation_metrics_from_usage_and_metrics() -> None:
    stop = MessageStop(Usage(10, 15), Metrics(queue_ms=3, first_token_ms=1507, total_ms=1798))
    assert invocation_metrics(stop) == {
        "inputTokenCount": 10,
        "outputTokenCount": 15,
        "invocationLatency": 1798,
        "firstByteLatency": 1507,
    }


def test_invocation_metrics_without_metrics_are_zero() -> None:
    assert invocation_metrics(MessageStop(Usage(4, 2))) == {
        "inputTokenCount": 4,
        "outputTokenCount": 2,
        "invocationLatency": 0,
        "firstByteLatency": 0,
    }


def test_invocation_metrics_without_a_first_token_use_total_latency() -> None:
    stop = MessageStop(Usage(4, 0), Metrics(queue_ms=0, first_token_ms=None, total_ms=250))
    assert invocation_metrics(stop)["firstByteLatency"] == 250


def test_invocation_metrics_keep_a_zero_first_token_latency() -> None:
    stop = MessageStop(Usage(4, 9), Metrics(queue_ms=0, first_token_ms=0, total_ms=250))
    assert invocation_metrics(stop)["firstByteLatency"] == 0


def test_message_json_spells_out_the_message() -> None:
    events: list[Event] = [
        MessageStart("msg_bdrk_42", MODEL, 12),
        BlockStart(),
        TextDelta("Rivers "),
        Ping(),
        TextDelta("run, "),
        TextDelta("café 🙂"),
        BlockStop(),
        MessageDelta("stop_sequence", "END", 3),
        MessageStop(Usage(12, 3), Metrics(0, 1, 2)),
    ]
    assert message_json(events) == {
        "id": "msg_bdrk_42",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Rivers run, café 🙂"}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }


def test_message_json_usage_comes_from_message_stop() -> None:
    events: list[Event] = [
        MessageStart("msg_bdrk_1", MODEL, 0),
        MessageDelta("cancelled", None, 1),
        MessageStop(Usage(7, 5)),
    ]
    data = message_json(events)
    assert data["usage"] == {"input_tokens": 7, "output_tokens": 5}
    assert data["content"] == [{"type": "text", "text": ""}]
    assert data["stop_reason"] == "cancelled"
    assert data["stop_sequence"] is None


# -- the Messages API's own body (POST /v1/messages, count_tokens) ------------------------------


def api(**changes: Any) -> dict[str, Any]:
    """The seed body as the Messages API takes it: the model inside, no anthropic_version."""
    return seed(**{"anthropic_version": DROP, "model": "claude-sonnet-4-5", **changes})


def api_rejected(body: Any, parse: Any = parse_request) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ValidationError) as info:
        parse(raw)
    assert not isinstance(info.value, errors.PayloadTooLarge)
    return info.value.message


def test_api_body_names_its_model_and_stream() -> None:
    request, stream = parse_request(json.dumps(api(stream=True, system="Terse.")).encode())
    assert stream is True
    assert request == ChatRequest(
        model="claude-sonnet-4-5",
        messages=(Message("user", "Write a haiku about rivers."),),
        max_tokens=2048,
        system="Terse.",
    )
    assert parse_request(json.dumps(api()).encode())[1] is False


def test_api_body_accepts_hosting_options_and_ignores_them() -> None:
    body = api(service_tier="auto", inference_geo="us", speed="fast", metadata={"user_id": "u"})
    assert (
        parse_request(json.dumps(body).encode())[0] == parse_request(json.dumps(api()).encode())[0]
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (api(model=DROP), "model: Field required"),
        (api(max_tokens=DROP), "max_tokens: Field required"),
        (api(model=""), 'model: expected a model id, found ""'),
        (api(model=7), "model: expected a model id, found 7"),
        (api(stream="yes"), 'stream: expected a boolean, found "yes"'),
        (api(anthropic_version="2023-06-01"), "anthropic_version: Extra inputs are not permitted"),
        (api(anthropic_beta=["x"]), "anthropic_beta: Extra inputs are not permitted"),
        (api(max_tokens=-5), "max_tokens: -5 is not greater or equal to 1"),
        (api(messages=[]), "messages: expected a non-empty list of messages"),
        (api(messages=[user([])]), "messages.0.content: expected a string or a non-empty list"),
        (api(messages=[user("a"), user("b")]), "messages: roles must alternate"),
        (api(tools=[{"name": "x"}]), "tools.0: required key [input_schema] not found"),
        (api(output_config={}), "[output_config] is not supported by sluicegate yet"),
        (b"[]", "the body must be a JSON object"),
    ],
)
def test_api_body_errors_are_worded_as_the_messages_api_words_them(
    body: Any, expected: str
) -> None:
    message = api_rejected(body)
    assert message.startswith(expected)
    assert "#" not in message and "Malformed input request" not in message


def test_count_body_needs_no_max_tokens() -> None:
    body = {"model": "m", "system": "S", "messages": [user("Hi")]}
    request = parse_count(json.dumps(body).encode())
    assert (request.model, request.system, request.messages) == ("m", "S", (Message("user", "Hi"),))
    assert "max_tokens: Extra inputs" in api_rejected({**body, "max_tokens": 5}, parse_count)
    assert "model: Field required" in api_rejected({"messages": [user("Hi")]}, parse_count)


def test_bedrock_errors_keep_their_own_wording() -> None:
    assert rejected(seed(max_tokens=-5)).startswith("Malformed input request: #/max_tokens: -5")


TEXT_START = {
    "type": "content_block_start",
    "index": 0,
    "content_block": {"type": "text", "text": ""},
}


def error_of(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (BlockStart(), ([TEXT_START, {"type": "ping"}], False)),
        (BlockStart(1), ([{**TEXT_START, "index": 1}], False)),
        (TextDelta("a"), ([event_json(TextDelta("a"))], False)),
        (
            MessageDelta("end_turn", None, 3),
            ([event_json(MessageDelta("end_turn", None, 3))], False),
        ),
        (MessageStop(Usage(1, 2)), ([{"type": "message_stop"}], True)),
        (ErrorEvent("Throttled", "slow"), ([error_of("rate_limit_error", "slow")], True)),
        (ErrorEvent("ServiceUnavailable", "busy"), ([error_of("overloaded_error", "busy")], True)),
        (ErrorEvent("NoSuchCode", "x"), ([error_of("api_error", "x")], True)),
    ],
)
def test_api_events(event: Event, expected: tuple[list[dict[str, Any]], bool]) -> None:
    assert api_events(event) == expected


@pytest.mark.parametrize(
    ("reason", "kind", "words"),
    [
        ("timeout", "timeout_error", "did not finish in time"),
        ("cancelled", "api_error", "stopped before it finished"),
        ("disconnected", "api_error", "when its client left"),
        ("error", "api_error", "without finishing its answer"),
    ],
)
def test_early_stop_reasons_are_errors_never_stop_reasons(
    reason: Any, kind: str, words: str
) -> None:
    [data], last = api_events(MessageDelta(reason, None, 7))
    assert last and data["type"] == "error" and data["error"]["type"] == kind
    assert words in data["error"]["message"] and "after 7 output tokens" in data["error"]["message"]
    assert early_end(MessageDelta(reason)) is not None


@pytest.mark.parametrize("reason", ["end_turn", "max_tokens", "stop_sequence"])
def test_natural_stop_reasons_pass_through(reason: Any) -> None:
    assert early_end(MessageDelta(reason)) is None
    [data], last = api_events(MessageDelta(reason))
    assert data["delta"]["stop_reason"] == reason and not last


@given(text=st.text(), index=st.integers(min_value=0, max_value=2**31))
def test_a_text_delta_written_out_is_its_event_encoded(text: str, index: int) -> None:
    event = TextDelta(text, index)
    encoded = json.dumps(anthropic.event_json(event), ensure_ascii=False, separators=(",", ":"))
    assert anthropic.text_delta_json(event) == encoded
